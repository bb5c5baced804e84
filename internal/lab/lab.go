// Package lab builds sealift's test world out of network namespaces and
// tears it down when the test ends, even if it fails.
//
// Reference topology (all names carry a unique prefix P, so tests run in
// parallel; interface names inside a namespace are short and fixed):
//
//	P-vm    (VM endpoint)   eth0 10.1.0.10/24, gw 10.1.0.1 ─┐
//	P-peer  (peer, same /24) eth0 10.1.0.20/24, gw 10.1.0.1 ─┤ br0 in P-a
//	P-a     (secure host A) br0 10.1.0.1/24; up0 10.255.1.1/30 → core
//	P-core  (routing core)  a0 10.255.1.2/30; p2 10.2.0.1/24; wan0 198.51.100.1/24
//	P-peer2 (other subnet)  eth0 10.2.0.20/24, gw 10.2.0.1
//	P-wan   (untrusted net) c0 198.51.100.2/24; b0 203.0.113.2/24
//	P-b     (external host B) wan0 203.0.113.1/24; br0 10.1.0.1/24 (no ports yet)
//
// Routes: A default via core; core 10.1.0.0/24 via A, default via wan;
// wan 10.0.0.0/8 via core; B default via wan. So A, core and B reach each
// other's underlay addresses across the wan namespace, where tests capture.
// A VM moved to B attaches to B's br0 (AttachVM) and keeps 10.1.0.10.
package lab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// Addresses of the reference topology.
var (
	VMAddr    = netip.MustParseAddr("10.1.0.10")
	PeerAddr  = netip.MustParseAddr("10.1.0.20")
	Peer2Addr = netip.MustParseAddr("10.2.0.20")
	Gateway   = netip.MustParseAddr("10.1.0.1")
	VMSubnet  = netip.MustParsePrefix("10.1.0.0/24")
	Peer2Net  = netip.MustParsePrefix("10.2.0.0/24")
	AUplink   = netip.MustParseAddr("10.255.1.1") // A's underlay address
	CoreToA   = netip.MustParseAddr("10.255.1.2")
	CoreWAN   = netip.MustParseAddr("198.51.100.1") // core's underlay address
	WANCore   = netip.MustParseAddr("198.51.100.2")
	WANB      = netip.MustParseAddr("203.0.113.2")
	BUnderlay = netip.MustParseAddr("203.0.113.1") // B's underlay address
)

// Lab is one built topology. Its fields are namespace names.
type Lab struct {
	Prefix                           string
	A, Core, WAN, B, VM, Peer, Peer2 string
	created                          []string
}

// TB is the part of testing.TB the lab needs (so the lab also works from
// a program, e.g. examples/lab, through a small adapter).
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

var _ TB = (testing.TB)(nil)

// RequireRoot fails (CI=true) or skips the test when not running as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root (network namespaces)")
	}
}

// Missing reports a missing dependency: a failure in CI, a skip elsewhere.
func Missing(t testing.TB, what string) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing dependency (CI=true makes this a failure): %s", what)
	}
	t.Skipf("missing dependency: %s", what)
}

// NewPrefix returns a short unique prefix: $SEALIFT_LAB_PREFIX (at most
// 4 characters; "sl" when unset or longer) + 6 hex digits, so sessions
// sharing a machine can tell their namespaces apart.
func NewPrefix() string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	p := os.Getenv("SEALIFT_LAB_PREFIX")
	if p == "" || len(p) > 4 {
		p = "sl"
	}
	return p + hex.EncodeToString(b)
}

// New builds the reference topology; t.Cleanup removes it.
func New(t TB) *Lab {
	t.Helper()
	p := NewPrefix()
	l := &Lab{Prefix: p, A: p + "-a", Core: p + "-core", WAN: p + "-wan", B: p + "-b",
		VM: p + "-vm", Peer: p + "-peer", Peer2: p + "-peer2"}
	t.Cleanup(l.Close)
	if err := l.build(); err != nil {
		t.Fatalf("lab: %v", err)
	}
	return l
}

