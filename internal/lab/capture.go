package lab

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// CaptureStats counts what a Capture saw on its interface.
type CaptureStats struct {
	// Frames is every frame seen, both directions.
	Frames int
	// Outgoing counts frames the interface sent (PACKET_OUTGOING).
	Outgoing int
	// ByProto counts frames by IPv4 protocol / IPv6 next header
	// (1 icmp, 6 tcp, 17 udp, 50 esp, 58 icmpv6).
	ByProto map[uint8]int
	// UDPPorts counts UDP frames by destination and by source port (a frame
	// whose ports are equal counts once).
	UDPPorts map[uint16]int
	// Marker counts frames whose bytes contain the marker in clear.
	Marker int
	// MarkerOutgoing counts the Marker frames that were PACKET_OUTGOING.
	MarkerOutgoing int
	// Dropped is what the kernel dropped because the socket's queue was
	// full (PACKET_STATISTICS); tests that count should require 0.
	Dropped int
	// With a Classifier (CaptureOptions.Classify): Watched counts frames
	// with a watched address in any IP header (plaintext by address);
	// ByKind counts frames by Classifier kind; Samples describes the
	// first frames that were watched or unknown (at most 20).
	Watched int
	// Watched6: the Watched frames whose watched address is IPv6.
	Watched6 int
	ByKind   map[string]int
	Samples  []string
}

func (s CaptureStats) clone() CaptureStats {
	c := s
	c.ByProto = make(map[uint8]int, len(s.ByProto))
	for k, v := range s.ByProto {
		c.ByProto[k] = v
	}
	c.UDPPorts = make(map[uint16]int, len(s.UDPPorts))
	for k, v := range s.UDPPorts {
		c.UDPPorts[k] = v
	}
	c.ByKind = make(map[string]int, len(s.ByKind))
	for k, v := range s.ByKind {
		c.ByKind[k] = v
	}
	c.Samples = append([]string(nil), s.Samples...)
	return c
}

// Sub returns the counts of s that came after the snapshot o.
func (s CaptureStats) Sub(o CaptureStats) CaptureStats {
	d := s.clone()
	d.Frames -= o.Frames
	d.Outgoing -= o.Outgoing
	d.Marker -= o.Marker
	d.MarkerOutgoing -= o.MarkerOutgoing
	d.Dropped -= o.Dropped
	d.Watched -= o.Watched
	d.Watched6 -= o.Watched6
	for k, v := range o.ByProto {
		d.ByProto[k] -= v
	}
	for k, v := range o.UDPPorts {
		d.UDPPorts[k] -= v
	}
	for k, v := range o.ByKind {
		d.ByKind[k] -= v
	}
	d.Samples = d.Samples[min(len(o.Samples), len(d.Samples)):]
	return d
}

// CaptureOptions configure StartCaptureWith.
type CaptureOptions struct {
	// Interface to read; "" reads every interface of the namespace.
	Interface string
	// IngressOnly counts only frames entering the namespace (not
	// PACKET_OUTGOING): with every interface read, a packet routed through
	// the namespace counts once, where it entered.
	IngressOnly bool
	// Exclude names interfaces whose frames the kernel filters out before
	// the capture reads them (e.g. a busy uplink nobody asked about).
	Exclude []string
	// Marker, if set, is counted where it appears in a frame's bytes.
	Marker []byte
	// Classify, if set, sorts every counted frame (Watched, ByKind).
	Classify *Classifier
	// Times keeps the arrival time (kernel timestamp) of every counted
	// frame, by interface, for FirstAfter.
	Times bool
}

// frameTime is one counted frame's arrival, for FirstAfter.
type frameTime struct {
	at       time.Time
	ifindex  int
	outgoing bool
	etype    uint16
}

// Capture reads every frame of one interface (or of a namespace)
// through an AF_PACKET socket.
type Capture struct {
	fd    int
	wake  int // eventfd: Snapshot and Stop ask the reader to drain
	ns    string
	opts  CaptureOptions
	times []frameTime

	mu         sync.Mutex
	stats      CaptureStats
	reqs       []chan CaptureStats
	stop       bool
	wakeClosed bool // wake is closed (after Stop)

	done     chan struct{}
	stopOnce sync.Once
	final    CaptureStats
}

// StartCapture opens an AF_PACKET socket in ns (created on a thread
// switched into ns, so it belongs to that namespace), binds it to ifname
// and counts frames in a goroutine until Stop. marker may be nil.
func StartCapture(ns, ifname string, marker []byte) (*Capture, error) {
	return StartCaptureWith(ns, CaptureOptions{Interface: ifname, Marker: marker})
}

