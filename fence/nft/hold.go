package nft

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/nflog"
	"github.com/sealift/sealift/internal/nsutil"
)

var _ fence.Holder = (*Fencer)(nil)

// Held packets (fence.Spec.Hold): the fence's rules copy each packet to
// the VM that they drop to an nfnetlink_log group (nft "log group N"),
// a reader of this Fencer keeps the copies, and Release sends them again
// from the host, by its routes, through a raw socket. The kernel drops
// every packet whatever the reader does.
const (
	// holdGroups are the log groups fences use: 0x5ea0..0x5eff, the
	// first free one (another process may use other groups).
	holdGroupFirst, holdGroupLast = 0x5ea0, 0x5eff
	// holdMaxPackets and holdMaxBytes bound what one fence holds; later
	// packets are dropped unheld.
	holdMaxPackets = 4096
	holdMaxBytes   = 16 << 20
	// holdMaxAge: Release sends no packet older than this (a peer's TCP
	// has retransmitted by then, and a late ping reply helps nobody).
	holdMaxAge = 2 * time.Second
)

// holder keeps the packets of one fence's log group.
type holder struct {
	group uint16
	r     *nflog.Reader

	mu      sync.Mutex
	pkts    []nflog.Packet
	bytes   int
	dropped int // over the bounds
}

func (h *holder) add(p nflog.Packet) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.pkts) >= holdMaxPackets || h.bytes+len(p.Data) > holdMaxBytes {
		h.dropped++
		return
	}
	h.pkts = append(h.pkts, p)
	h.bytes += len(p.Data)
}

// take stops the reader and returns what it held.
func (h *holder) take() ([]nflog.Packet, int) {
	_ = h.r.Close()
	h.mu.Lock()
	defer h.mu.Unlock()
	p, d := h.pkts, h.dropped
	h.pkts, h.bytes = nil, 0
	return p, d
}

// startHold binds a free log group on the host for vm and starts holding
// (before the rules that log to it exist, so none is missed). f.mu is
// held.
func (f *Fencer) startHold(vm string) (*holder, error) {
	used := map[uint16]bool{}
	for _, h := range f.holds {
		used[h.group] = true
	}
	var errs []error
	for g := uint16(holdGroupFirst); g <= holdGroupLast; g++ {
		if used[g] {
			continue
		}
		h := &holder{group: g}
		r, err := nflog.Listen(f.host, g, h.add)
		if err == nil {
			h.r = r
			return h, nil
		}
		errs = append(errs, err)
		if !errors.Is(err, unix.EBUSY) {
			break
		}
	}
	return nil, fmt.Errorf("nft: hold packets for VM %q on host %q: no free log group: %w", vm, f.host, errors.Join(errs...))
}

// Release sends the packets held for vm's fence (fence.Holder).
func (f *Fencer) Release(ctx context.Context, vm string) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	h := f.holds[vm]
	delete(f.holds, vm)
	f.mu.Unlock()
	if h == nil {
		fences, err := f.List(ctx)
		if err != nil {
			return 0, err
		}
		for _, fc := range fences {
			if fc.VM == vm {
				return 0, nil
			}
		}
		return 0, fmt.Errorf("nft: release %q on host %q: %w", vm, f.host, fence.ErrNotFenced)
	}
	pkts, over := h.take()
	sent, stale, err := reinject(f.host, pkts, time.Now().Add(-holdMaxAge))
	f.log.Info("held packets released", "host", f.host, "vm", vm, "sent", sent, "stale", stale, "over_limit", over, "err", err)
	return sent, err
}

