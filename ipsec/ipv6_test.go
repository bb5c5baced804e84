package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// v6Underlay gives A (up0 fd00:ff::1) and B (wan0 fd01:2::1) IPv6
// underlay addresses reaching each other across the core and the wan.
func v6Underlay(t *testing.T, l *lab.Lab) (a, b netip.Addr) {
	t.Helper()
	for _, x := range []struct{ ns, dev, addr string }{
		{l.A, "up0", "fd00:ff::1/64"}, {l.Core, "a0", "fd00:ff::2/64"},
		{l.Core, "wan0", "fd01:1::1/64"}, {l.WAN, "c0", "fd01:1::2/64"},
		{l.WAN, "b0", "fd01:2::2/64"}, {l.B, "wan0", "fd01:2::1/64"},
	} {
		if err := lab.AddAddr(x.ns, x.dev, x.addr); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct{ ns, dst, gw string }{
		{l.A, "fd01::/16", "fd00:ff::2"}, {l.Core, "fd01:2::/64", "fd01:1::2"},
		{l.WAN, "fd00:ff::/64", "fd01:1::1"}, {l.B, "fd00:ff::/64", "fd01:2::2"},
	} {
		if err := lab.AddRoute(r.ns, r.dst, r.gw, ""); err != nil {
			t.Fatal(err)
		}
	}
	return netip.MustParseAddr("fd00:ff::1"), netip.MustParseAddr("fd01:2::1")
}

// TestDualStackOverIPv6Underlay: a link whose ends' underlay addresses
// are IPv6 and whose protected hosts are IPv4 and IPv6 gets, at each end,
// one out and two in/fwd policies per family, all tunnelling to the IPv6
// underlay, and routes to the other end's hosts of both families (an
// IPv4 host's route cannot name the IPv6 underlay gateway: it leaves by
// the underlay device, where its out policy transforms it); Close
// removes them all. (No ESP here: the SAs are the guest tests'.)
func TestDualStackOverIPv6Underlay(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	ua, ub := v6Underlay(t, l)
	spec := tunnel.Spec{
		ID: "dual6", Kind: tunnel.IPsec,
		Secure: tunnel.End{Host: l.A, Underlay: ua, Protected: []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32), netip.MustParsePrefix("fd00:1::20/128")}},
		Remote: tunnel.End{Host: l.B, Underlay: ub, Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32), netip.MustParsePrefix("fd00:1::10/128")}},
	}
	lk := &link{spec: spec, reqid: ReqID(spec.ID), spi: [2]uint32{0x5005, 0x6006}, hosts: []string{l.A, l.B}}
	es, err := openEnds(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer es.close()
	if err := es.addPolicies(lk, netlinkAllow); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{l.A, l.B} {
		ps, _ := dumpOurs(t, host, lk.reqid)
		if len(ps) != 6 {
			t.Errorf("host %s: %d policies, want 6 (3 per family)", host, len(ps))
		}
		for _, p := range ps {
			if len(p.Tmpls) != 1 || p.Tmpls[0].Dst.To4() != nil || p.Tmpls[0].Src.To4() != nil {
				t.Errorf("host %s: %s does not tunnel over the IPv6 underlay: %+v", host, selector(p), p.Tmpls)
			}
		}
	}
	if err := es.addRoutes(lk); err != nil {
		t.Fatalf("routes over an IPv6 underlay: %v", err)
	}
	routesAt := func(host string) string {
		h, err := lab.Handle(host)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, r := range rs {
			dev := ""
			if ln, err := h.LinkByIndex(r.LinkIndex); err == nil {
				dev = ln.Attrs().Name
			}
			out = append(out, fmt.Sprintf("%s dev %s", r.Dst, dev))
		}
		sort.Strings(out)
		return strings.Join(out, ", ")
	}
	if got, want := routesAt(l.A), "10.1.0.10/32 dev up0, fd00:1::10/128 dev up0"; got != want {
		t.Errorf("A's link routes: %q, want %q", got, want)
	}
	if got, want := routesAt(l.B), "10.1.0.20/32 dev wan0, fd00:1::20/128 dev wan0"; got != want {
		t.Errorf("B's link routes: %q, want %q", got, want)
	}
	// The routes' MTU leaves room for ESP over the IPv6 underlay: 80
	// with AES-GCM (the contract's default), 97 with CBC + HMAC, whose
	// worst case over IPv6 is more than 80.
	for _, c := range []struct {
		alg  Algorithm
		want int
	}{{AESGCM, 1500 - 80}, {AESCBCHMACSHA256, 1500 - 97}} {
		plan, err := es.routePlan(0, c.alg)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range append(plan[0], plan[1]...) {
			if r.r.MTU != c.want {
				t.Errorf("%s: route %s mtu %d, want %d", c.alg, r.r.Dst, r.r.MTU, c.want)
			}
		}
	}
	if err := New(WithHosts(l.A, l.B)).Close(context.Background(), spec.ID); err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{l.A, l.B} {
		if ps, ss := dumpOurs(t, host, lk.reqid); len(ps)+len(ss) != 0 {
			t.Errorf("host %s: %d policies, %d SAs left after Close", host, len(ps), len(ss))
		}
		if r := routesAt(host); r != "" {
			t.Errorf("host %s: routes left after Close: %s", host, r)
		}
	}
}

