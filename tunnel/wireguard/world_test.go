package wireguard

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// world is the reference lab after the VM moved from A to B: the VM
// (10.1.0.10) is an endpoint on B's br0, its peer (10.1.0.20) stays on A's.
type world struct {
	l  *lab.Lab
	vm string // the moved VM's netns (at B)
}

var (
	vmHost   = netip.PrefixFrom(lab.VMAddr, 32)
	peerHost = netip.PrefixFrom(lab.PeerAddr, 32)
)

func newWorld(t testing.TB) *world {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	// Move the VM: remove its endpoint at A (port and namespace), attach
	// one with the same address at B, so 10.1.0.10 exists only at B.
	h, err := lab.Handle(l.A)
	if err != nil {
		t.Fatal(err)
	}
	if port, err := h.LinkByName("vm0"); err == nil {
		if err := h.LinkDel(port); err != nil {
			t.Fatal(err)
		}
	}
	h.Close()
	if err := netns.DeleteNamed(l.VM); err != nil {
		t.Fatal(err)
	}
	vm, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	if err != nil {
		t.Fatal(err)
	}
	return &world{l: l, vm: vm}
}

// spec is the link between A (peers) and B (the moved VM).
func (w *world) spec() tunnel.Spec {
	return tunnel.Spec{
		ID:   randomID(),
		Kind: tunnel.WireGuard,
		Secure: tunnel.End{Host: w.l.A, Underlay: lab.AUplink,
			Protected: []netip.Prefix{peerHost}},
		Remote: tunnel.End{Host: w.l.B, Underlay: lab.BUnderlay,
			Protected: []netip.Prefix{vmHost}},
		ProxyARP: true,
	}
}

