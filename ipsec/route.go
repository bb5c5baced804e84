package ipsec

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/arp"
	"github.com/sealift/sealift/internal/nsutil"
)

// family is a's netlink address family.
func family(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// RouteProtocol tags the routes a link installs (rtm_protocol), so Close
// finds them: a route with this protocol to one of the other end's
// Protected prefixes belongs to the link whose out policy covers it.
const RouteProtocol netlink.RouteProtocol = 83

// routeEntry is a route to the other end's Protected prefix.
type routeEntry struct{ r netlink.Route }

// proxyEntry is a proxy ARP (IPv4) or NDP (IPv6) entry for one address
// on the LAN interface.
type proxyEntry struct {
	linkIndex int
	ip        netip.Addr
}

// maxProxyAddrs bounds the addresses of one prefix answered by proxy
// ARP or NDP.
const maxProxyAddrs = 256

// routePlan computes, per end, the routes for the other end's Protected
// prefixes: through the gateway and device the other end's Underlay is
// reached by, with the link's MTU (Spec.MTU, or the underlay device's MTU
// minus the ESP overhead, alg.overhead) so senders learn the inner path
// MTU. A
// prefix of the other address family than the underlay gets an on-link
// route through the device alone. A peer underlay that is not reachable
// is an error.
func (es ends) routePlan(mtu int, alg Algorithm) ([2][]routeEntry, error) {
	var plan [2][]routeEntry
	for i, e := range es {
		p, err := e.routePlan(mtu, alg)
		if err != nil {
			return plan, err
		}
		plan[i] = p
	}
	return plan, nil
}

// routePlan is routePlan at this end.
func (e *end) routePlan(mtu int, alg Algorithm) ([]routeEntry, error) {
	rs, err := e.h.RouteGet(ipOf(e.peer.Underlay))
	if err != nil || len(rs) == 0 {
		return nil, fmt.Errorf("%w: host %q has no route to the other end's Underlay %s: %v", errInvalid, e.host, e.peer.Underlay, err)
	}
	m := mtu
	if m == 0 {
		dev, err := e.h.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			return nil, fmt.Errorf("ipsec: host %q: underlay device %d: %w", e.host, rs[0].LinkIndex, err)
		}
		m = dev.Attrs().MTU - alg.overhead(e.peer.Underlay.Unmap().Is6())
	}
	var plan []routeEntry
	for _, p := range e.peer.Protected {
		r := netlink.Route{Dst: ipNet(p), Gw: rs[0].Gw, LinkIndex: rs[0].LinkIndex, Protocol: RouteProtocol, MTU: m}
		if gw, ok := netip.AddrFromSlice(rs[0].Gw); ok && gw.Unmap().Is4() != p.Addr().Is4() {
			// A prefix of the other family than the underlay (IPv4 hosts
			// over an IPv6 underlay, or the reverse) cannot name the
			// underlay's gateway: it leaves by the underlay device, on
			// link, and its out policy transforms it there (the outer
			// packet is routed by the underlay's own route).
			r.Gw, r.Scope = nil, netlink.SCOPE_LINK
		}
		plan = append(plan, routeEntry{r})
	}
	return plan, nil
}

// overhead is what the tunnel takes off the underlay MTU by default: the
// contract's "underlay MTU minus 80", which covers ESP tunnel mode with
// AES-GCM (outer header 20 or 40, ESP header 8, IV 8, ICV 16, trailer
// 2..5 with 4-byte alignment: at most 77 over IPv6) and CBC with
// HMAC-SHA256 over IPv4 (20, 8, IV 16, ICV 16, trailer 2..17 with
// 16-byte blocks: 77); CBC over an IPv6 underlay needs up to 97, so it
// gets that (a packet one byte over would be fragmented or dropped).
func (a Algorithm) overhead(v6Underlay bool) int {
	if a == AESCBCHMACSHA256 && v6Underlay {
		return 40 + 8 + 16 + 16 + 2 + 15
	}
	return 80
}

// proxyPlan computes, per end, the proxy entries for the other end's
// Protected addresses: on the interface (not the underlay's) whose subnet
// of the address's family contains them; proxy ARP for IPv4, proxy NDP
// for IPv6.
func (es ends) proxyPlan() ([2][]proxyEntry, error) {
	var plan [2][]proxyEntry
	for i, e := range es {
		p, err := e.proxyPlan()
		if err != nil {
			return plan, err
		}
		plan[i] = p
	}
	return plan, nil
}

