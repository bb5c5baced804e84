package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkOverhead is what WireGuard adds to a packet on an IPv6 underlay
// (40 IPv6 + 8 UDP + 32 WireGuard), used for both families.
const linkOverhead = 80

// underlayMTU returns the MTU of the interface host sends to dst through.
func underlayMTU(host string, dst netip.Addr) (int, error) {
	h, err := nlHandle(host)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	rs, err := h.RouteGet(net.IP(dst.AsSlice()))
	if err != nil || len(rs) == 0 {
		return 0, fmt.Errorf("%s: no route to %s: %v", hostName(host), dst, err)
	}
	l, err := h.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return 0, fmt.Errorf("%s: interface %d towards %s: %w", hostName(host), rs[0].LinkIndex, dst, err)
	}
	mtu := l.Attrs().MTU
	if rs[0].MTU > 0 && rs[0].MTU < mtu {
		mtu = rs[0].MTU
	}
	return mtu, nil
}

// linkMTU is the link device's MTU: Spec.MTU, or the smaller underlay MTU
// of both ends minus the WireGuard overhead.
func linkMTU(secureHost, remoteHost string, secureUnderlay, remoteUnderlay netip.Addr) (int, error) {
	a, err := underlayMTU(secureHost, remoteUnderlay)
	if err != nil {
		return 0, err
	}
	b, err := underlayMTU(remoteHost, secureUnderlay)
	if err != nil {
		return 0, err
	}
	return min(a, b) - linkOverhead, nil
}

// setUp brings interface ifname up.
func setUp(host, ifname string) error {
	h, err := nlHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", hostName(host), ifname, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s: set %s up: %w", hostName(host), ifname, err)
	}
	return nil
}

// addRoutes routes each prefix through ifname (on-link, no gateway:
// the device is point-to-point and address-less) in table (0 = main).
func addRoutes(host, ifname string, table int, prefixes []netip.Prefix) error {
	h, err := nlHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", hostName(host), ifname, err)
	}
	for _, p := range prefixes {
		dst := ipNet(p)
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &dst, Scope: netlink.SCOPE_LINK, Table: table}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("%s: route %s dev %s table %d: %w", hostName(host), p, ifname, table, err)
		}
	}
	return nil
}

// delRoutes removes the routes addRoutes installed; absent ones (or an
// absent device, which took its routes with it) are fine.
func delRoutes(host, ifname string, table int, prefixes []netip.Prefix) error {
	h, err := nlHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return nil // routes through a deleted device are gone
	}
	var errs []error
	for _, p := range prefixes {
		dst := ipNet(p)
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: &dst, Scope: netlink.SCOPE_LINK, Table: table}
		if err := h.RouteDel(r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("%s: delete route %s dev %s: %w", hostName(host), p, ifname, err))
		}
	}
	return errors.Join(errs...)
}

// Remote-end policy routing (see the tunnel package): a rule "from
// <Remote.Protected> lookup <table>" per link, the table holding the
// routes for Secure.Protected into the device.
const (
	// tableBase + a 16-bit hash of the link ID is a link's first table
	// candidate ("WG" in the high bits, away from other sealift tables).
	tableBase = 0x57470000
	// rulePriority puts the link's rules before the main table's (32766):
	// a rule's priority is rulePriority plus the host bits of its source
	// prefix, so the more specific source wins whatever the order the
	// links came in (a VM's own link, from its /32, before a batch's
	// redirect tunnel, from the whole subnet, prepared earlier).
	rulePriority = 1200
)

// tableCandidate returns the n-th table number to try for link id.
func tableCandidate(id string, n int) int {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return tableBase + int((h+uint32(n))&0xffff)
}

// tableUnused reports whether host has no rule pointing at table and no
// route in it.
func tableUnused(host string, table int) (bool, error) {
	h, err := nlHandle(host)
	if err != nil {
		return false, err
	}
	defer h.Close()
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		rules, err := h.RuleList(fam)
		if err != nil {
			return false, fmt.Errorf("%s: list rules: %w", hostName(host), err)
		}
		for _, r := range rules {
			if r.Table == table {
				return false, nil
			}
		}
		rs, err := h.RouteListFiltered(fam, &netlink.Route{Table: table}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return false, fmt.Errorf("%s: list table %d: %w", hostName(host), table, err)
		}
		if len(rs) > 0 {
			return false, nil
		}
	}
	return true, nil
}

func ruleFor(src netip.Prefix, table int) *netlink.Rule {
	r := netlink.NewRule()
	s := ipNet(src)
	r.Src = &s
	r.Table = table
	r.Priority = rulePriority + src.Addr().BitLen() - src.Bits()
	r.Family = netlink.FAMILY_V4
	if src.Addr().Is6() {
		r.Family = netlink.FAMILY_V6
	}
	return r
}

// addRules adds "from <src> lookup table" for each source prefix.
func addRules(host string, table int, srcs []netip.Prefix) error {
	h, err := nlHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, s := range srcs {
		if err := h.RuleAdd(ruleFor(s, table)); err != nil {
			return fmt.Errorf("%s: rule from %s lookup %d: %w", hostName(host), s, table, err)
		}
	}
	return nil
}

// delRules removes what addRules added; absent rules are fine. A rule
// is matched by its source and table, whatever its priority: a link that
// an older sealift made (all its rules at rulePriority) and that is
// closed by this one leaves nothing behind.
func delRules(host string, table int, srcs []netip.Prefix) error {
	if table == 0 || len(srcs) == 0 {
		return nil
	}
	h, err := nlHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, s := range srcs {
		r := ruleFor(s, table)
		r.Priority = -1 // the kernel then matches any priority
		// One rule per call; a source's rules are at most two (a link
		// re-prepared across an upgrade), the bound only stops a loop.
		for range 4 {
			err := h.RuleDel(r)
			if errors.Is(err, unix.ENOENT) {
				break
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: delete rule from %s lookup %d: %w", hostName(host), s, table, err))
				break
			}
		}
	}
	return errors.Join(errs...)
}
