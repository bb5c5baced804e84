package lab

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// AddrCapture counts the frames an interface sends whose IPv4 or IPv6
// destination address is in one of a set of prefixes: "what left this
// host addressed to them", whatever the protocol.
type AddrCapture struct {
	fd    int
	dst   []netip.Prefix
	stop  atomic.Bool
	done  chan struct{}
	once  sync.Once
	count atomic.Int64
	seen  atomic.Int64 // every outgoing frame, to show the capture works
}

// StartAddrCapture opens an AF_PACKET socket in ns bound to ifname and
// counts, until Stop, the outgoing frames (PACKET_OUTGOING) addressed to
// one of dst.
func StartAddrCapture(ns, ifname string, dst ...netip.Prefix) (*AddrCapture, error) {
	fd := -1
	err := nsutil.Do(ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("addr capture: %s: interface %q: %w", ns, ifname, err)
		}
		s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("addr capture: socket: %w", err)
		}
		_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20)
		tv := unix.NsecToTimeval((20 * time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			unix.Close(s)
			return fmt.Errorf("addr capture: timeout: %w", err)
		}
		if err := unix.Bind(s, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifi.Index}); err != nil {
			unix.Close(s)
			return fmt.Errorf("addr capture: bind %s/%s: %w", ns, ifname, err)
		}
		fd = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	c := &AddrCapture{fd: fd, dst: append([]netip.Prefix(nil), dst...), done: make(chan struct{})}
	go c.run()
	return c, nil
}

func (c *AddrCapture) run() {
	defer close(c.done)
	defer unix.Close(c.fd)
	buf := make([]byte, 65536)
	for {
		flags := 0
		if c.stop.Load() {
			flags = unix.MSG_DONTWAIT // drain what is queued, then end
		}
		n, from, err := unix.Recvfrom(c.fd, buf, flags)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			if c.stop.Load() && flags != 0 {
				return
			}
			continue
		case err != nil:
			return
		}
		ll, _ := from.(*unix.SockaddrLinklayer)
		if ll == nil || ll.Pkttype != unix.PACKET_OUTGOING {
			continue
		}
		c.seen.Add(1)
		if dst, ok := frameDst(buf[:min(n, len(buf))], ll); ok {
			for _, p := range c.dst {
				if p.Contains(dst) {
					c.count.Add(1)
					break
				}
			}
		}
	}
}

// Count returns the outgoing frames addressed to the prefixes so far.
func (c *AddrCapture) Count() int { return int(c.count.Load()) }

// Stop reads what is queued, closes the socket and returns the number of
// outgoing frames addressed to the prefixes, and of all outgoing frames.
func (c *AddrCapture) Stop() (addressed, outgoing int) {
	c.once.Do(func() {
		c.stop.Store(true)
		<-c.done
	})
	return int(c.count.Load()), int(c.seen.Load())
}

// frameDst returns the destination address of an IPv4 or IPv6 frame.
func frameDst(f []byte, ll *unix.SockaddrLinklayer) (netip.Addr, bool) {
	var etype uint16
	var ip []byte
	if ll.Hatype == unix.ARPHRD_ETHER || ll.Hatype == unix.ARPHRD_LOOPBACK {
		if len(f) < 14 {
			return netip.Addr{}, false
		}
		etype, ip = binary.BigEndian.Uint16(f[12:14]), f[14:]
		for (etype == 0x8100 || etype == 0x88a8) && len(ip) >= 4 {
			etype, ip = binary.BigEndian.Uint16(ip[2:4]), ip[4:]
		}
	} else {
		etype, ip = ntohs(ll.Protocol), f
	}
	switch {
	case etype == unix.ETH_P_IP && len(ip) >= 20:
		return netip.AddrFrom4([4]byte(ip[16:20])), true
	case etype == unix.ETH_P_IPV6 && len(ip) >= 40:
		return netip.AddrFrom16([16]byte(ip[24:40])), true
	}
	return netip.Addr{}, false
}