// plainPath routes peer ↔ VM across the wan in clear: the control that
// shows the capture sees the marker when nothing encrypts.
func (w *world) plainPath(t testing.TB) {
	t.Helper()
	l := w.l
	for _, r := range []struct{ ns, dst, gw string }{
		{l.A, "10.1.0.10/32", "10.255.1.2"},
		{l.Core, "10.1.0.10/32", "198.51.100.2"},
		{l.WAN, "10.1.0.10/32", "203.0.113.1"},
		{l.B, "10.1.0.20/32", "203.0.113.2"},
	} {
		if err := lab.AddRoute(r.ns, r.dst, r.gw, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []struct {
		ns   string
		addr netip.Addr
	}{{l.A, lab.VMAddr}, {l.B, lab.PeerAddr}} {
		if _, err := addProxy(p.ns, []proxyEntry{{Dev: "br0", Addr: p.addr}}); err != nil {
			t.Fatal(err)
		}
		if err := writeSysctl(p.ns, "net/ipv4/neigh/br0/proxy_delay", "0"); err != nil {
			t.Fatal(err)
		}
	}
}

func randomID() string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "t" + hex.EncodeToString(b)
}

// testLinker returns a Linker with a private state dir, logging into buf,
// whose links are closed when the test ends.
func testLinker(t testing.TB, buf *syncBuffer, opts ...Option) *Linker {
	t.Helper()
	var w io.Writer = buf
	if buf == nil {
		w = io.Discard
	}
	log := slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
	lk := New(append([]Option{WithStateDir(t.TempDir()), WithLogger(log)}, opts...)...)
	// Whatever a failing test left open goes before the lab (registered
	// earlier) deletes the namespaces.
	t.Cleanup(func() {
		links, err := lk.List(context.Background())
		if err != nil {
			t.Errorf("cleanup List: %v", err)
		}
		for _, l := range links {
			if err := lk.Close(context.Background(), l.ID); err != nil {
				t.Errorf("cleanup Close(%s): %v", l.ID, err)
			}
		}
	})
	return lk
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// closeOnCleanup closes link id when the test ends (before the lab, which
// was registered earlier, goes away).
func closeOnCleanup(t testing.TB, lk *Linker, id string) {
	t.Cleanup(func() {
		if err := lk.Close(context.Background(), id); err != nil {
			t.Errorf("cleanup Close(%s): %v", id, err)
		}
	})
}

// exchange runs TCP, UDP and ICMP between the peer and the VM, both ways,
// with payload, and fails the test unless every message comes back.
func (w *world) exchange(t testing.TB, payload []byte) {
	t.Helper()
	w.exchangeWith(t, w.vm, lab.VMAddr, payload)
}

// exchangeWith is exchange with the VM in netns vm at vmAddr.
func (w *world) exchangeWith(t testing.TB, vm string, vmAddr netip.Addr, payload []byte) {
	t.Helper()
	w.exchangeAt(t, vm, vmAddr, lab.PeerAddr, payload)
}

// exchange6 is exchange over IPv6 (the dual-stack world's addresses).
func (w *world) exchange6(t testing.TB, payload []byte) {
	t.Helper()
	w.exchangeAt(t, w.vm, vmAddr6, peerAddr6, payload)
}

// exchangeAt is exchange with the VM in netns vm at vmAddr and the peer
// at peerAddr.
func (w *world) exchangeAt(t testing.TB, vm string, vmAddr, peerAddr netip.Addr, payload []byte) {
	t.Helper()
	const n = 10
	peer := w.l.Peer
	for _, d := range []struct {
		from, to string
		addr     netip.Addr
	}{{peer, vm, vmAddr}, {vm, peer, peerAddr}} {
		tcp, err := lab.StartTCPEcho(d.to, netip.AddrPortFrom(d.addr, 7001).String())
		if err != nil {
			t.Fatal(err)
		}
		udp, err := lab.StartUDPEcho(d.to, netip.AddrPortFrom(d.addr, 7002).String())
		if err != nil {
			tcp.Close()
			t.Fatal(err)
		}
		r1, err1 := lab.SendTCP(d.from, netip.AddrPortFrom(d.addr, 7001).String(), payload, n)
		r2, err2 := lab.SendUDP(d.from, netip.AddrPortFrom(d.addr, 7002).String(), payload, n)
		r3, err3 := lab.Ping(d.from, d.addr, n, 2*time.Second)
		tcp.Close()
		udp.Close()
		if r1 != n || r2 != n || r3 != n {
			t.Fatalf("%s -> %s: TCP %d/%d (%v), UDP %d/%d (%v), ICMP %d/%d (%v)",
				d.from, d.addr, r1, n, err1, r2, n, err2, r3, n, err3)
		}
		if m, _ := tcp.Received(); m < 1 {
			t.Fatalf("%s: TCP echo server counted nothing", d.to)
		}
		if m, _ := udp.Received(); m != n {
			t.Fatalf("%s: UDP echo server received %d datagrams, want %d", d.to, m, n)
		}
	}
}

// sysctls reads the proxy-related sysctls of br0 at A and B.
func (w *world) sysctls(t testing.TB) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, ns := range []string{w.l.A, w.l.B} {
		for _, k := range []string{"net/ipv4/neigh/br0/proxy_delay", "net/ipv4/conf/br0/proxy_arp"} {
			v, err := readSysctl(ns, k)
			if err != nil {
				t.Fatal(err)
			}
			out[ns+":"+k] = v
		}
	}
	return out
}

// assertClean fails unless nothing of link remains: devices, UAPI
// sockets, routes (any table) to the protected prefixes, link tables and
// rules, proxy neighbour entries, changed sysctls, the state file.
func assertClean(t testing.TB, lk *Linker, link tunnel.Link, sysctlsBefore map[string]string, w *world) {
	t.Helper()
	for _, e := range []struct {
		host, dev string
		other     []netip.Prefix
	}{
		{link.Secure.Host, link.SecureDevice, link.Remote.Protected},
		{link.Remote.Host, link.RemoteDevice, link.Secure.Protected},
	} {
		h, err := lab.Handle(e.host)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.LinkByName(e.dev); err == nil {
			t.Errorf("%s: device %s still exists", e.host, e.dev)
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			rs, err := h.RouteListFiltered(fam, &netlink.Route{}, netlink.RT_FILTER_TABLE)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rs {
				if r.Table >= tableBase && r.Table < tableBase+0x10000 {
					t.Errorf("%s: route %s left in link table %d", e.host, r.Dst, r.Table)
				}
				for _, p := range e.other {
					if r.Dst != nil && r.Dst.String() == p.String() {
						t.Errorf("%s: route %s (table %d) left", e.host, p, r.Table)
					}
				}
			}
			rules, err := h.RuleList(fam)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range rules {
				if r.Table >= tableBase && r.Table < tableBase+0x10000 {
					t.Errorf("%s: rule %s left", e.host, r)
				}
			}
		}
		h.Close()
		if _, err := os.Stat(uapiPath(e.dev)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("UAPI socket %s still exists (%v)", uapiPath(e.dev), err)
		}
		pe, err := proxyEntries(e.host)
		if err != nil {
			t.Fatal(err)
		}
		if len(pe) != 0 {
			t.Errorf("%s: proxy neighbour entries left: %v", e.host, pe)
		}
	}
	if sysctlsBefore != nil {
		after := w.sysctls(t)
		for k, v := range sysctlsBefore {
			if after[k] != v {
				t.Errorf("sysctl %s is %s after Close, was %s", k, after[k], v)
			}
		}
	}
	if _, err := os.Stat(lk.statePath(link.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state file %s still exists (%v)", lk.statePath(link.ID), err)
	}
	links, err := lk.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if l.ID == link.ID {
			t.Errorf("List still reports %s", link.ID)
		}
	}
}

// devState reads whether dev is up in host, what host routes through it
// (any table but local) and its MTU.
func devState(t testing.TB, host, dev string) (up bool, routes []string, mtu int) {
	t.Helper()
	h, err := lab.Handle(host)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatalf("%s: device %s: %v", host, dev, err)
	}
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{LinkIndex: l.Attrs().Index},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Dst != nil && r.Table != unix.RT_TABLE_LOCAL {
			routes = append(routes, r.Dst.String())
		}
	}
	return l.Attrs().Flags&net.FlagUp != 0, routes, l.Attrs().MTU
}