// StartCaptureWith starts a capture in ns as o says.
func StartCaptureWith(ns string, o CaptureOptions) (*Capture, error) {
	fd := -1
	ifname := o.Interface
	err := nsutil.Do(ns, func() error {
		index := 0 // every interface
		if ifname != "" {
			ifi, err := net.InterfaceByName(ifname)
			if err != nil {
				return fmt.Errorf("capture: %s: interface %q: %w", ns, ifname, err)
			}
			index = ifi.Index
		}
		// Protocol 0: receive nothing until bound.
		s, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("capture: socket: %w", err)
		}
		_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 32<<20)
		_ = unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
		if err := excludeFilter(s, o.Exclude); err != nil {
			unix.Close(s)
			return fmt.Errorf("capture: %s: %w", ns, err)
		}
		sa := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: index}
		if err := unix.Bind(s, sa); err != nil {
			unix.Close(s)
			return fmt.Errorf("capture: bind %s/%q: %w", ns, ifname, err)
		}
		fd = s
		return nil
	})
	if err != nil {
		return nil, err
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("capture: eventfd: %w", err)
	}
	c := &Capture{
		fd: fd, wake: wake, ns: ns, opts: o,
		stats: CaptureStats{ByProto: map[uint8]int{}, UDPPorts: map[uint16]int{}, ByKind: map[string]int{}},
		done:  make(chan struct{}),
	}
	go c.run()
	return c, nil
}

// Snapshot returns the counts so far, after reading every frame the
// kernel had queued when it was called.
func (c *Capture) Snapshot() CaptureStats {
	ch := make(chan CaptureStats, 1)
	c.mu.Lock()
	if c.stop {
		c.mu.Unlock()
		<-c.done
		return c.final.clone()
	}
	c.reqs = append(c.reqs, ch)
	c.poke()
	c.mu.Unlock()
	select {
	case s := <-ch:
		return s
	case <-c.done:
		return c.final.clone()
	}
}

// Stop reads the frames still queued, closes the socket and returns the
// final counts. It is idempotent.
func (c *Capture) Stop() CaptureStats {
	c.stopOnce.Do(func() {
		c.mu.Lock()
		c.stop = true
		c.poke()
		c.mu.Unlock()
		<-c.done
		c.mu.Lock()
		c.wakeClosed = true
		unix.Close(c.wake)
		c.mu.Unlock()
	})
	return c.final.clone()
}

// poke wakes the reader; the caller holds c.mu.
func (c *Capture) poke() {
	if c.wakeClosed {
		return
	}
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, _ = unix.Write(c.wake, one[:])
}

func (c *Capture) run() {
	defer close(c.done)
	defer unix.Close(c.fd)
	buf := make([]byte, 256<<10)
	fds := []unix.PollFd{{Fd: int32(c.fd), Events: unix.POLLIN}, {Fd: int32(c.wake), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err != nil && !errors.Is(err, unix.EINTR) {
			break
		}
		c.drain(buf)
		if fds[1].Revents == 0 {
			continue
		}
		var v [8]byte
		_, _ = unix.Read(c.wake, v[:])
		c.mu.Lock()
		c.stats.Dropped += c.dropped()
		s := c.stats.clone()
		reqs, stop := c.reqs, c.stop
		c.reqs = nil
		c.mu.Unlock()
		for _, ch := range reqs {
			ch <- s
		}
		if stop {
			c.final = s
			return
		}
	}
	c.mu.Lock()
	c.final = c.stats.clone()
	for _, ch := range c.reqs {
		ch <- c.final.clone()
	}
	c.reqs = nil
	c.mu.Unlock()
}

// drain reads until the queue is empty (bounded, so a flood cannot keep
// a Snapshot waiting forever).
func (c *Capture) drain(buf []byte) {
	oob := make([]byte, 64)
	for i := 0; i < 1<<20; i++ {
		n, oobn, _, from, err := unix.Recvmsg(c.fd, buf, oob, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return
		}
		ll, _ := from.(*unix.SockaddrLinklayer)
		at := KernelTime(oob[:oobn])
		if at.IsZero() {
			at = time.Now()
		}
		c.count(buf[:min(n, len(buf))], ll, at)
	}
}

// KernelTime is a received message's SCM_TIMESTAMPNS (the socket has
// SO_TIMESTAMPNS set), or zero if it carries none.
func KernelTime(oob []byte) time.Time {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return time.Time{}
	}
	for _, m := range msgs {
		if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
			return time.Unix(int64(binary.NativeEndian.Uint64(m.Data[0:8])), int64(binary.NativeEndian.Uint64(m.Data[8:16])))
		}
	}
	return time.Time{}
}

