package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// lateRTT is the round trip above which a reply counts as late: it
// arrived, but a user watching `ping` saw the VM gone meanwhile.
const lateRTT = 20 * time.Millisecond

// pinger sends an ICMP echo every interval from a namespace and records,
// per echo, when it was sent and when its reply arrived (the kernel's
// receive timestamp, SO_TIMESTAMPNS), as `ping -D` from the peer would.
type pinger struct {
	interval time.Duration
	c        *net.IPConn
	dst      *net.IPAddr
	id       uint16
	marker   []byte // carried in every echo, so a capture can spot it in clear
	v6       bool   // ICMPv6 echo (the kernel computes its checksum)

	mu   sync.Mutex
	sent []time.Time // by sequence number
	recv []time.Time // arrival of the first reply, zero if none
	stop chan struct{}
	once sync.Once
	done sync.WaitGroup
}

func startPinger(ns string, dst netip.Addr, interval time.Duration, id uint16, marker []byte) (*pinger, error) {
	var c *net.IPConn
	v6 := dst.Is6() && !dst.Is4In6()
	network, laddr := "ip4:icmp", "0.0.0.0"
	if v6 {
		network, laddr = "ip6:ipv6-icmp", "::"
	}
	err := nsutil.Do(ns, func() error {
		pc, err := net.ListenPacket(network, laddr)
		if err != nil {
			return err
		}
		c = pc.(*net.IPConn)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("icmp socket in %s: %w", ns, err)
	}
	raw, err := c.SyscallConn()
	if err != nil {
		c.Close()
		return nil, err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1)
	}); err != nil || serr != nil {
		c.Close()
		return nil, fmt.Errorf("SO_TIMESTAMPNS: %v %v", err, serr)
	}
	p := &pinger{interval: interval, c: c, dst: &net.IPAddr{IP: dst.Unmap().AsSlice()}, id: id, marker: marker, v6: v6, stop: make(chan struct{})}
	p.done.Add(2)
	go p.send()
	go p.read()
	return p, nil
}

func (p *pinger) send() {
	defer p.done.Done()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	msg := append(make([]byte, 16), p.marker...)
	request := byte(8)
	if p.v6 {
		request = 128
	}
	for seq := 0; ; seq++ {
		msg[0], msg[1] = request, 0 // echo request
		binary.BigEndian.PutUint16(msg[2:], 0)
		binary.BigEndian.PutUint16(msg[4:], p.id)
		binary.BigEndian.PutUint16(msg[6:], uint16(seq))
		binary.BigEndian.PutUint64(msg[8:], uint64(seq))
		if !p.v6 { // ICMPv6: the kernel fills the checksum in (pseudo-header)
			binary.BigEndian.PutUint16(msg[2:], lab.Checksum(msg))
		}
		p.mu.Lock()
		p.sent = append(p.sent, time.Now())
		p.recv = append(p.recv, time.Time{})
		p.mu.Unlock()
		_, _ = p.c.WriteTo(msg, p.dst)
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

func (p *pinger) read() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	oob := make([]byte, 128)
	reply := byte(0)
	if p.v6 {
		reply = 129
	}
	for {
		n, oobn, _, _, err := p.c.ReadMsgIP(buf, oob)
		if err != nil {
			return
		}
		at := lab.KernelTime(oob[:oobn])
		if at.IsZero() {
			at = time.Now()
		}
		// ReadMsgIP, unlike ReadFrom, leaves the IPv4 header on (an
		// ICMPv6 socket gets no IP header).
		msg := buf[:n]
		if !p.v6 && len(msg) >= 20 && msg[0]>>4 == 4 {
			msg = msg[min(int(msg[0]&0x0f)*4, len(msg)):]
		}
		n = copy(buf, msg)
		if n < 16 || buf[0] != reply || binary.BigEndian.Uint16(buf[4:]) != p.id {
			continue
		}
		seq := int(binary.BigEndian.Uint64(buf[8:]))
		p.mu.Lock()
		if seq >= 0 && seq < len(p.recv) && p.recv[seq].IsZero() {
			p.recv[seq] = at
		}
		p.mu.Unlock()
	}
}

// Stop ends the series (after a grace period for replies in flight).
func (p *pinger) Stop() {
	p.once.Do(func() {
		close(p.stop)
		time.Sleep(200 * time.Millisecond) // replies in flight
		p.c.Close()
		p.done.Wait()
	})
}

// Between sums up the window [from, to] (see echoes.window).
func (p *pinger) Between(from, to time.Time) series {
	p.mu.Lock()
	defer p.mu.Unlock()
	return echoes{sent: p.sent, recv: p.recv, interval: p.interval}.window(from, to)
}

// FirstReplyAfter is the arrival of the first reply to an echo sent at
// or after t (false if none arrived).
func (p *pinger) FirstReplyAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return echoes{sent: p.sent, recv: p.recv}.firstReplyAfter(t)
}

// FirstArrivalAfter is the first reply (to any echo) arriving at or
// after t.
func (p *pinger) FirstArrivalAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var first time.Time
	for _, rt := range p.recv {
		if !rt.IsZero() && !rt.Before(t) && (first.IsZero() || rt.Before(first)) {
			first = rt
		}
	}
	return first, !first.IsZero()
}

// echoes is a pinger's record: send time and reply arrival (zero: none)
// by sequence number.
type echoes struct {
	sent, recv []time.Time
	interval   time.Duration
}

// series is what a peer saw in a window.
type series struct {
	// Sent and Answered count the echoes sent in the window.
	Sent, Answered int
	// Blackout is the longest interval in the window during which no
	// reply arrived, minus one ping interval (the normal gap). An outage
	// still running at the window's end counts up to the end; a window
	// with no reply at all is wholly blackout.
	Blackout time.Duration
	// BlackoutStart is when that interval began.
	BlackoutStart time.Time
	// Late counts replies, to echoes sent in the window, whose round trip
	// exceeded lateRTT; MaxRTT is the longest round trip among them.
	Late   int
	MaxRTT time.Duration
}

func (e echoes) window(from, to time.Time) series {
	var s series
	var arrivals []time.Time
	for i, st := range e.sent {
		rt := e.recv[i]
		if !rt.IsZero() && !rt.Before(from) && !rt.After(to) {
			arrivals = append(arrivals, rt)
		}
		if st.Before(from) || st.After(to) {
			continue
		}
		s.Sent++
		if rt.IsZero() {
			continue
		}
		s.Answered++
		rtt := rt.Sub(st)
		s.MaxRTT = max(s.MaxRTT, rtt)
		if rtt > lateRTT {
			s.Late++
		}
	}
	slices.SortFunc(arrivals, func(a, b time.Time) int { return a.Compare(b) })
	last := from
	for _, at := range append(arrivals, to) {
		if gap := at.Sub(last) - e.interval; gap > s.Blackout {
			s.Blackout, s.BlackoutStart = gap, last
		}
		last = at
	}
	return s
}

func (e echoes) firstReplyAfter(t time.Time) (time.Time, bool) {
	var first time.Time
	for i, st := range e.sent {
		if st.Before(t) || e.recv[i].IsZero() {
			continue
		}
		if first.IsZero() || e.recv[i].Before(first) {
			first = e.recv[i]
		}
	}
	return first, !first.IsZero()
}
