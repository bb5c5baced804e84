package arp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// The target of a migration is ready to deliver to the VM before the VM
// resumes when two things hold on its LAN side:
//
//   - the host knows the VM's MAC (a neighbour entry), so what reaches it
//     for the VM during the switchover is put into the VM's port at once
//     and waits in the port's queue for the VM to resume, instead of
//     waiting for an ARP answer that a paused, then slowly warming guest
//     gives late (under TCG one such round trip costs 30-50 ms);
//   - the VM knows the host's MAC for its gateway: the VM resumes with the
//     source's gateway MAC cached, and without an ARP request from the
//     target (which the first point avoids) it would send its answers
//     to a MAC that is not there until its entry expires. The target
//     announces its own addresses on that LAN by gratuitous ARP.
//
// Links (tunnel/wireguard) plan both with PlanLAN at the end where the
// VM lives, apply them with SetNeighbours and Announce, and remove the
// neighbour entries with DelNeighbours.

// Neighbour is a neighbour entry: Addr is at MAC on Dev.
type Neighbour struct {
	Dev  string     `json:"dev"`
	Addr netip.Addr `json:"addr"`
	MAC  string     `json:"mac"`
}

// Own is an address of the host on its LAN interface Dev (the gateway of
// VMs behind it).
type Own struct {
	Dev  string     `json:"dev"`
	Addr netip.Addr `json:"addr"`
}

// PlanLAN finds, for each single-address prefix of addrs, the interface
// host reaches it on-link by (not skip, the link's own device, and not
// loopback), and returns a neighbour entry for it at mac there, and the
// host's own addresses of its family on that interface whose subnet holds
// it (announced by gratuitous ARP or unsolicited neighbour advertisement).
// Addresses reached through a gateway, or not at all, are skipped: the
// VM does not live on this host's LAN.
func PlanLAN(host, skip string, addrs []netip.Prefix, mac net.HardwareAddr) (neigh []Neighbour, own []Own, err error) {
	h, err := nsutil.Handle(host, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	seen := map[Own]bool{}
	for _, p := range addrs {
		if !p.IsSingleIP() {
			continue
		}
		a := p.Addr()
		rs, err := h.RouteGet(net.IP(a.AsSlice()))
		if err != nil || len(rs) == 0 || rs[0].Gw != nil {
			continue
		}
		l, err := h.LinkByIndex(rs[0].LinkIndex)
		if err != nil {
			return nil, nil, fmt.Errorf("arp: host %q: interface %d towards %s: %w", host, rs[0].LinkIndex, a, err)
		}
		dev := l.Attrs().Name
		if dev == skip || l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		neigh = append(neigh, Neighbour{Dev: dev, Addr: a, MAC: mac.String()})
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		list, err := h.AddrList(l, fam)
		if err != nil {
			return nil, nil, fmt.Errorf("arp: host %q: addresses of %s: %w", host, dev, err)
		}
		for _, ad := range list {
			ip, ok := netip.AddrFromSlice(ad.IP)
			if !ok {
				continue
			}
			ones, _ := ad.Mask.Size()
			o := Own{Dev: dev, Addr: ip.Unmap()}
			if netip.PrefixFrom(o.Addr, ones).Contains(a) && o.Addr != a && !seen[o] {
				seen[o] = true
				own = append(own, o)
			}
		}
	}
	return neigh, own, nil
}

// SetNeighbours installs ns at host in state STALE: the kernel sends to
// the MAC at once and confirms it with a unicast probe a few seconds
// later, as for any entry it learnt itself, so nothing permanent is left.
// An entry the operator made permanent is left alone.
func SetNeighbours(host string, ns []Neighbour) error {
	if len(ns) == 0 {
		return nil
	}
	h, err := nsutil.Handle(host, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, n := range ns {
		nl, err := toNetlink(h, n)
		if err != nil {
			return fmt.Errorf("arp: host %q: %w", host, err)
		}
		if cur := find(h, nl); cur != nil && cur.State&netlink.NUD_PERMANENT != 0 {
			continue
		}
		nl.State = netlink.NUD_STALE
		if err := h.NeighSet(nl); err != nil {
			return fmt.Errorf("arp: host %q: neighbour %s lladdr %s dev %s: %w", host, n.Addr, n.MAC, n.Dev, err)
		}
	}
	return nil
}

// DelNeighbours removes the entries of ns that still hold their MAC and
// are not permanent; absent ones (and a gone device) are fine.
func DelNeighbours(host string, ns []Neighbour) error {
	if len(ns) == 0 {
		return nil
	}
	h, err := nsutil.Handle(host, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, n := range ns {
		nl, err := toNetlink(h, n)
		if err != nil {
			continue // the device is gone, and its entries with it
		}
		cur := find(h, nl)
		if cur == nil || cur.State&netlink.NUD_PERMANENT != 0 || cur.HardwareAddr.String() != n.MAC {
			continue
		}
		if err := h.NeighDel(nl); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("arp: host %q: delete neighbour %s dev %s: %w", host, n.Addr, n.Dev, err))
		}
	}
	return errors.Join(errs...)
}

func toNetlink(h *netlink.Handle, n Neighbour) (*netlink.Neigh, error) {
	l, err := h.LinkByName(n.Dev)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", n.Dev, err)
	}
	mac, err := net.ParseMAC(n.MAC)
	if err != nil {
		return nil, fmt.Errorf("neighbour %s: MAC %q: %w", n.Addr, n.MAC, err)
	}
	fam := netlink.FAMILY_V4
	if n.Addr.Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: fam, IP: net.IP(n.Addr.AsSlice()), HardwareAddr: mac}, nil
}

// find returns host's neighbour entry for nl's address on its device.
func find(h *netlink.Handle, nl *netlink.Neigh) *netlink.Neigh {
	list, err := h.NeighList(nl.LinkIndex, nl.Family)
	if err != nil {
		return nil
	}
	for i := range list {
		if list[i].IP.Equal(nl.IP) && list[i].Flags&netlink.NTF_PROXY == 0 {
			return &list[i]
		}
	}
	return nil
}
