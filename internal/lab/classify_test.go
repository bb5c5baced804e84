package lab

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
)

var testClassifier = Classifier{
	Watch:    []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("fd00:1::/64")},
	Underlay: []netip.Addr{CoreWAN, BUnderlay},
}

func ipv4(src, dst netip.Addr, proto byte, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0], h[8], h[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	copy(h[12:], src.AsSlice())
	copy(h[16:], dst.AsSlice())
	return append(h, payload...)
}

func ipv6(src, dst netip.Addr, next byte, payload []byte) []byte {
	h := make([]byte, 40, 40+len(payload))
	h[0], h[6], h[7] = 0x60, next, 64
	binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
	copy(h[8:], src.AsSlice())
	copy(h[24:], dst.AsSlice())
	return append(h, payload...)
}

func udp(sport, dport uint16, payload []byte) []byte {
	h := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(h[0:], sport)
	binary.BigEndian.PutUint16(h[2:], dport)
	binary.BigEndian.PutUint16(h[4:], uint16(8+len(payload)))
	return append(h, payload...)
}

func ether(etype uint16, payload []byte) []byte {
	f := make([]byte, 14, 14+len(payload))
	binary.BigEndian.PutUint16(f[12:], etype)
	return append(f, payload...)
}

func arpFrame(spa, tpa netip.Addr) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint16(b[0:], 1)
	binary.BigEndian.PutUint16(b[2:], unix.ETH_P_IP)
	b[4], b[5] = 6, 4
	copy(b[14:], spa.AsSlice())
	copy(b[24:], tpa.AsSlice())
	return ether(unix.ETH_P_ARP, b)
}

func TestClassify(t *testing.T) {
	peer := netip.MustParseAddr("10.2.0.20")
	vm := netip.MustParseAddr("10.1.0.10")
	wgInit := append([]byte{1, 0, 0, 0}, make([]byte, 144)...)
	quoted := ipv4(peer, netip.MustParseAddr("10.1.0.12"), unix.IPPROTO_ICMP, make([]byte, 8))
	unreach := append([]byte{3, 1, 0, 0, 0, 0, 0, 0}, quoted...)
	quotedUnderlay := ipv4(CoreWAN, BUnderlay, unix.IPPROTO_UDP, udp(51820, 51820, wgInit)[:8])
	quotedWG := ipv4(CoreWAN, BUnderlay, unix.IPPROTO_UDP, udp(51820, 51820, wgInit)[:40])
	for _, tc := range []struct {
		name    string
		frame   []byte
		kind    string
		watched string
	}{
		{"wireguard", ether(unix.ETH_P_IP, ipv4(CoreWAN, BUnderlay, unix.IPPROTO_UDP, udp(51820, 51821, wgInit))), KindWireGuard, ""},
		{"esp", ether(unix.ETH_P_IP, ipv4(BUnderlay, CoreWAN, unix.IPPROTO_ESP, make([]byte, 40))), KindESP, ""},
		{"migration stream", ether(unix.ETH_P_IP, ipv4(CoreWAN, BUnderlay, unix.IPPROTO_TCP, make([]byte, 20))), KindUnderlay, ""},
		{"udp not wireguard", ether(unix.ETH_P_IP, ipv4(CoreWAN, BUnderlay, unix.IPPROTO_UDP, udp(9, 9, []byte("hello world!")))), KindUnknown, ""},
		{"tcp to a stranger", ether(unix.ETH_P_IP, ipv4(CoreWAN, netip.MustParseAddr("192.0.2.1"), unix.IPPROTO_TCP, make([]byte, 20))), KindUnknown, ""},
		{"peer in clear", ether(unix.ETH_P_IP, ipv4(peer, BUnderlay, unix.IPPROTO_ICMP, make([]byte, 8))), KindUnknown, "10.2.0.20"},
		{"host's icmp error to a peer", ether(unix.ETH_P_IP, ipv4(BUnderlay, peer, unix.IPPROTO_ICMP, unreach)), KindUnknown, "10.2.0.20"},
		{"icmp error quoting a peer's packet", ether(unix.ETH_P_IP, ipv4(BUnderlay, CoreWAN, unix.IPPROTO_ICMP, unreach)), KindUnknown, "10.2.0.20"},
		// Too short a quote to tell it is WireGuard: unknown.
		{"icmp error quoting underlay", ether(unix.ETH_P_IP, ipv4(BUnderlay, CoreWAN, unix.IPPROTO_ICMP, append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quotedUnderlay...))), KindUnknown, ""},
		{"icmp error quoting wireguard", ether(unix.ETH_P_IP, ipv4(BUnderlay, CoreWAN, unix.IPPROTO_ICMP, append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quotedWG...))), KindUnderlayICMP, ""},
		{"icmp error to a stranger quoting wireguard", ether(unix.ETH_P_IP, ipv4(BUnderlay, netip.MustParseAddr("192.0.2.1"), unix.IPPROTO_ICMP, append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quotedWG...))), KindUnknown, ""},
		{"icmp echo between underlay", ether(unix.ETH_P_IP, ipv4(BUnderlay, CoreWAN, unix.IPPROTO_ICMP, append([]byte{8, 0, 0, 0, 0, 0, 0, 0}, quotedWG...))), KindUnknown, ""},
		{"icmp error quoting an icmp error", ether(unix.ETH_P_IP, ipv4(BUnderlay, CoreWAN, unix.IPPROTO_ICMP, append([]byte{3, 3, 0, 0, 0, 0, 0, 0},
			ipv4(CoreWAN, BUnderlay, unix.IPPROTO_ICMP, append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, quotedWG...))...))), KindUnknown, ""},
		{"ip in ip", ether(unix.ETH_P_IP, ipv4(CoreWAN, BUnderlay, unix.IPPROTO_IPIP, ipv4(vm, peer, unix.IPPROTO_UDP, udp(1, 2, nil)))), KindUnknown, "10.1.0.10"},
		{"ipv6 guest", ether(unix.ETH_P_IPV6, ipv6(netip.MustParseAddr("fd00:1::10"), netip.MustParseAddr("2001:db8::1"), unix.IPPROTO_UDP, udp(1, 2, nil))), KindUnknown, "fd00:1::10"},
		{"ipv6 neighbour discovery", ether(unix.ETH_P_IPV6, ipv6(netip.MustParseAddr("fe80::1"), netip.MustParseAddr("ff02::1:ff00:1"), unix.IPPROTO_ICMPV6, []byte{135, 0, 0, 0, 0, 0, 0, 0})), KindLinkLocal, ""},
		{"arp underlay", arpFrame(BUnderlay, WANB), KindARP, ""},
		{"arp for a guest", arpFrame(BUnderlay, vm), KindUnknown, "10.1.0.10"},
		{"bare ip (tun)", ipv4(CoreWAN, BUnderlay, unix.IPPROTO_ESP, make([]byte, 40)), KindESP, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			et := uint16(0)
			if tc.name == "bare ip (tun)" {
				et = unix.ETH_P_IP
			}
			v := testClassifier.Classify(tc.frame, et)
			assert.Equal(t, tc.kind, v.Kind)
			if tc.watched == "" {
				assert.False(t, v.Watched.IsValid(), "watched %v", v.Watched)
			} else {
				assert.Equal(t, tc.watched, v.Watched.String())
			}
		})
	}
}

