package netlinkroute

import (
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/routing"
)

// linkNames resolves interface indexes to names, caching the answers of
// one handle (an index is stable while its link exists).
type linkNames struct {
	h     *netlink.Handle
	names map[int]string
}

func (n *linkNames) name(index int) string {
	if index == 0 {
		return ""
	}
	if s, ok := n.names[index]; ok {
		return s
	}
	s := ""
	if l, err := n.h.LinkByIndex(index); err == nil {
		s = l.Attrs().Name
	}
	if n.names == nil {
		n.names = map[int]string{}
	}
	n.names[index] = s
	return s
}

// toRoutes converts a kernel route to the routes the core knows: one per
// next hop (a multipath route yields several). Routes without a
// destination prefix (the default route has Dst 0/0) are converted too.
func toRoutes(r netlink.Route, names *linkNames, own netlink.RouteProtocol) []routing.Route {
	prefix, ok := toPrefix(r.Dst, r.Family)
	if !ok {
		return nil
	}
	proto := protocolName(r.Protocol, own)
	if len(r.MultiPath) > 0 {
		out := make([]routing.Route, 0, len(r.MultiPath))
		for _, nh := range r.MultiPath {
			out = append(out, routing.Route{Prefix: prefix, Via: toAddr(nh.Gw), Device: names.name(nh.LinkIndex), Protocol: proto})
		}
		return out
	}
	return []routing.Route{{Prefix: prefix, Via: toAddr(r.Gw), Device: names.name(r.LinkIndex), Protocol: proto}}
}

// toPrefix converts a route destination; nil means the default route of
// the route's family.
func toPrefix(dst *net.IPNet, family int) (netip.Prefix, bool) {
	if dst == nil {
		switch family {
		case netlink.FAMILY_V4:
			return netip.PrefixFrom(netip.IPv4Unspecified(), 0), true
		case netlink.FAMILY_V6:
			return netip.PrefixFrom(netip.IPv6Unspecified(), 0), true
		}
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(dst.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := dst.Mask.Size()
	if a.Is4In6() || len(dst.Mask) == net.IPv4len {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, ones).Masked(), true
}

// toAddr converts a next hop; an absent one is the zero Addr.
func toAddr(ip net.IP) netip.Addr {
	if ip == nil {
		return netip.Addr{}
	}
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	if ip.To4() != nil {
		a = a.Unmap()
	}
	return a
}

// toIPNet converts a prefix to the kernel's form.
func toIPNet(p netip.Prefix) *net.IPNet {
	bits := 128
	if p.Addr().Is4() {
		bits = 32
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// family returns the netlink family of p.
func family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// protocolName names a route protocol the way `ip route` does; own (the
// number marking redirects) is "sealift".
func protocolName(p, own netlink.RouteProtocol) string {
	if p == own {
		return "sealift"
	}
	return p.String()
}
