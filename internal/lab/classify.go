package lab

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
)

// Kinds of frame a wan capture expects; anything else is KindUnknown.
const (
	KindWireGuard = "wireguard"  // WireGuard message (type 1-4) in UDP between underlay addresses
	KindESP       = "esp"        // ESP between underlay addresses
	KindUnderlay  = "tcp"        // TCP between underlay addresses (the TLS migration stream, BGP)
	KindARP       = "arp"        // ARP for underlay addresses
	KindLinkLocal = "link-local" // IPv6 neighbour discovery / MLD on the link itself
	KindNDP       = "ndp"        // IPv6 neighbour discovery for underlay addresses (the IPv6 ARP)
	// KindUnderlayICMP: an ICMP error between underlay addresses quoting
	// a packet of one of the kinds above (e.g. a host whose link end is
	// gone answering the other end's WireGuard with port unreachable):
	// it carries only what the quoted packet did, ciphertext.
	KindUnderlayICMP = "icmp-underlay"
	KindUnknown      = "unknown"
)

// Classifier judges frames seen on an untrusted network.
type Classifier struct {
	// Watch: any IP or ARP header carrying one of these addresses (outer,
	// quoted by an ICMP error, or tunnelled IP-in-IP) is plaintext.
	Watch []netip.Prefix
	// Underlay: the hosts' addresses on the untrusted network.
	Underlay []netip.Addr
}

// Verdict is what Classify found in one frame.
type Verdict struct {
	Kind string
	// Watched is the first watched address found in any header ("" none).
	Watched netip.Addr
}

// Classify reads an Ethernet frame (or a bare IP packet when ethertype
// is non-zero: devices without a link-layer header).
func (c Classifier) Classify(frame []byte, ethertype uint16) Verdict {
	etype, ip := linkPayload(frame, ethertype)
	switch etype {
	case unix.ETH_P_ARP:
		return c.arp(ip)
	case unix.ETH_P_IP, unix.ETH_P_IPV6:
		v := Verdict{Kind: KindUnknown}
		v.Watched = c.watched(ip, 0)
		if v.Watched.IsValid() {
			return v
		}
		v.Kind = c.kind(ip)
		return v
	}
	return Verdict{Kind: KindUnknown}
}

func (c Classifier) arp(b []byte) Verdict {
	// Ethernet/IPv4 ARP: sender IP at 14, target IP at 24.
	if len(b) < 28 || binary.BigEndian.Uint16(b[2:4]) != unix.ETH_P_IP {
		return Verdict{Kind: KindUnknown}
	}
	spa, _ := netip.AddrFromSlice(b[14:18])
	tpa, _ := netip.AddrFromSlice(b[24:28])
	for _, a := range []netip.Addr{spa, tpa} {
		if c.isWatched(a) {
			return Verdict{Kind: KindUnknown, Watched: a}
		}
	}
	if c.isUnderlay(spa) || c.isUnderlay(tpa) {
		return Verdict{Kind: KindARP}
	}
	return Verdict{Kind: KindUnknown}
}

// linkPayload returns a frame's ethertype and what follows its
// link-layer header (past VLAN tags); ethertype non-zero means the frame
// is a bare packet of that type (a device without link-layer header).
// A frame too short for a header has type 0.
func linkPayload(frame []byte, ethertype uint16) (uint16, []byte) {
	if ethertype != 0 {
		return ethertype, frame
	}
	if len(frame) < 14 {
		return 0, nil
	}
	etype, rest := binary.BigEndian.Uint16(frame[12:14]), frame[14:]
	for (etype == 0x8100 || etype == 0x88a8) && len(rest) >= 4 {
		etype, rest = binary.BigEndian.Uint16(rest[2:4]), rest[4:]
	}
	return etype, rest
}

// ipHeader is what the classifier reads of one IP header.
type ipHeader struct {
	src, dst netip.Addr
	proto    int
	l4       []byte // transport header onwards; nil for a later fragment
}

func parseIP(b []byte) (ipHeader, bool) {
	if len(b) < 1 {
		return ipHeader{}, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) < 20 {
			return ipHeader{}, false
		}
		h := ipHeader{proto: int(b[9])}
		h.src, _ = netip.AddrFromSlice(b[12:16])
		h.dst, _ = netip.AddrFromSlice(b[16:20])
		ihl := int(b[0]&0x0f) * 4
		if off := binary.BigEndian.Uint16(b[6:8]) & 0x1fff; off == 0 && ihl >= 20 && len(b) >= ihl {
			h.l4 = b[ihl:]
		}
		return h, true
	case 6:
		if len(b) < 40 {
			return ipHeader{}, false
		}
		h := ipHeader{}
		h.src, _ = netip.AddrFromSlice(b[8:24])
		h.dst, _ = netip.AddrFromSlice(b[24:40])
		next, rest := b[6], b[40:]
		for {
			switch next {
			case 0, 43, 60: // hop-by-hop, routing, destination options
				if len(rest) < 8 || len(rest) < (int(rest[1])+1)*8 {
					h.proto = int(next)
					return h, true
				}
				next, rest = rest[0], rest[(int(rest[1])+1)*8:]
			case 44: // fragment
				if len(rest) < 8 {
					h.proto = int(next)
					return h, true
				}
				off := binary.BigEndian.Uint16(rest[2:4]) >> 3
				next, rest = rest[0], rest[8:]
				if off != 0 {
					h.proto = int(next)
					return h, true
				}
			default:
				h.proto, h.l4 = int(next), rest
				return h, true
			}
		}
	}
	return ipHeader{}, false
}