// proxyPlan is proxyPlan at this end. The kernel answers ARP requests
// for a proxy entry only on a forwarding interface, and neighbour
// solicitations for a proxy NDP entry only with proxy_ndp on as well;
// this backend changes no sysctl, so an address on an interface without
// them is refused (ErrInvalid, naming the setting) rather than silently
// never answered.
func (e *end) proxyPlan() ([]proxyEntry, error) {
	rs, err := e.h.RouteGet(ipOf(e.peer.Underlay))
	if err != nil || len(rs) == 0 {
		return nil, fmt.Errorf("%w: host %q has no route to the other end's Underlay %s: %v", errInvalid, e.host, e.peer.Underlay, err)
	}
	addrs, err := e.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("ipsec: host %q: list addresses: %w", e.host, err)
	}
	var plan []proxyEntry
	for _, p := range e.peer.Protected {
		if p.Bits() < p.Addr().BitLen()-8 {
			return nil, fmt.Errorf("%w: ProxyARP: %s holds more than %d addresses", errInvalid, p, maxProxyAddrs)
		}
		lan := -1
		for _, a := range addrs {
			sub, ok := prefixOf(a.IPNet)
			if ok && a.LinkIndex != rs[0].LinkIndex && sub.Addr().Is4() == p.Addr().Is4() && !sub.Addr().IsLinkLocalUnicast() &&
				sub.Contains(p.Addr()) && sub.Bits() <= p.Bits() {
				lan = a.LinkIndex
				break
			}
		}
		if lan < 0 {
			return nil, fmt.Errorf("%w: ProxyARP: host %q has no LAN interface whose subnet holds %s", errInvalid, e.host, p)
		}
		if err := e.proxyReady(lan, p); err != nil {
			return nil, err
		}
		for a := p.Masked().Addr(); p.Contains(a); a = a.Next() {
			plan = append(plan, proxyEntry{lan, a})
		}
	}
	return plan, nil
}

