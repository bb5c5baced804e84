package arp

import (
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// IPv6 has no ARP: its gratuitous ARP is an unsolicited Neighbour
// Advertisement (RFC 4861 7.2.6) to all nodes, with the Override flag set
// and Solicited clear, carrying the new link-layer address in a target
// link-layer address option. A neighbour that holds an entry for the
// target updates it to that address (state STALE) at once; one without an
// entry creates none (Linux: net.ipv6.conf.*.accept_untracked_na = 0),
// which is what the proxy and the moved VM need: only stale entries
// switch.

// NDP field values (RFC 4861 4.4).
const (
	icmpv6NA      = 136
	naRouter      = 0x80
	naSolicited   = 0x40
	naOverride    = 0x20
	optTargetLL   = 2
	ndpHopLimit   = 255
	ipv6HeaderLen = 40
	naLen         = 4 + 4 + 16 + 8 // ICMPv6 header, flags, target, target link-layer option
)

// allNodes is ff02::1 and its Ethernet multicast address (RFC 2464 7).
var (
	allNodes    = netip.MustParseAddr("ff02::1")
	allNodesMAC = net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}
)

// naFrame is an unsolicited Neighbour Advertisement from mac (source
// address src) for target at mac, to all nodes; router sets the R flag
// (the sender forwards: a gateway must not be demoted to a host).
func naFrame(mac net.HardwareAddr, src, target netip.Addr, router bool) []byte {
	f := make([]byte, 14+ipv6HeaderLen+naLen)
	copy(f[0:6], allNodesMAC)
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IPV6)
	ip := f[14:]
	ip[0] = 6 << 4
	binary.BigEndian.PutUint16(ip[4:], naLen)
	ip[6] = unix.IPPROTO_ICMPV6
	ip[7] = ndpHopLimit
	s, d, t := src.As16(), allNodes.As16(), target.As16()
	copy(ip[8:24], s[:])
	copy(ip[24:40], d[:])
	na := ip[ipv6HeaderLen:]
	na[0] = icmpv6NA
	na[4] = naOverride
	if router {
		na[4] |= naRouter
	}
	copy(na[8:24], t[:])
	na[24], na[25] = optTargetLL, 1 // length in units of 8 bytes
	copy(na[26:32], mac)
	binary.BigEndian.PutUint16(na[2:], icmpv6Checksum(src, allNodes, na))
	return f
}

// icmpv6Checksum is the checksum of ICMPv6 message m (its checksum field
// zero) from src to dst, over the IPv6 pseudo-header (RFC 8200 8.1).
func icmpv6Checksum(src, dst netip.Addr, m []byte) uint16 {
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(b[i])<<8 | uint32(b[i+1])
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	s, d := src.As16(), dst.As16()
	add(s[:])
	add(d[:])
	var l [8]byte
	binary.BigEndian.PutUint32(l[0:], uint32(len(m)))
	l[7] = unix.IPPROTO_ICMPV6
	add(l[:])
	add(m)
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// naSource picks the advertisement's source address on ifi (in the
// calling thread's namespace): its link-local address, as the kernel's
// own advertisements use; else target itself (an interface without IPv6
// link-local address still announces).
func naSource(ifi *net.Interface, target netip.Addr) netip.Addr {
	addrs, err := ifi.Addrs()
	if err != nil {
		return target
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Is6() && ip.IsLinkLocalUnicast() {
				return ip
			}
		}
	}
	return target
}

// ownRouter reports whether ip is an address of ifi that the host
// forwards behind (IPv6 forwarding on ifi): the host is a gateway there,
// and its advertisement keeps the Router flag so neighbours that route
// through it do not demote it to a host.
func ownRouter(ifi *net.Interface, ip netip.Addr) bool {
	addrs, err := ifi.Addrs()
	if err != nil {
		return false
	}
	own := false
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip {
				own = true
				break
			}
		}
	}
	if !own {
		return false
	}
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + ifi.Name + "/forwarding")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}