// Close deletes every namespace the lab created (idempotent).
func (l *Lab) Close() {
	for i := len(l.created) - 1; i >= 0; i-- {
		_ = netns.DeleteNamed(l.created[i])
	}
	l.created = nil
}

func (l *Lab) build() error {
	for _, n := range []string{l.A, l.Core, l.WAN, l.B, l.VM, l.Peer, l.Peer2} {
		if err := l.AddHost(n); err != nil {
			return err
		}
	}
	steps := []func() error{
		func() error { return Bridge(l.A, "br0", "10.1.0.1/24") },
		func() error { return Bridge(l.B, "br0", "10.1.0.1/24") },
		func() error { return l.Endpoint(l.VM, l.A, "vm0", "br0", "10.1.0.10/24", Gateway) },
		func() error { return l.Endpoint(l.Peer, l.A, "pr0", "br0", "10.1.0.20/24", Gateway) },
		func() error { return Veth(l.A, "up0", "10.255.1.1/30", l.Core, "a0", "10.255.1.2/30") },
		func() error { return Veth(l.Core, "p2", "10.2.0.1/24", l.Peer2, "eth0", "10.2.0.20/24") },
		func() error { return Veth(l.Core, "wan0", "198.51.100.1/24", l.WAN, "c0", "198.51.100.2/24") },
		func() error { return Veth(l.WAN, "b0", "203.0.113.2/24", l.B, "wan0", "203.0.113.1/24") },
		func() error { return AddRoute(l.Peer2, "0.0.0.0/0", "10.2.0.1", "") },
		func() error { return AddRoute(l.A, "0.0.0.0/0", "10.255.1.2", "") },
		func() error { return AddRoute(l.Core, "10.1.0.0/24", "10.255.1.1", "") },
		func() error { return AddRoute(l.Core, "0.0.0.0/0", "198.51.100.2", "") },
		func() error { return AddRoute(l.WAN, "10.0.0.0/8", "198.51.100.1", "") },
		func() error { return AddRoute(l.B, "0.0.0.0/0", "203.0.113.2", "") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	for _, n := range []string{l.A, l.Core, l.WAN, l.B} {
		if err := Sysctl(n, "net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	return nil
}

// AddHost creates an empty namespace with loopback up, owned by the lab.
func (l *Lab) AddHost(name string) error {
	if err := AddNS(name); err != nil {
		return err
	}
	l.created = append(l.created, name)
	return nil
}

// AddNS creates a named namespace with lo up, without leaving any thread
// of the process in it (nsutil.Create).
func AddNS(name string) error { return nsutil.Create(name) }

// Handle opens a netlink handle in ns for routes, links and XFRM.
func Handle(ns string) (*netlink.Handle, error) {
	return nsutil.Handle(ns, unix.NETLINK_ROUTE, unix.NETLINK_XFRM)
}

// Bridge creates bridge name in ns, up, with addr (CIDR; "" for none).
func Bridge(ns, name, addr string) error {
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	// A fixed MAC: a bridge without one takes the lowest of its ports'
	// and changes it when ports come and go (a migrated VM's tap leaving),
	// which would invalidate what proxy ARP announced for it.
	mac := make(net.HardwareAddr, 6)
	if _, err := rand.Read(mac); err != nil {
		return err
	}
	mac[0] = mac[0]&0xfe | 0x02 // unicast, locally administered
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: mac}}
	if err := h.LinkAdd(br); err != nil {
		return fmt.Errorf("%s: add bridge %s: %w", ns, name, err)
	}
	return upAddr(h, ns, name, addr)
}

// Veth joins ns1/if1 (addr1) and ns2/if2 (addr2); addresses may be "".
func Veth(ns1, if1, addr1, ns2, if2, addr2 string) error {
	h1, err := Handle(ns1)
	if err != nil {
		return err
	}
	defer h1.Close()
	peerNS, err := nsutil.Open(ns2)
	if err != nil {
		return err
	}
	defer peerNS.Close()
	// Create with a temporary peer name in ns1, then move and rename:
	// if2 may collide with a name in ns1 (e.g. "eth0").
	tmp := "t" + if1
	if len(tmp) > 15 {
		tmp = tmp[:15]
	}
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: if1}, PeerName: tmp}
	if err := h1.LinkAdd(v); err != nil {
		return fmt.Errorf("%s: add veth %s: %w", ns1, if1, err)
	}
	pl, err := h1.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := h1.LinkSetNsFd(pl, int(peerNS)); err != nil {
		return fmt.Errorf("move %s to %s: %w", tmp, ns2, err)
	}
	h2, err := Handle(ns2)
	if err != nil {
		return err
	}
	defer h2.Close()
	pl, err = h2.LinkByName(tmp)
	if err != nil {
		return err
	}
	if err := h2.LinkSetName(pl, if2); err != nil {
		return fmt.Errorf("%s: rename %s to %s: %w", ns2, tmp, if2, err)
	}
	if err := upAddr(h1, ns1, if1, addr1); err != nil {
		return err
	}
	return upAddr(h2, ns2, if2, addr2)
}