// watched returns a watched address from any IP header of the packet:
// the outer one, the one an ICMP error quotes, an IP-in-IP inner one.
func (c Classifier) watched(b []byte, depth int) netip.Addr {
	h, ok := parseIP(b)
	if !ok || depth > 3 {
		return netip.Addr{}
	}
	for _, a := range []netip.Addr{h.src, h.dst} {
		if c.isWatched(a) {
			return a
		}
	}
	switch {
	case h.proto == unix.IPPROTO_IPIP || h.proto == unix.IPPROTO_IPV6:
		return c.watched(h.l4, depth+1)
	case h.proto == unix.IPPROTO_ICMP && len(h.l4) >= 8 && slices.Contains([]byte{3, 4, 5, 11, 12}, h.l4[0]):
		return c.watched(h.l4[8:], depth+1)
	case h.proto == unix.IPPROTO_ICMPV6 && len(h.l4) >= 8 && h.l4[0] >= 1 && h.l4[0] <= 4:
		return c.watched(h.l4[8:], depth+1)
	case h.proto == unix.IPPROTO_ICMPV6 && len(h.l4) >= 24 && (h.l4[0] == 135 || h.l4[0] == 136):
		// A neighbour solicitation or advertisement names its target
		// address in clear, as ARP does.
		if t := netip.AddrFrom16([16]byte(h.l4[8:24])); c.isWatched(t) {
			return t
		}
	}
	return netip.Addr{}
}

// ndp reports whether h is neighbour discovery (solicitation or
// advertisement, hop limit 255 so it never left its link) by or for an
// underlay address (source, destination or target), as KindARP is.
// One naming a watched target was caught as watched before.
func (c Classifier) ndp(b []byte, h ipHeader) bool {
	if h.proto != unix.IPPROTO_ICMPV6 || len(b) < 40 || b[7] != 255 || len(h.l4) < 24 || (h.l4[0] != 135 && h.l4[0] != 136) {
		return false
	}
	target := netip.AddrFrom16([16]byte(h.l4[8:24]))
	return c.isUnderlay(h.src) || c.isUnderlay(h.dst) || c.isUnderlay(target)
}

// kind sorts a packet that carries no watched address.
func (c Classifier) kind(b []byte) string { return c.kindAt(b, 0) }

func (c Classifier) kindAt(b []byte, depth int) string {
	h, ok := parseIP(b)
	if !ok {
		return KindUnknown
	}
	if depth == 0 && c.ndp(b, h) {
		return KindNDP
	}
	if h.src.Is6() && h.src.IsLinkLocalUnicast() || h.src.Is6() && h.src.IsUnspecified() {
		if h.dst.IsLinkLocalMulticast() || h.dst.IsLinkLocalUnicast() {
			return KindLinkLocal
		}
	}
	if !c.isUnderlay(h.src) || !c.isUnderlay(h.dst) {
		return KindUnknown
	}
	switch h.proto {
	case unix.IPPROTO_ESP:
		return KindESP
	case unix.IPPROTO_TCP:
		return KindUnderlay
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		errs := []byte{3, 4, 11, 12} // unreachable, source quench, time exceeded, parameter problem
		if h.proto == unix.IPPROTO_ICMPV6 {
			errs = []byte{1, 2, 3, 4} // unreachable, too big, time exceeded, parameter problem
		}
		if depth == 0 && len(h.l4) >= 8 && slices.Contains(errs, h.l4[0]) {
			switch c.kindAt(h.l4[8:], 1) {
			case KindWireGuard, KindESP, KindUnderlay:
				return KindUnderlayICMP
			}
		}
	case unix.IPPROTO_UDP:
		// WireGuard: a message type 1-4 followed by three reserved zeros.
		if len(h.l4) >= 12 && h.l4[8] >= 1 && h.l4[8] <= 4 && h.l4[9] == 0 && h.l4[10] == 0 && h.l4[11] == 0 {
			return KindWireGuard
		}
	}
	return KindUnknown
}

func (c Classifier) isWatched(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c.Watch {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (c Classifier) isUnderlay(a netip.Addr) bool {
	return slices.Contains(c.Underlay, a.Unmap())
}

// Describe renders a frame's addresses and protocol for a report.
func Describe(frame []byte, ethertype uint16) string {
	ethertype, ip := linkPayload(frame, ethertype)
	if ethertype == 0 {
		return fmt.Sprintf("short frame (%d bytes)", len(frame))
	}
	if ethertype == unix.ETH_P_ARP && len(ip) >= 28 {
		spa, _ := netip.AddrFromSlice(ip[14:18])
		tpa, _ := netip.AddrFromSlice(ip[24:28])
		return fmt.Sprintf("arp %s -> %s", spa, tpa)
	}
	h, ok := parseIP(ip)
	if !ok {
		return fmt.Sprintf("ethertype %#04x, %d bytes", ethertype, len(frame))
	}
	s := fmt.Sprintf("%s -> %s proto %d", h.src, h.dst, h.proto)
	if (h.proto == unix.IPPROTO_ICMP || h.proto == unix.IPPROTO_ICMPV6) && len(h.l4) >= 8 {
		s += fmt.Sprintf(" type %d code %d", h.l4[0], h.l4[1])
		if in, ok := parseIP(h.l4[8:]); ok {
			s += fmt.Sprintf(" quoting %s -> %s proto %d", in.src, in.dst, in.proto)
		}
	}
	return s
}
