// Package arp sends gratuitous ARP announcements (IPv4) and unsolicited
// neighbour advertisements (IPv6) from a host's LAN interface: the
// secure-link backends use it so neighbours with a stale entry switch to
// a proxy's answer at once.
package arp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// Announce sends a gratuitous ARP request for ip (IPv4), or an unsolicited
// neighbour advertisement with the Override flag (IPv6), from the LAN
// interface ifindex of host, so neighbours with a stale entry (the VM's
// old MAC at the secure end, the peers' MACs inside the moved VM) switch
// to this host's proxy at once instead of after their entry expires.
func Announce(host string, ifindex int, ip netip.Addr) error {
	return nsutil.Do(host, func() error {
		ifi, err := net.InterfaceByIndex(ifindex)
		if err != nil {
			return fmt.Errorf("arp: host %q: interface %d: %w", host, ifindex, err)
		}
		return announceOn(host, []*net.Interface{ifi}, []netip.Addr{ip})
	})
}

// announceOn announces ips[i] from ifis[i] (in the calling thread's
// namespace) through one packet socket: a gratuitous ARP for an IPv4
// address, an unsolicited neighbour advertisement for an IPv6 one;
// interfaces that are not Ethernet are skipped. It tries every pair.
func announceOn(host string, ifis []*net.Interface, ips []netip.Addr) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("arp: host %q: packet socket: %w", host, err)
	}
	// Closing a packet socket waits for an RCU grace period (~10 ms,
	// packet_release -> synchronize_net): the frames are sent by then,
	// so nobody needs to wait for it.
	defer func() { go unix.Close(fd) }()
	var errs []error
	for i, ifi := range ifis {
		if len(ifi.HardwareAddr) != 6 {
			continue // not Ethernet: nothing to announce
		}
		ip := ips[i].Unmap()
		var f []byte
		proto, what := uint16(unix.ETH_P_ARP), "gratuitous ARP"
		if ip.Is6() {
			f = naFrame(ifi.HardwareAddr, naSource(ifi, ip), ip, ownRouter(ifi, ip))
			proto, what = unix.ETH_P_IPV6, "unsolicited neighbour advertisement"
		} else {
			f = garpFrame(ifi.HardwareAddr, ip)
		}
		to := &unix.SockaddrLinklayer{Ifindex: ifi.Index, Protocol: htons(proto), Halen: 6}
		copy(to.Addr[:], f[0:6])
		if err := unix.Sendto(fd, f, 0, to); err != nil {
			errs = append(errs, fmt.Errorf("arp: host %q: %s for %s on %s: %w", host, what, ip, ifi.Name, err))
		}
	}
	return errors.Join(errs...)
}

// AnnounceAll announces each address of addrs from its interface of host
// as Announce does (gratuitous ARP for IPv4, unsolicited neighbour
// advertisement for IPv6), with one namespace switch and one socket.
// Invalid addresses are skipped. It tries every address and returns the
// errors joined.
func AnnounceAll(host string, addrs []Own) error {
	if !slices.ContainsFunc(addrs, func(o Own) bool { return o.Addr.IsValid() }) {
		return nil
	}
	return nsutil.Do(host, func() error {
		var ifis []*net.Interface
		var ips []netip.Addr
		var errs []error
		for _, o := range addrs {
			if !o.Addr.IsValid() {
				continue
			}
			ifi, err := net.InterfaceByName(o.Dev)
			if err != nil {
				errs = append(errs, fmt.Errorf("arp: host %q: interface %s: %w", host, o.Dev, err))
				continue
			}
			ifis, ips = append(ifis, ifi), append(ips, o.Addr)
		}
		return errors.Join(append(errs, announceOn(host, ifis, ips))...)
	})
}

// garpFrame is a broadcast ARP request with sender = target = ip (IPv4).
func garpFrame(mac net.HardwareAddr, ip netip.Addr) []byte {
	f := make([]byte, 14+28)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], mac)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_ARP)
	a := f[14:]
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:14], mac)
	ip4 := ip.As4()
	copy(a[14:18], ip4[:])
	copy(a[24:28], ip4[:])
	return f
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