// FirstAfter is the arrival of the first frame counted on ifname at or
// after t, in the given direction, of ethertype etype (0: any). Times
// must be set.
func (c *Capture) FirstAfter(ifname string, outgoing bool, etype uint16, t time.Time) (time.Time, bool) {
	var index int
	if err := nsutil.Do(c.ns, func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err == nil {
			index = ifi.Index
		}
		return err
	}); err != nil {
		return time.Time{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.times {
		if f.ifindex == index && f.outgoing == outgoing && (etype == 0 || f.etype == etype) && !f.at.Before(t) {
			return f.at, true
		}
	}
	return time.Time{}, false
}

func (c *Capture) dropped() int {
	st, err := unix.GetsockoptTpacketStats(c.fd, unix.SOL_PACKET, unix.PACKET_STATISTICS)
	if err != nil {
		return 0
	}
	return int(st.Drops)
}

func (c *Capture) count(frame []byte, ll *unix.SockaddrLinklayer, at time.Time) {
	out := ll != nil && ll.Pkttype == unix.PACKET_OUTGOING
	if c.opts.IngressOnly && out {
		return
	}
	proto, l4, hasL4 := parseFrame(frame, ll)
	var v Verdict
	var sample string
	if c.opts.Classify != nil {
		et := bareType(ll)
		v = c.opts.Classify.Classify(frame, et)
		if v.Watched.IsValid() || v.Kind == KindUnknown {
			sample = fmt.Sprintf("%s %s: %s", at.Format("15:04:05.000000"), v.Kind, Describe(frame, et))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	s := &c.stats
	s.Frames++
	if c.opts.Classify != nil {
		s.ByKind[v.Kind]++
		if v.Watched.IsValid() {
			s.Watched++
			if v.Watched.Unmap().Is6() {
				s.Watched6++
			}
		}
		if sample != "" && len(s.Samples) < 20 {
			s.Samples = append(s.Samples, sample)
		}
	}
	if c.opts.Times && ll != nil && len(c.times) < 4<<20 {
		c.times = append(c.times, frameTime{at: at, ifindex: ll.Ifindex, outgoing: out, etype: frameType(frame, ll)})
	}
	if out {
		s.Outgoing++
	}
	if proto >= 0 {
		s.ByProto[uint8(proto)]++
		if proto == unix.IPPROTO_UDP && hasL4 && len(l4) >= 4 {
			src, dst := binary.BigEndian.Uint16(l4[0:2]), binary.BigEndian.Uint16(l4[2:4])
			s.UDPPorts[dst]++
			if src != dst {
				s.UDPPorts[src]++
			}
		}
	}
	if len(c.opts.Marker) > 0 && bytes.Contains(frame, c.opts.Marker) {
		s.Marker++
		if out {
			s.MarkerOutgoing++
		}
	}
}

// parseFrame returns the IP protocol (-1 if not IP) and, for the first
// fragment, the transport header onwards.
func parseFrame(f []byte, ll *unix.SockaddrLinklayer) (proto int, l4 []byte, ok bool) {
	etype, ip := linkPayload(f, bareType(ll))
	if etype != unix.ETH_P_IP && etype != unix.ETH_P_IPV6 {
		return -1, nil, false
	}
	h, ok := parseIP(ip)
	if !ok {
		return -1, nil, false
	}
	return h.proto, h.l4, h.l4 != nil
}

// bareType is the ethertype of a frame read from a device without a
// link-layer header (tun, WireGuard), or 0 for Ethernet and loopback.
func bareType(ll *unix.SockaddrLinklayer) uint16 {
	if ll != nil && ll.Hatype != unix.ARPHRD_ETHER && ll.Hatype != unix.ARPHRD_LOOPBACK {
		return ntohs(ll.Protocol)
	}
	return 0
}

// frameType is a frame's ethertype (the innermost, past VLAN tags).
func frameType(f []byte, ll *unix.SockaddrLinklayer) uint16 {
	etype, _ := linkPayload(f, bareType(ll))
	return etype
}

// excludeFilter attaches a classic BPF program that drops frames of the
// named interfaces (resolved in the calling thread's namespace).
func excludeFilter(fd int, names []string) error {
	if len(names) == 0 {
		return nil
	}
	const skfAdIfindex = 0xfffff000 + 8 // SKF_AD_OFF + SKF_AD_IFINDEX
	prog := []unix.SockFilter{{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdIfindex}}
	n := len(names)
	for i, name := range names {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("exclude interface %q: %w", name, err)
		}
		// Equal: jump to the drop at the end; else try the next.
		prog = append(prog, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, K: uint32(ifi.Index), Jt: uint8(n - i), Jf: 0})
	}
	prog = append(prog,
		unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0x40000}, // keep
		unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0})       // drop
	fp := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fp)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
func ntohs(v uint16) uint16 { return v<<8 | v>>8 }