// Endpoint joins endpoint namespace ep (eth0, addr, default gw) to a
// bridge br in host through a port named port.
func (l *Lab) Endpoint(ep, host, port, br, addr string, gw netip.Addr) error {
	if err := Veth(host, port, "", ep, "eth0", addr); err != nil {
		return err
	}
	if err := Enslave(host, port, br); err != nil {
		return err
	}
	if gw.IsValid() {
		return AddRoute(ep, "0.0.0.0/0", gw.String(), "")
	}
	return nil
}

// AttachVM creates an endpoint namespace P-<name> behind port on host's
// br0 with addr (CIDR) and gateway 10.1.0.1: a VM at that host.
func (l *Lab) AttachVM(name, host, port, addr string) (string, error) {
	ns := l.Prefix + "-" + name
	if err := l.AddHost(ns); err != nil {
		return "", err
	}
	return ns, l.Endpoint(ns, host, port, "br0", addr, Gateway)
}

// Enslave attaches ifname to bridge br in ns.
func Enslave(ns, ifname, br string) error {
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", ns, ifname, err)
	}
	b, err := h.LinkByName(br)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", ns, br, err)
	}
	return h.LinkSetMaster(l, b)
}

// AddRoute adds dst via gw (and/or dev) in ns.
func AddRoute(ns, dst, gw, dev string) error {
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	_, ipn, err := net.ParseCIDR(dst)
	if err != nil {
		return err
	}
	r := &netlink.Route{Dst: ipn}
	if gw != "" {
		r.Gw = net.ParseIP(gw)
	}
	if dev != "" {
		l, err := h.LinkByName(dev)
		if err != nil {
			return fmt.Errorf("%s: %s: %w", ns, dev, err)
		}
		r.LinkIndex = l.Attrs().Index
		if gw == "" {
			// As `ip route add DST dev DEV`: on-link, so it can resolve
			// gateways of other routes.
			r.Scope = netlink.SCOPE_LINK
		}
	}
	if err := h.RouteAdd(r); err != nil {
		return fmt.Errorf("%s: route %s via %s dev %s: %w", ns, dst, gw, dev, err)
	}
	return nil
}

// Sysctl writes /proc/sys/<key> inside ns.
func Sysctl(ns, key, val string) error {
	return nsutil.Do(ns, func() error {
		// /proc/sys/net is per netns, resolved by the writing thread.
		return os.WriteFile("/proc/sys/"+key, []byte(val), 0o644)
	})
}

func upAddr(h *netlink.Handle, ns, name, addr string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", ns, name, err)
	}
	if addr != "" {
		a, err := netlink.ParseAddr(addr)
		if err != nil {
			return err
		}
		if err := h.AddrAdd(l, a); err != nil {
			return fmt.Errorf("%s: addr %s on %s: %w", ns, addr, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: up %s: %w", ns, name, err)
	}
	return nil
}

// Exec runs a command inside ns and returns its combined output.
func Exec(ns string, name string, args ...string) ([]byte, error) {
	var out []byte
	err := nsutil.Do(ns, func() error {
		var err error
		out, err = exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s: %s %v: %w: %s", ns, name, args, err, out)
		}
		return nil
	})
	return out, err
}
