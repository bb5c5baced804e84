package wireguard

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/arp"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// proxyEntry is a proxy neighbour entry (`ip neigh add proxy Addr dev
// Dev`): the host answers ARP/NDP for Addr on Dev.
type proxyEntry struct {
	Dev  string     `json:"dev"`
	Addr netip.Addr `json:"addr"`
}

// sysctlSave is a /proc/sys value the link changed and its old value.
type sysctlSave struct {
	Key string `json:"key"` // path under /proc/sys, e.g. net/ipv4/neigh/br0/proxy_delay
	Old string `json:"old"`
	New string `json:"new"`
}

// proxyPlan is what makes one end answer for the other end's protected
// addresses on its LAN side.
type proxyPlan struct {
	entries []proxyEntry
	sysctls []sysctlSave // Old is filled in when applied
}

// planProxy finds, for each prefix, the interface host reaches it on-link
// through (the LAN side; computed before the link's routes exist) and
// plans proxy neighbour entries for host prefixes, proxy_arp for wider
// IPv4 prefixes, and proxy_delay 0 so answers are immediate. Prefixes
// host reaches through a gateway need no proxy.
func planProxy(host, linkDev string, prefixes []netip.Prefix) (proxyPlan, error) {
	var plan proxyPlan
	h, err := nlHandle(host)
	if err != nil {
		return plan, err
	}
	defer h.Close()
	seen := map[string]bool{}
	setting := func(key, val string) {
		if !seen[key] {
			seen[key] = true
			plan.sysctls = append(plan.sysctls, sysctlSave{Key: key, New: val})
		}
	}
	for _, p := range prefixes {
		rs, err := h.RouteGet(net.IP(probeAddr(p).AsSlice())) // as reachedOnLink asks
		if err != nil || len(rs) == 0 {
			continue // unreachable from here: nobody on a LAN asks for it
		}
		if rs[0].Gw != nil {
			continue
		}
		l, err := h.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			return plan, fmt.Errorf("%s: interface %d towards %s: %w", hostName(host), rs[0].LinkIndex, p, err)
		}
		dev := l.Attrs().Name
		if dev == linkDev || dev == "lo" {
			continue
		}
		fam := "ipv4"
		if p.Addr().Is6() {
			fam = "ipv6"
		}
		setting("net/"+fam+"/neigh/"+dev+"/proxy_delay", "0")
		switch {
		case p.IsSingleIP():
			plan.entries = append(plan.entries, proxyEntry{Dev: dev, Addr: p.Addr()})
			if fam == "ipv6" {
				setting("net/ipv6/conf/"+dev+"/proxy_ndp", "1")
			}
		case fam == "ipv4":
			setting("net/ipv4/conf/"+dev+"/proxy_arp", "1")
		default:
			return plan, fmt.Errorf("proxy NDP for %s needs /128 prefixes", p)
		}
	}
	return plan, nil
}

// forwardingReady checks, for a link that proxies others at host, that
// host forwards what it would answer for: the kernel answers proxy ARP
// only on an interface that forwards IPv4 (its own forwarding setting),
// and proxy NDP only on an IPv6-forwarding one, IPv6 forwarding being
// the host's (all) setting; without them the link's hosts would be
// silently unreachable. Prefixes the host does not reach on-link need
// no answer. The link sets proxy_arp and proxy_ndp itself, never
// forwarding.
func forwardingReady(host string, others []netip.Prefix) error {
	for _, p := range others {
		dev, err := lanDev(host, p)
		if err != nil {
			return err
		}
		if dev == "" {
			continue
		}
		key, fam, proto := "net/ipv4/conf/"+dev+"/forwarding", "IPv4", "ARP"
		if p.Addr().Is6() {
			key, fam, proto = "net/ipv6/conf/all/forwarding", "IPv6", "NDP"
		}
		v, err := readSysctl(host, key)
		if err != nil {
			return err
		}
		if v != "1" {
			return fmt.Errorf("%w: ProxyARP for %s hosts (%s, on %s) needs %s=1 at %s (it is %s): the kernel answers proxy %s only when forwarding",
				tunnel.ErrInvalid, fam, p, dev, strings.ReplaceAll(key, "/", "."), hostName(host), v, proto)
		}
	}
	return nil
}

// reachedOnLink reports whether host reaches prefix p on-link: where
// planProxy would have to answer for it.
func reachedOnLink(host string, p netip.Prefix) (bool, error) {
	dev, err := lanDev(host, p)
	return dev != "", err
}

// lanDev is the interface host reaches prefix p on-link through (its
// route to probeAddr(p) has no gateway, and is not loopback), or "".
func lanDev(host string, p netip.Prefix) (string, error) {
	h, err := nlHandle(host)
	if err != nil {
		return "", err
	}
	defer h.Close()
	rs, err := h.RouteGet(net.IP(probeAddr(p).AsSlice()))
	if err != nil || len(rs) == 0 || rs[0].Gw != nil {
		return "", nil // unreachable, or behind a gateway: no proxy (as planProxy)
	}
	l, err := h.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return "", fmt.Errorf("%s: interface %d towards %s: %w", hostName(host), rs[0].LinkIndex, p, err)
	}
	if name := l.Attrs().Name; name != "lo" {
		return name, nil
	}
	return "", nil
}