// TestProxyNDP: with ProxyARP, the other end's IPv6 hosts get proxy NDP
// entries on the LAN interface whose IPv6 subnet holds them, announced
// by unsolicited neighbour advertisement (a neighbour's stale entry
// switches to the host's MAC) and answered when solicited; a host whose
// LAN interface would not answer (proxy_ndp off) is refused at the plan,
// naming the setting; Close removes the entries.
func TestProxyNDP(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	for _, a := range []struct{ ns, dev, addr string }{
		{l.A, "br0", "fd00:1::1/64"}, {l.B, "br0", "fd00:1::1/64"}, {l.Peer, "eth0", "fd00:1::20/64"},
	} {
		if err := lab.AddAddr(a.ns, a.dev, a.addr); err != nil {
			t.Fatal(err)
		}
	}
	vm6, peer6 := netip.MustParseAddr("fd00:1::10"), netip.MustParseAddr("fd00:1::20")
	spec := specFor(l, "ndp1")
	spec.Secure.Protected = append(spec.Secure.Protected, netip.PrefixFrom(peer6, 128))
	spec.Remote.Protected = append(spec.Remote.Protected, netip.PrefixFrom(vm6, 128))
	lk := &link{spec: spec, reqid: ReqID(spec.ID), spi: [2]uint32{0x7007, 0x8008}, hosts: []string{l.A, l.B}}
	es, err := openEnds(spec)
	if err != nil {
		t.Fatal(err)
	}
	defer es.close()
	if _, err := es.proxyPlan(); !errors.Is(err, tunnel.ErrInvalid) || !strings.Contains(err.Error(), "proxy_ndp") {
		t.Fatalf("proxy plan with proxy_ndp off: %v, want ErrInvalid naming proxy_ndp", err)
	}
	for _, ns := range []string{l.A, l.B} {
		for k, v := range map[string]string{"net/ipv6/conf/all/forwarding": "1", "net/ipv6/conf/br0/proxy_ndp": "1"} {
			if err := lab.Sysctl(ns, k, v); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := lab.WaitReachable(l.Peer, netip.MustParseAddr("fd00:1::1"), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	const stale = "02:00:00:00:00:99"
	neigh := func() string {
		out, err := lab.Exec(l.Peer, "ip", "-6", "neigh", "show", vm6.String(), "dev", "eth0")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	if out, err := lab.Exec(l.Peer, "ip", "-6", "neigh", "replace", vm6.String(), "lladdr", stale, "dev", "eth0", "nud", "reachable"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := es.addPolicies(lk, netlinkAllow); err != nil { // (Close finds the link by them)
		t.Fatal(err)
	}
	if err := es.addRoutes(lk); err != nil {
		t.Fatal(err)
	}
	brMAC := func(ns string) string {
		h, err := lab.Handle(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		br, err := h.LinkByName("br0")
		if err != nil {
			t.Fatal(err)
		}
		return br.Attrs().HardwareAddr.String()
	}
	aMAC := brMAC(l.A)
	if got := neigh(); !strings.Contains(got, aMAC) {
		t.Errorf("after the announcement the peer's entry for the VM is %q, want A's br0 MAC %s", got, aMAC)
	}
	// Solicited: the peer forgets and asks again; A answers for the VM
	// (after up to proxy_delay, 0.8 s by default).
	if out, err := lab.Exec(l.Peer, "ip", "-6", "neigh", "del", vm6.String(), "dev", "eth0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	deadline := time.Now().Add(5 * time.Second)
	for got := neigh(); !strings.Contains(got, aMAC); got = neigh() {
		if time.Now().After(deadline) {
			t.Fatalf("solicited: the peer's entry for the VM is %q, want A's br0 MAC %s", got, aMAC)
		}
		_, _ = lab.Ping(l.Peer, vm6, 1, 200*time.Millisecond) // (the echo itself goes nowhere: no SA here)
	}
	proxies := func(ns string) []string {
		h, err := lab.Handle(ns)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		ps, err := h.NeighProxyList(0, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, p := range ps {
			out = append(out, p.IP.String())
		}
		return out
	}
	if a, b := proxies(l.A), proxies(l.B); fmt.Sprint(a, b) != "[fd00:1::10] [fd00:1::20]" {
		t.Errorf("proxy NDP entries: A %v, B %v", a, b)
	}
	if err := New(WithHosts(l.A, l.B)).Close(context.Background(), spec.ID); err != nil {
		t.Fatal(err)
	}
	if a, b := proxies(l.A), proxies(l.B); len(a)+len(b) != 0 {
		t.Errorf("after Close: proxy NDP entries A %v, B %v", a, b)
	}
}
