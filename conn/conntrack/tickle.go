package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// tickle sends one out-of-window ACK to the sender of every TCP
// direction, from the host's namespace with mark (so the reset table
// keeps it out of conntrack). Each endpoint answers with a duplicate ACK
// carrying its exact sequence numbers, which the reset rule rejects with a
// RST the endpoint accepts.
func tickle(ns netns.NsHandle, p *plan, mark uint32) error {
	return nsutil.DoHandle(ns, func() error {
		var errs []error
		for _, s := range []struct {
			dirs []dir
			fam  int
		}{{p.tcp4, unix.AF_INET}, {p.tcp6, unix.AF_INET6}} {
			if len(s.dirs) == 0 {
				continue
			}
			if err := sendTickles(s.fam, s.dirs, mark); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
}

func sendTickles(fam int, dirs []dir, mark uint32) error {
	fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
	if err != nil {
		return fmt.Errorf("conntrack: tickle socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("conntrack: tickle mark: %w", err)
	}
	var failed int
	var last error
	buf := make([]byte, 0, 60)
	for _, d := range dirs {
		t := d.tickle
		buf = ackPacket(buf[:0], t)
		var sa unix.Sockaddr
		if fam == unix.AF_INET {
			sa = &unix.SockaddrInet4{Addr: t.dst.As4()}
		} else {
			sa = &unix.SockaddrInet6{Addr: t.dst.As16()}
		}
		for {
			// Never block: a destination that does not resolve (ARP)
			// would fill the socket buffer. Unsent tickles are retried.
			err = unix.Sendto(fd, buf, unix.MSG_DONTWAIT, sa)
			if !errors.Is(err, unix.EINTR) {
				break
			}
		}
		if err != nil {
			failed++
			last = err
		}
	}
	if failed > 0 {
		return fmt.Errorf("conntrack: %d of %d tickles not sent: %w", failed, len(dirs), last)
	}
	return nil
}

// ackPacket appends an IP header and a bare TCP ACK with sequence and
// acknowledgment numbers 0 (out of window for any live connection but
// with probability window/2^32).
func ackPacket(b []byte, t tuple) []byte {
	var tcp [20]byte
	binary.BigEndian.PutUint16(tcp[0:], t.sport)
	binary.BigEndian.PutUint16(tcp[2:], t.dport)
	tcp[12] = 5 << 4 // data offset
	tcp[13] = 0x10   // ACK
	binary.BigEndian.PutUint16(tcp[14:], 1024)
	src, dst := t.src.AsSlice(), t.dst.AsSlice()
	// Checksum over the pseudo-header and the segment.
	var sum uint32
	add := func(p []byte) {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(p[i:]))
		}
	}
	add(src)
	add(dst)
	sum += unix.IPPROTO_TCP + uint32(len(tcp))
	add(tcp[:])
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(tcp[16:], ^uint16(sum))

	if t.src.Is4() {
		var ip [20]byte
		ip[0] = 0x45
		binary.BigEndian.PutUint16(ip[2:], 40)
		ip[6] = 0x40 // DF
		ip[8] = 64
		ip[9] = unix.IPPROTO_TCP
		copy(ip[12:], src)
		copy(ip[16:], dst)
		var s uint32
		for i := 0; i < 20; i += 2 {
			s += uint32(binary.BigEndian.Uint16(ip[i:]))
		}
		for s>>16 != 0 {
			s = s&0xffff + s>>16
		}
		binary.BigEndian.PutUint16(ip[10:], ^uint16(s))
		b = append(b, ip[:]...)
	} else {
		var ip [40]byte
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], 20)
		ip[6] = unix.IPPROTO_TCP
		ip[7] = 64
		copy(ip[8:], src)
		copy(ip[24:], dst)
		b = append(b, ip[:]...)
	}
	return append(b, tcp[:]...)
}