// probeAddr is an address of p to ask the routing table about: not its
// first one (on a forwarding host, the subnet-router anycast address of
// an on-link prefix, routed to lo), nor a low one a host likely has (its
// gateway's ::1), but one from the end of p.
func probeAddr(p netip.Prefix) netip.Addr {
	p = p.Masked()
	if p.IsSingleIP() {
		return p.Addr()
	}
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	b[len(b)-1] &^= 1 // not the all-ones one (IPv4's broadcast)
	a, _ := netip.AddrFromSlice(b)
	return a
}

func neighFamily(a netip.Addr) int {
	if a.Is4() {
		return netlink.FAMILY_V4
	}
	return netlink.FAMILY_V6
}

// addProxy installs proxy neighbour entries and returns those that
// already existed (installed by someone else).
func addProxy(host string, entries []proxyEntry) (existed []proxyEntry, err error) {
	if len(entries) == 0 {
		return nil, nil
	}
	h, err := nlHandle(host)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	for _, e := range entries {
		l, err := h.LinkByName(e.Dev)
		if err != nil {
			return existed, fmt.Errorf("%s: %s: %w", hostName(host), e.Dev, err)
		}
		n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: neighFamily(e.Addr), Flags: netlink.NTF_PROXY,
			IP: net.IP(e.Addr.AsSlice())}
		if err := h.NeighAdd(n); errors.Is(err, unix.EEXIST) {
			existed = append(existed, e)
		} else if err != nil {
			return existed, fmt.Errorf("%s: proxy neighbour %s dev %s: %w", hostName(host), e.Addr, e.Dev, err)
		}
	}
	return existed, nil
}

// delProxy removes proxy neighbour entries; absent ones are fine.
func delProxy(host string, entries []proxyEntry) error {
	if len(entries) == 0 {
		return nil
	}
	h, err := nlHandle(host)
	if err != nil {
		if hostGone(err) {
			return nil
		}
		return err
	}
	defer h.Close()
	var errs []error
	for _, e := range entries {
		l, err := h.LinkByName(e.Dev)
		if err != nil {
			continue // the LAN device is gone and its entries with it
		}
		n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: neighFamily(e.Addr), Flags: netlink.NTF_PROXY,
			IP: net.IP(e.Addr.AsSlice())}
		if err := h.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("%s: delete proxy neighbour %s dev %s: %w", hostName(host), e.Addr, e.Dev, err))
		}
	}
	return errors.Join(errs...)
}

// proxyEntries lists host's proxy neighbour entries (both families).
func proxyEntries(host string) ([]proxyEntry, error) {
	h, err := nlHandle(host)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	var out []proxyEntry
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := h.NeighProxyList(0, fam)
		if err != nil {
			return nil, fmt.Errorf("%s: list proxy neighbours: %w", hostName(host), err)
		}
		for _, n := range ns {
			a, _ := netip.AddrFromSlice(n.IP)
			name := fmt.Sprint(n.LinkIndex)
			if l, err := h.LinkByIndex(n.LinkIndex); err == nil {
				name = l.Attrs().Name
			}
			out = append(out, proxyEntry{Dev: name, Addr: a.Unmap()})
		}
	}
	return out, nil
}

// readSysctl reads /proc/sys/<key> inside host.
func readSysctl(host, key string) (string, error) {
	var v string
	err := nsutil.Do(host, func() error {
		b, err := os.ReadFile("/proc/sys/" + key)
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("%s: read %s: %w", hostName(host), key, err)
	}
	return v, nil
}

// writeSysctl writes /proc/sys/<key> inside host (the per-netns /proc/sys/net
// is resolved by the writing thread).
func writeSysctl(host, key, val string) error {
	err := nsutil.Do(host, func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(val), 0o644)
	})
	if err != nil {
		return fmt.Errorf("%s: write %s=%s: %w", hostName(host), key, val, err)
	}
	return nil
}

// announceProxies announces every proxy entry of the link's ends
// (gratuitous ARP for IPv4, unsolicited neighbour advertisement for
// IPv6), so neighbours that cached an address's old owner (the
// VM's MAC at the secure end, a peer's MAC inside the moved VM) switch to
// the proxy now instead of when their entry expires; and for the remote
// end's own LAN addresses (End.MAC), so the moved VM's cached gateway MAC
// switches too.
func announceProxies(ends []endState) error {
	var errs []error
	for _, st := range ends {
		all := make([]arp.Own, 0, len(st.Proxy)+len(st.Own))
		for _, e := range st.Proxy {
			all = append(all, arp.Own{Dev: e.Dev, Addr: e.Addr})
		}
		errs = append(errs, arp.AnnounceAll(st.Host, append(all, st.Own...)))
	}
	return errors.Join(errs...)
}
