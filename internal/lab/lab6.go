package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netns"
)

// IPv6 addresses of the reference topology (DualStack adds them).
//
//	P-vm/peer  fd00:1::10, ::20/64, gw fd00:1::1 (br0 in A and in B)
//	P-a        up0 fd00:ff:1::1/126 → core a0 fd00:ff:1::2
//	P-core     p2 fd00:2::1/64; wan0 2001:db8:100::1/64
//	P-peer2    fd00:2::20/64, gw fd00:2::1
//	P-wan      c0 2001:db8:100::2/64; b0 2001:db8:113::2/64
//	P-b        wan0 2001:db8:113::1/64
//
// Routes as in IPv4: A default via core; core fd00:1::/64 via A, default
// via wan; wan fd00::/8 via core; B default via wan.
var (
	VMAddr6    = netip.MustParseAddr("fd00:1::10")
	PeerAddr6  = netip.MustParseAddr("fd00:1::20")
	Peer2Addr6 = netip.MustParseAddr("fd00:2::20")
	Gateway6   = netip.MustParseAddr("fd00:1::1")
	VMSubnet6  = netip.MustParsePrefix("fd00:1::/64")
	Peer2Net6  = netip.MustParsePrefix("fd00:2::/64")
	AUplink6   = netip.MustParseAddr("fd00:ff:1::1") // A's IPv6 underlay address
	CoreToA6   = netip.MustParseAddr("fd00:ff:1::2")
	CoreWAN6   = netip.MustParseAddr("2001:db8:100::1") // core's IPv6 underlay address
	WANCore6   = netip.MustParseAddr("2001:db8:100::2")
	WANB6      = netip.MustParseAddr("2001:db8:113::2")
	BUnderlay6 = netip.MustParseAddr("2001:db8:113::1") // B's IPv6 underlay address
)

// DualStack adds IPv6 to the reference topology: addresses (no duplicate
// address detection, usable at once), routes and forwarding, beside
// IPv4. With wanV6Only the untrusted network is IPv6 only: the IPv4
// addresses of the core's and B's wan interfaces and of the wan
// namespace, and the IPv4 routes over them, are removed, so nothing but
// IPv6 crosses the wan (A's underlay is its IPv6 uplink address). Call it
// before anything uses the wan.
func (l *Lab) DualStack(wanV6Only bool) error {
	for _, n := range []string{l.A, l.Core, l.WAN, l.B, l.VM, l.Peer, l.Peer2} {
		if !l.has(n) {
			continue
		}
		// Hosts and routers: no router advertisements, no DAD anywhere.
		for _, k := range []string{"all", "default"} {
			for _, kv := range [][2]string{{"accept_dad", "0"}, {"accept_ra", "0"}, {"disable_ipv6", "0"}} {
				if err := Sysctl(n, "net/ipv6/conf/"+k+"/"+kv[0], kv[1]); err != nil {
					return err
				}
			}
		}
	}
	type addr struct{ ns, dev, cidr string }
	addrs := []addr{
		{l.A, "br0", "fd00:1::1/64"},
		{l.B, "br0", "fd00:1::1/64"},
		{l.VM, "eth0", "fd00:1::10/64"},
		{l.Peer, "eth0", "fd00:1::20/64"},
		{l.A, "up0", "fd00:ff:1::1/126"},
		{l.Core, "a0", "fd00:ff:1::2/126"},
		{l.Core, "p2", "fd00:2::1/64"},
		{l.Peer2, "eth0", "fd00:2::20/64"},
		{l.Core, "wan0", "2001:db8:100::1/64"},
		{l.WAN, "c0", "2001:db8:100::2/64"},
		{l.WAN, "b0", "2001:db8:113::2/64"},
		{l.B, "wan0", "2001:db8:113::1/64"},
	}
	for _, a := range addrs {
		if !l.has(a.ns) {
			continue
		}
		if err := AddAddr(a.ns, a.dev, a.cidr); err != nil {
			return err
		}
	}
	type route struct{ ns, dst, gw string }
	routes := []route{
		{l.VM, "::/0", "fd00:1::1"},
		{l.Peer, "::/0", "fd00:1::1"},
		{l.Peer2, "::/0", "fd00:2::1"},
		{l.A, "::/0", "fd00:ff:1::2"},
		{l.Core, "fd00:1::/64", "fd00:ff:1::1"},
		{l.Core, "::/0", "2001:db8:100::2"},
		{l.WAN, "fd00::/8", "2001:db8:100::1"},
		{l.B, "::/0", "2001:db8:113::2"},
	}
	for _, r := range routes {
		if !l.has(r.ns) {
			continue
		}
		if err := AddRoute(r.ns, r.dst, r.gw, ""); err != nil {
			return err
		}
	}
	for _, n := range []string{l.A, l.Core, l.WAN, l.B} {
		if err := Sysctl(n, "net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
	}
	var all []string
	for _, n := range []string{l.A, l.Core, l.WAN, l.B, l.VM, l.Peer, l.Peer2} {
		if l.has(n) {
			all = append(all, n)
		}
	}
	if err := WaitIPv6Ready(5*time.Second, all...); err != nil {
		return err
	}
	if !wanV6Only {
		return nil
	}
	for _, c := range [][]string{
		{l.Core, "route", "del", "0.0.0.0/0", "via", "198.51.100.2"},
		{l.B, "route", "del", "0.0.0.0/0", "via", "203.0.113.2"},
		{l.WAN, "route", "del", "10.0.0.0/8", "via", "198.51.100.1"},
		{l.Core, "addr", "del", "198.51.100.1/24", "dev", "wan0"},
		{l.WAN, "addr", "del", "198.51.100.2/24", "dev", "c0"},
		{l.WAN, "addr", "del", "203.0.113.2/24", "dev", "b0"},
		{l.B, "addr", "del", "203.0.113.1/24", "dev", "wan0"},
	} {
		if out, err := Exec(c[0], "ip", c[1:]...); err != nil {
			return fmt.Errorf("v6-only wan: %v: %s", err, out)
		}
	}
	return nil
}

// WaitIPv6Ready waits until no address in the namespaces is tentative
// (duplicate address detection of the link-local addresses interfaces get
// when they come up lasts a second or two): until then a router cannot
// solicit a neighbour on that interface (Linux sends a neighbour
// solicitation from a link-local address only once it is no longer
// tentative), so what it forwards there is lost.
func WaitIPv6Ready(timeout time.Duration, namespaces ...string) error {
	deadline := time.Now().Add(timeout)
	for _, ns := range namespaces {
		for {
			out, err := Exec(ns, "ip", "-6", "addr", "show", "tentative")
			if err != nil {
				return err
			}
			if len(bytes.TrimSpace(out)) == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: addresses still tentative after %s:\n%s", ns, timeout, out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return nil
}

// has reports whether namespace n still exists (tests delete the
// stand-ins they replace: the VM endpoint, the peer).
func (l *Lab) has(n string) bool {
	h, err := netns.GetFromName(n)
	if err != nil {
		return false
	}
	h.Close()
	return true
}