// TestClassifyIPv6Underlay: an IPv6-only wan's own traffic (neighbour
// discovery for underlay addresses, WireGuard between them, ICMPv6
// errors quoting it) is expected; neighbour discovery naming a guest's
// address, or not confined to its link, is not.
func TestClassifyIPv6Underlay(t *testing.T) {
	c := Classifier{Watch: []netip.Prefix{VMSubnet6, Peer2Net6}, Underlay: []netip.Addr{CoreWAN6, BUnderlay6}}
	nd := func(typ byte, src, dst, target netip.Addr, hops byte) []byte {
		m := append([]byte{typ, 0, 0, 0, 0, 0, 0, 0}, target.AsSlice()...)
		p := ipv6(src, dst, unix.IPPROTO_ICMPV6, m)
		p[7] = hops
		return ether(unix.ETH_P_IPV6, p)
	}
	solicited := netip.MustParseAddr("ff02::1:ff00:2")
	wgInit := append([]byte{1, 0, 0, 0}, make([]byte, 144)...)
	quotedWG := ipv6(CoreWAN6, BUnderlay6, unix.IPPROTO_UDP, udp(51820, 51820, wgInit)[:40])
	for _, tc := range []struct {
		name    string
		frame   []byte
		kind    string
		watched string
	}{
		{"solicitation for the wan router", nd(135, CoreWAN6, solicited, WANCore6, 255), KindNDP, ""},
		{"advertisement to the core", nd(136, WANCore6, CoreWAN6, WANCore6, 255), KindNDP, ""},
		{"solicitation for B", nd(135, WANB6, solicited, BUnderlay6, 255), KindNDP, ""},
		{"routed solicitation", nd(135, CoreWAN6, solicited, WANCore6, 64), KindUnknown, ""},
		{"solicitation for a guest", nd(135, BUnderlay6, solicited, VMAddr6, 255), KindUnknown, VMAddr6.String()},
		{"solicitation between strangers", nd(135, WANB6, solicited, WANCore6, 255), KindUnknown, ""},
		{"wireguard", ether(unix.ETH_P_IPV6, ipv6(CoreWAN6, BUnderlay6, unix.IPPROTO_UDP, udp(51820, 51821, wgInit))), KindWireGuard, ""},
		{"icmpv6 error quoting wireguard", ether(unix.ETH_P_IPV6, ipv6(BUnderlay6, CoreWAN6, unix.IPPROTO_ICMPV6, append([]byte{1, 4, 0, 0, 0, 0, 0, 0}, quotedWG...))), KindUnderlayICMP, ""},
		{"icmpv6 echo between underlay", ether(unix.ETH_P_IPV6, ipv6(BUnderlay6, CoreWAN6, unix.IPPROTO_ICMPV6, append([]byte{128, 0, 0, 0, 0, 0, 0, 0}, quotedWG...))), KindUnknown, ""},
		{"peer in clear", ether(unix.ETH_P_IPV6, ipv6(Peer2Addr6, BUnderlay6, unix.IPPROTO_ICMPV6, make([]byte, 8))), KindUnknown, Peer2Addr6.String()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := c.Classify(tc.frame, 0)
			assert.Equal(t, tc.kind, v.Kind)
			if tc.watched == "" {
				assert.False(t, v.Watched.IsValid(), "watched %v", v.Watched)
			} else {
				assert.Equal(t, tc.watched, v.Watched.String())
			}
		})
	}
}
