package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// specFor is the reference link: peer (at A) ↔ VM (moved to B).
func specFor(l *lab.Lab, id string) tunnel.Spec {
	return tunnel.Spec{
		ID: id, Kind: tunnel.IPsec, ProxyARP: true,
		Secure: tunnel.End{Host: l.A, Underlay: lab.AUplink, Protected: []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32)}},
		Remote: tunnel.End{Host: l.B, Underlay: lab.BUnderlay, Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}},
	}
}

// dumpOurs returns the policies and SAs with reqid at host.
func dumpOurs(t *testing.T, host string, reqid uint32) ([]netlink.XfrmPolicy, []netlink.XfrmState) {
	t.Helper()
	h, err := lab.Handle(host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e := &end{host: host, h: h}
	ps, err := e.policies(reqid)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := e.states(reqid)
	if err != nil {
		t.Fatal(err)
	}
	return ps, ss
}

// countAll counts every XFRM policy and SA at host.
func countAll(t *testing.T, host string) (policies, states int) {
	t.Helper()
	h, err := lab.Handle(host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ps, err := h.XfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	ss, err := h.XfrmStateList(netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	return len(ps), len(ss)
}

func TestPrepareRejectsBadSpecs(t *testing.T) {
	good := tunnel.Spec{ID: "v1", Kind: tunnel.IPsec,
		Secure: tunnel.End{Host: "nonexistent-a", Underlay: netip.MustParseAddr("192.0.2.1"), Protected: []netip.Prefix{netip.MustParsePrefix("10.1.0.20/32")}},
		Remote: tunnel.End{Host: "nonexistent-b", Underlay: netip.MustParseAddr("192.0.2.2"), Protected: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}},
	}
	cases := map[string]struct {
		mod  func(*tunnel.Spec)
		want string
	}{
		"kind":      {func(s *tunnel.Spec) { s.Kind = tunnel.WireGuard }, `Kind "wireguard"`},
		"id":        {func(s *tunnel.Spec) { s.ID = "Bad!" }, `ID "Bad!"`},
		"family":    {func(s *tunnel.Spec) { s.Remote.Underlay = netip.MustParseAddr("2001:db8::2") }, "differ in family"},
		"nopairs":   {func(s *tunnel.Spec) { s.Remote.Protected = []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")} }, "no Secure.Protected/Remote.Protected pair"},
		"protected": {func(s *tunnel.Spec) { s.Secure.Protected = nil }, "Secure.Protected is empty"},
		"host":      {func(s *tunnel.Spec) {}, `"nonexistent-a"`},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			s := good
			c.mod(&s)
			_, err := New().Prepare(context.Background(), s)
			if !errors.Is(err, tunnel.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want ErrInvalid naming %q", err, c.want)
			}
			if name == "host" && !errors.Is(err, host.ErrNotFound) {
				t.Errorf("err = %v, want host.ErrNotFound too", err)
			}
		})
	}
}

func TestReqIDTagged(t *testing.T) {
	a, b := ReqID("a"), ReqID("b")
	if a == b || !isOurs(int(a)) || !isOurs(int(b)) || a != ReqID("a") {
		t.Fatalf("ReqID a=0x%x b=0x%x", a, b)
	}
}

// kernelHasESP reports whether this kernel can add an ESP SA (probed in a
// scratch namespace).
func kernelHasESP(t *testing.T) bool {
	t.Helper()
	ns := lab.NewPrefix() + "-esp"
	if err := lab.AddNS(ns); err != nil {
		t.Fatal(err)
	}
	defer netns.DeleteNamed(ns)
	h, err := lab.Handle(ns)
	if err != nil {
		return false
	}
	defer h.Close()
	st := &netlink.XfrmState{Src: []byte{192, 0, 2, 1}, Dst: []byte{192, 0, 2, 2}, Proto: netlink.XFRM_PROTO_ESP,
		Mode: netlink.XFRM_MODE_TUNNEL, Spi: 0x1234, Aead: &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: make([]byte, 20), ICVLen: 128}}
	return h.XfrmStateAdd(st) == nil
}

// TestPrepareWithoutESPFailsClearly runs on a kernel without ESP (this
// machine's): Prepare fails with ErrKernelUnsupported naming
// CONFIG_INET_ESP and leaves nothing behind (the block policies it
// installed first are rolled back).
func TestPrepareWithoutESPFailsClearly(t *testing.T) {
	lab.RequireRoot(t)
	if klab.InGuest() || kernelHasESP(t) {
		t.Skip("this kernel has ESP; TestInGuest covers the working path")
	}
	l := lab.New(t)
	_, err := New().Prepare(context.Background(), specFor(l, "noesp"))
	if !errors.Is(err, tunnel.ErrKernelUnsupported) || !strings.Contains(err.Error(), "CONFIG_INET_ESP") {
		t.Fatalf("Prepare: %v, want ErrKernelUnsupported naming CONFIG_INET_ESP", err)
	}
	t.Logf("error: %v", err)
	for _, host := range []string{l.A, l.B} {
		if p, s := countAll(t, host); p != 0 || s != 0 {
			t.Errorf("host %s: %d policies, %d SAs left after failed Prepare", host, p, s)
		}
	}
}

// TestPoliciesInstallAndRemove installs the link's policies on this
// machine's kernel (policies need no ESP), blocks, opens them, finds them
// with List from a fresh Linker and removes exactly them with Close.
func TestPoliciesInstallAndRemove(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	spec := specFor(l, "pol1")
	spec.Secure.Protected = append(spec.Secure.Protected, netip.MustParsePrefix("10.2.0.0/24"))
	lk := &link{spec: spec, reqid: ReqID(spec.ID), spi: [2]uint32{0x1001, 0x2002}, hosts: []string{l.A, l.B}}

	// A foreign policy at A must survive Close.
	h, err := lab.Handle(l.A)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	foreign := &netlink.XfrmPolicy{Src: ipNet(netip.MustParsePrefix("10.9.0.0/24")), Dst: ipNet(netip.MustParsePrefix("10.8.0.0/24")), Dir: netlink.XFRM_DIR_OUT, Action: netlinkBlock}
	if err := h.XfrmPolicyAdd(foreign); err != nil {
		t.Fatal(err)
	}

	es, err := openEnds(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer es.close()
	if err := es.checkFree(lk); err != nil {
		t.Fatalf("checkFree on a clean host: %v", err)
	}
	if err := es.addPolicies(lk, netlinkBlock); err != nil {
		t.Fatal(err)
	}
	// A: out 2 pairs; in+fwd 2 pairs each = 6. B: out 2, in+fwd 4 = 6.
	for _, host := range []string{l.A, l.B} {
		ps, _ := dumpOurs(t, host, lk.reqid)
		if len(ps) != 6 {
			t.Fatalf("host %s: %d policies, want 6", host, len(ps))
		}
		for _, p := range ps {
			if p.Action != netlinkBlock {
				t.Errorf("host %s: %s is %s during prepare, want block", host, selector(p), p.Action)
			}
		}
	}
	if err := es.checkFree(lk); !errors.Is(err, tunnel.ErrExists) {
		t.Fatalf("checkFree with the link installed: %v, want ErrExists", err)
	}
	// Open the policies as Activate does (no SA needed for that).
	for _, e := range es {
		if err := e.updatePolicies(append(e.inPolicies(lk, netlinkAllow), e.outPolicies(lk, netlinkAllow, lk.spi[e.out])...)); err != nil {
			t.Fatal(err)
		}
	}
	d, err := es.describe(lk)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.Join(d.Policy, "\n")
	t.Logf("installed policy:\n%s", text)
	for _, want := range []string{"dir out src 10.1.0.20/32 dst 10.1.0.10/32 action allow tmpl esp tunnel 10.255.1.1 -> 203.0.113.1", "spi 0x00001001", "dir fwd src 10.1.0.10/32 dst 10.2.0.0/24", "dir in src 10.1.0.20/32 dst 10.1.0.10/32"} {
		if !strings.Contains(text, want) {
			t.Errorf("Link.Policy lacks %q", want)
		}
	}

	// A fresh Linker that knows only the hosts finds the link and closes it.
	k := New(WithHosts(l.A, l.B))
	links, err := k.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || !links[0].Active || links[0].Secure.Underlay != lab.AUplink || len(links[0].Policy) != 12 {
		t.Fatalf("List: %+v", links)
	}
	// A second link to the same VM from another address at A, with proxy
	// ARP; both links get their routes (no ESP needed for those). The
	// route to the VM at A is shared and must survive closing the first.
	spec2 := specFor(l, "pol2")
	spec2.Secure.Protected = []netip.Prefix{netip.MustParsePrefix("10.1.0.30/32")}
	lk2 := &link{spec: spec2, reqid: ReqID(spec2.ID), spi: [2]uint32{0x3003, 0x4004}, hosts: []string{l.A, l.B}}
	es2, err := openEnds(spec2)
	if err != nil {
		t.Fatal(err)
	}
	defer es2.close()
	if err := es2.addPolicies(lk2, netlinkAllow); err != nil {
		t.Fatal(err)
	}
	spec.ProxyARP = false // 10.2.0.0/24 is on no LAN of B
	lk.spec = spec
	if err := es.addRoutes(lk); err != nil {
		t.Fatal(err)
	}
	if err := es2.addRoutes(lk2); err != nil {
		t.Fatal(err)
	}
	routesAt := func(host string) (routes, proxies []string) {
		h, err := lab.Handle(host)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		for _, r := range rs {
			routes = append(routes, fmt.Sprintf("%s mtu %d", r.Dst, r.MTU))
		}
		ns, _ := h.NeighProxyList(0, netlink.FAMILY_V4)
		for _, n := range ns {
			proxies = append(proxies, n.IP.String())
		}
		sort.Strings(routes)
		sort.Strings(proxies)
		return routes, proxies
	}
	ra, pa := routesAt(l.A)
	rb, pb := routesAt(l.B)
	if fmt.Sprint(ra, pa, rb, pb) != "[10.1.0.10/32 mtu 1420] [10.1.0.10] [10.1.0.20/32 mtu 1420 10.1.0.30/32 mtu 1420 10.2.0.0/24 mtu 1420] [10.1.0.30]" {
		t.Fatalf("routes/proxies: A %v %v, B %v %v", ra, pa, rb, pb)
	}

	if err := k.Close(context.Background(), spec.ID); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{l.A, l.B} {
		if ps, ss := dumpOurs(t, host, lk.reqid); len(ps)+len(ss) != 0 {
			t.Errorf("host %s: %d policies, %d SAs left after Close", host, len(ps), len(ss))
		}
		if ps, _ := dumpOurs(t, host, lk2.reqid); len(ps) != 3 {
			t.Errorf("host %s: the other link has %d policies after Close, want 3", host, len(ps))
		}
	}
	ra, pa = routesAt(l.A)
	rb, pb = routesAt(l.B)
	if fmt.Sprint(ra, pa, rb, pb) != "[10.1.0.10/32 mtu 1420] [10.1.0.10] [10.1.0.30/32 mtu 1420] [10.1.0.30]" {
		t.Errorf("after closing the first link: A %v %v, B %v %v; want the second link's only", ra, pa, rb, pb)
	}
	if err := New(WithHosts(l.A, l.B)).Close(context.Background(), spec2.ID); err != nil {
		t.Fatal(err)
	}
	ra, pa = routesAt(l.A)
	rb, pb = routesAt(l.B)
	if len(ra)+len(pa)+len(rb)+len(pb) != 0 {
		t.Errorf("after closing both: A %v %v, B %v %v", ra, pa, rb, pb)
	}
	if p, _ := countAll(t, l.A); p != 1 {
		t.Errorf("host A: %d policies after Close, want the foreign one only", p)
	}
	if err := k.Close(context.Background(), spec.ID); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestProxyARPNeedsForwarding: the kernel answers ARP for a proxy entry
// only on a forwarding interface, so a plan that would proxy an IPv4
// host on one that does not forward is refused, naming the setting; the
// control, with forwarding on, is planned.
func TestProxyARPNeedsForwarding(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	if err := lab.Sysctl(l.B, "net/ipv4/conf/br0/forwarding", "0"); err != nil {
		t.Fatal(err)
	}
	es, err := openEnds(specFor(l, "fwd1"))
	if err != nil {
		t.Fatal(err)
	}
	defer es.close()
	if _, err := es.proxyPlan(); !errors.Is(err, tunnel.ErrInvalid) || !strings.Contains(err.Error(), "net.ipv4.conf.br0.forwarding=1 (it is 0)") {
		t.Fatalf("proxy plan at a B that does not forward on br0: %v, want ErrInvalid naming net.ipv4.conf.br0.forwarding", err)
	}
	if err := lab.Sysctl(l.B, "net/ipv4/conf/br0/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := es.proxyPlan(); err != nil {
		t.Fatalf("control: proxy plan with forwarding: %v", err)
	}
}