// reinject sends pkts (IPv4 or IPv6 packets, headers included) from
// host through raw sockets, by its routes, skipping those read before
// notBefore. It returns how many it sent and skipped.
func reinject(host string, pkts []nflog.Packet, notBefore time.Time) (sent, stale int, err error) {
	if len(pkts) == 0 {
		return 0, 0, nil
	}
	var errs []error
	err = nsutil.Do(host, func() error {
		fds := map[int]int{}
		defer func() {
			for _, fd := range fds {
				unix.Close(fd)
			}
		}()
		for _, p := range pkts {
			if p.At.Before(notBefore) {
				stale++
				continue
			}
			dst, fam, ok := destination(p.Data)
			if !ok {
				continue
			}
			fd, ok := fds[fam]
			if !ok {
				// IPPROTO_RAW: the packet carries its own header (IPv4:
				// IP_HDRINCL is implied; IPv6 likewise since Linux 4.5).
				var err error
				if fd, err = unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW); err != nil {
					return fmt.Errorf("raw socket: %w", err)
				}
				fds[fam] = fd
			}
			var to unix.Sockaddr
			if fam == unix.AF_INET {
				to = &unix.SockaddrInet4{Addr: dst.As4()}
			} else {
				to = &unix.SockaddrInet6{Addr: dst.As16()}
			}
			fixChecksum(p.Data)
			if err := unix.Sendto(fd, p.Data, 0, to); err != nil {
				if len(errs) < 3 {
					errs = append(errs, fmt.Errorf("to %s: %w", dst, err))
				}
				continue
			}
			sent++
		}
		return nil
	})
	if err == nil && len(errs) > 0 {
		err = fmt.Errorf("%d of %d held packets not sent: %w", len(pkts)-stale-sent, len(pkts)-stale, errors.Join(errs...))
	}
	if err != nil {
		err = fmt.Errorf("nft: release on host %q: %w", host, err)
	}
	return sent, stale, err
}

// destination is the packet's destination address and socket family.
func destination(b []byte) (netip.Addr, int, bool) {
	if len(b) < 1 {
		return netip.Addr{}, 0, false
	}
	switch b[0] >> 4 {
	case 4:
		if len(b) >= 20 {
			return netip.AddrFrom4([4]byte(b[16:20])), unix.AF_INET, true
		}
	case 6:
		if len(b) >= 40 {
			return netip.AddrFrom16([16]byte(b[24:40])), unix.AF_INET6, true
		}
	}
	return netip.Addr{}, 0, false
}

// fixChecksum recomputes the TCP or UDP checksum of an IPv4 or IPv6
// packet in place. A logged copy of a packet whose checksum a local
// sender left to the NIC (CHECKSUM_PARTIAL, as on veth and tap devices)
// carries only the pseudo-header sum, and nfnetlink_log does not say
// which copies those are: every held TCP/UDP packet gets its checksum
// computed again (a correct one stays as it is). IPv4 fragments after
// the first, IPv6 packets with extension headers and IPv4 UDP without a
// checksum (0) are left alone.
func fixChecksum(b []byte) {
	var proto byte
	var l4 []byte
	var pseudo []byte
	switch {
	case len(b) >= 20 && b[0]>>4 == 4:
		ihl := int(b[0]&0x0f) * 4
		total := int(binary.BigEndian.Uint16(b[2:4]))
		if ihl < 20 || total > len(b) || total < ihl || binary.BigEndian.Uint16(b[6:8])&0x3fff != 0 {
			return // malformed, or a fragment
		}
		proto, l4 = b[9], b[ihl:total]
		pseudo = make([]byte, 12)
		copy(pseudo, b[12:20])
		pseudo[9] = proto
		binary.BigEndian.PutUint16(pseudo[10:], uint16(len(l4)))
	case len(b) >= 40 && b[0]>>4 == 6:
		plen := int(binary.BigEndian.Uint16(b[4:6]))
		if 40+plen > len(b) {
			return
		}
		proto, l4 = b[6], b[40:40+plen]
		pseudo = make([]byte, 40)
		copy(pseudo, b[8:40])
		binary.BigEndian.PutUint32(pseudo[32:], uint32(len(l4)))
		pseudo[39] = proto
	default:
		return
	}
	var off int
	switch proto {
	case unix.IPPROTO_TCP:
		off = 16
	case unix.IPPROTO_UDP:
		off = 6
		if b[0]>>4 == 4 && len(l4) >= 8 && binary.BigEndian.Uint16(l4[6:8]) == 0 {
			return // IPv4 UDP without a checksum
		}
	default:
		return
	}
	if len(l4) < off+2 {
		return
	}
	l4[off], l4[off+1] = 0, 0
	sum := onesSum(onesSum(0, pseudo), l4)
	c := ^uint16(sum)
	if c == 0 && proto == unix.IPPROTO_UDP {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(l4[off:], c)
}

// onesSum adds b to sum in ones' complement, 16 bits at a time.
func onesSum(sum uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return sum
}