func delNS(name string) error { return netns.DeleteNamed(name) }

// IPv6 addresses of the dual-stack world: the VM and its peer share
// fd00:1::/64 as they share 10.1.0.0/24; both hosts' br0 hold its gateway.
var (
	vmAddr6   = netip.MustParseAddr("fd00:1::10")
	peerAddr6 = netip.MustParseAddr("fd00:1::20")
	gateway6  = netip.MustParseAddr("fd00:1::1")
	vmHost6   = netip.PrefixFrom(vmAddr6, 128)
	peerHost6 = netip.PrefixFrom(peerAddr6, 128)
)

// dualStack gives the world IPv6 on the VM's LAN (fd00:1::/64 on both
// hosts' br0, the VM and the peer, default routes via fd00:1::1) and
// turns IPv6 forwarding on at A and B, as ip_forward is for IPv4 (the
// kernel answers proxy NDP only on a forwarding interface).
func (w *world) dualStack(t testing.TB) {
	t.Helper()
	l := w.l
	for _, a := range []struct{ ns, dev, addr string }{
		{l.A, "br0", "fd00:1::1/64"}, {l.B, "br0", "fd00:1::1/64"},
		{w.vm, "eth0", "fd00:1::10/64"}, {l.Peer, "eth0", "fd00:1::20/64"},
	} {
		if err := lab.AddAddr(a.ns, a.dev, a.addr); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{w.vm, l.Peer} {
		if err := lab.AddRoute(ns, "::/0", gateway6.String(), ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{l.A, l.B} {
		if err := lab.Sysctl(ns, "net/ipv6/conf/all/forwarding", "1"); err != nil {
			t.Fatal(err)
		}
	}
	// A and B cannot solicit the VM or the peer before their bridges'
	// link-local addresses pass DAD: the first pings were lost (8 of 12
	// runs failed under load).
	if err := lab.WaitIPv6Ready(5*time.Second, l.A, l.B, l.Peer, w.vm); err != nil {
		t.Fatal(err)
	}
}

// spec6 is spec with both ends' IPv6 hosts protected too.
func (w *world) spec6() tunnel.Spec {
	s := w.spec()
	s.Secure.Protected = append(s.Secure.Protected, peerHost6)
	s.Remote.Protected = append(s.Remote.Protected, vmHost6)
	return s
}