// proxyReady checks that the kernel will answer for p on interface lan:
// forwarding on the interface (proxy ARP and proxy NDP both need it),
// and for IPv6 proxy_ndp on (the interface's or all's).
func (e *end) proxyReady(lan int, p netip.Prefix) error {
	l, err := e.h.LinkByIndex(lan)
	if err != nil {
		return fmt.Errorf("ipsec: host %q: interface %d: %w", e.host, lan, err)
	}
	dev := l.Attrs().Name
	fam, proto := "ipv4", "ARP"
	if p.Addr().Is6() {
		fam, proto = "ipv6", "NDP"
	}
	var proxyDev, proxyAll, fwd string
	keys := map[string]*string{"net/" + fam + "/conf/" + dev + "/forwarding": &fwd}
	if fam == "ipv6" {
		keys["net/ipv6/conf/"+dev+"/proxy_ndp"] = &proxyDev
		keys["net/ipv6/conf/all/proxy_ndp"] = &proxyAll
	}
	err = nsutil.Do(e.host, func() error {
		for key, v := range keys {
			b, err := os.ReadFile("/proc/sys/" + key)
			if err != nil {
				return err
			}
			*v = strings.TrimSpace(string(b))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("ipsec: host %q: proxy %s settings of %s: %w", e.host, proto, dev, err)
	}
	if fam == "ipv6" && proxyDev != "1" && proxyAll != "1" {
		return fmt.Errorf("%w: ProxyARP: %s is IPv6 and host %q answers proxy NDP on %s only with net.ipv6.conf.%s.proxy_ndp=1 (it is %s)",
			errInvalid, p, e.host, dev, dev, proxyDev)
	}
	if fwd != "1" {
		return fmt.Errorf("%w: ProxyARP: host %q answers proxy %s for %s on %s only with net.%s.conf.%s.forwarding=1 (it is %s)",
			errInvalid, e.host, proto, p, dev, fam, dev, fwd)
	}
	return nil
}

// addRoutes installs routes and proxy entries and records them in l.
func (es ends) addRoutes(l *link) error {
	// Both ends' plans first: nothing is added if either end cannot route.
	if _, err := es.routePlan(l.spec.MTU, l.alg); err != nil {
		return err
	}
	if l.spec.ProxyARP {
		if _, err := es.proxyPlan(); err != nil {
			return err
		}
	}
	for i, e := range es {
		if err := e.addRoutes(l, i); err != nil {
			return err
		}
	}
	return nil
}

// addRoutes installs this end's routes and proxy entries (announced by
// gratuitous ARP) and records them in l under index i (0: the Secure
// end, 1: the Remote end).
func (e *end) addRoutes(l *link, i int) error {
	routes, err := e.routePlan(l.spec.MTU, l.alg)
	if err != nil {
		return err
	}
	var proxies []proxyEntry
	if l.spec.ProxyARP {
		if proxies, err = e.proxyPlan(); err != nil {
			return err
		}
	}
	for _, r := range routes {
		r := r.r
		if err := e.h.RouteAdd(&r); err != nil {
			if errors.Is(err, unix.EEXIST) && e.ownRoute(r) {
				// Another sealift link to the same prefix installed it.
				l.routes[i] = append(l.routes[i], routeEntry{r})
				continue
			}
			return fmt.Errorf("ipsec: host %q: add route %s: %w", e.host, r.Dst, err)
		}
		l.routes[i] = append(l.routes[i], routeEntry{r})
	}
	for _, p := range proxies {
		n := &netlink.Neigh{LinkIndex: p.linkIndex, Family: family(p.ip), Flags: netlink.NTF_PROXY, IP: ipOf(p.ip)}
		if err := e.h.NeighAdd(n); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("ipsec: host %q: add proxy entry for %s: %w", e.host, p.ip, err)
		}
		l.proxies[i] = append(l.proxies[i], p)
	}
	return e.announce(l.proxies[i])
}

// ownRoute reports whether the main table has r's destination through
// r's gateway with RouteProtocol (installed by a sealift link).
func (e *end) ownRoute(r netlink.Route) bool {
	rs, err := e.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: r.Dst, Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	return err == nil && len(rs) > 0 && rs[0].Gw.Equal(r.Gw)
}

// removeRoutes deletes this end's routes (RouteProtocol) and proxy ARP
// entries for the prefixes in dsts (the link's out-policy destinations).
func (e *end) removeRoutes(dsts []netip.Prefix) error {
	var errs []error
	rs, err := retryDump(func() ([]netlink.Route, error) {
		return e.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("ipsec: host %q: list routes: %w", e.host, err)
	}
	for _, r := range rs {
		p, ok := prefixOf(r.Dst)
		if ok && containsPrefix(dsts, p) {
			r := r
			if err := ignoreGone(e.h.RouteDel(&r)); err != nil {
				errs = append(errs, fmt.Errorf("ipsec: host %q: delete route %s: %w", e.host, p, err))
			}
		}
	}
	var ns []netlink.Neigh
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		got, err := retryDump(func() ([]netlink.Neigh, error) { return e.h.NeighProxyList(0, fam) })
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("ipsec: host %q: list proxy entries: %w", e.host, err))...)
		}
		ns = append(ns, got...)
	}
	for _, n := range ns {
		a := addrOf(n.IP)
		for _, d := range dsts {
			if d.Contains(a) {
				n := n
				n.Flags |= netlink.NTF_PROXY
				if err := ignoreGone(e.h.NeighDel(&n)); err != nil {
					errs = append(errs, fmt.Errorf("ipsec: host %q: delete proxy entry %s: %w", e.host, a, err))
				}
				break
			}
		}
	}
	return errors.Join(errs...)
}

func containsPrefix(ps []netip.Prefix, p netip.Prefix) bool {
	for _, q := range ps {
		if q == p {
			return true
		}
	}
	return false
}

// announce announces every proxy entry of the link (gratuitous ARP, or
// an unsolicited neighbour advertisement for IPv6).
func (es ends) announce(l *link) error {
	for i, e := range es {
		if err := e.announce(l.proxies[i]); err != nil {
			return err
		}
	}
	return nil
}

// announce announces each of proxies at this end.
func (e *end) announce(proxies []proxyEntry) error {
	for _, p := range proxies {
		if err := arp.Announce(e.host, p.linkIndex, p.ip); err != nil {
			return err
		}
	}
	return nil
}
