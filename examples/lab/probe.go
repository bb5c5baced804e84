package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
)

// pinger sends an ICMP echo every interval from a namespace and records
// which were answered, to measure the peer-observed blackout.
type pinger struct {
	interval time.Duration
	c        net.PacketConn
	dst      *net.IPAddr
	id       uint16
	marker   []byte // carried in every echo, so a capture can spot it in clear

	mu   sync.Mutex
	sent []time.Time // by sequence number
	got  []bool
	stop chan struct{}
	once sync.Once
	done sync.WaitGroup
}

func startPinger(ns string, dst netip.Addr, interval time.Duration, id uint16, marker []byte) (*pinger, error) {
	var c net.PacketConn
	err := nsutil.Do(ns, func() (err error) {
		c, err = net.ListenPacket("ip4:icmp", "0.0.0.0")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("icmp socket in %s: %w", ns, err)
	}
	p := &pinger{interval: interval, c: c, dst: &net.IPAddr{IP: dst.AsSlice()}, id: id, marker: marker, stop: make(chan struct{})}
	p.done.Add(2)
	go p.send()
	go p.recv()
	return p, nil
}

func (p *pinger) send() {
	defer p.done.Done()
	t := time.NewTicker(p.interval)
	defer t.Stop()
	msg := append(make([]byte, 16), p.marker...)
	for seq := 0; ; seq++ {
		msg[0], msg[1] = 8, 0 // echo request
		binary.BigEndian.PutUint16(msg[2:], 0)
		binary.BigEndian.PutUint16(msg[4:], p.id)
		binary.BigEndian.PutUint16(msg[6:], uint16(seq))
		binary.BigEndian.PutUint64(msg[8:], uint64(seq))
		binary.BigEndian.PutUint16(msg[2:], icmpChecksum(msg))
		p.mu.Lock()
		p.sent = append(p.sent, time.Now())
		p.got = append(p.got, false)
		p.mu.Unlock()
		_, _ = p.c.WriteTo(msg, p.dst)
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
	}
}

func (p *pinger) recv() {
	defer p.done.Done()
	buf := make([]byte, 1500)
	for {
		n, _, err := p.c.ReadFrom(buf)
		if err != nil {
			return
		}
		if n < 16 || buf[0] != 0 || binary.BigEndian.Uint16(buf[4:]) != p.id {
			continue
		}
		seq := int(binary.BigEndian.Uint64(buf[8:]))
		p.mu.Lock()
		if seq < len(p.got) {
			p.got[seq] = true
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

// series sums up the pings sent in [from, to]: sent, answered, and the
// blackout, the longest time between two answered pings minus one
// interval (0 when none was lost).
type series struct {
	Sent, Answered int
	Blackout       time.Duration
	FirstLoss      time.Time
}

func (p *pinger) Between(from, to time.Time) series {
	p.mu.Lock()
	defer p.mu.Unlock()
	var s series
	var last time.Time
	for i, t := range p.sent {
		if t.Before(from) || t.After(to) {
			continue
		}
		s.Sent++
		if !p.got[i] {
			if s.FirstLoss.IsZero() {
				s.FirstLoss = t
			}
			continue
		}
		s.Answered++
		if !last.IsZero() {
			if gap := t.Sub(last) - p.interval; gap > s.Blackout {
				s.Blackout = gap
			}
		}
		last = t
	}
	return s
}

func icmpChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

// session is a long-lived plaintext TCP session from a peer to the
// guest's echo service: it sends a marked line every interval and
// reconnects when the connection is reset. It records each connection's
// local address so the lab can tell the old flow from the new.
type session struct {
	ns, addr string
	marker   string
	mu       sync.Mutex
	conns    []netip.AddrPort // local address of each connection, in order
	resets   int
	echoed   int
	lastErr  error
	cancel   context.CancelFunc
	done     chan struct{}
}

func startSession(ns, addr, marker string, interval time.Duration) *session {
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{ns: ns, addr: addr, marker: marker, cancel: cancel, done: make(chan struct{})}
	go s.loop(ctx, interval)
	return s
}

func (s *session) loop(ctx context.Context, interval time.Duration) {
	defer close(s.done)
	for ctx.Err() == nil {
		var c net.Conn
		err := nsutil.Do(s.ns, func() (err error) {
			c, err = net.DialTimeout("tcp", s.addr, 2*time.Second)
			return err
		})
		if err != nil {
			s.note(err)
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		s.mu.Lock()
		s.conns = append(s.conns, netip.MustParseAddrPort(c.LocalAddr().String()))
		s.mu.Unlock()
		s.run(ctx, c, interval)
		c.Close()
	}
}

func (s *session) run(ctx context.Context, c net.Conn, interval time.Duration) {
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReader(c)
	for i := 0; ctx.Err() == nil; i++ {
		line := fmt.Sprintf("%s %d\n", s.marker, i)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := c.Write([]byte(line)); err != nil {
			s.note(err)
			return
		}
		if _, err := r.ReadString('\n'); err != nil {
			s.note(err)
			return
		}
		s.mu.Lock()
		s.echoed++
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-time.After(interval):
		}
	}
}

func (s *session) note(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastErr = err
	if errors.Is(err, net.ErrClosed) {
		return
	}
	if errors.Is(err, syscall.ECONNRESET) {
		s.resets++
	}
}

// Connections returns the local addresses of the session's connections.
func (s *session) Connections() []netip.AddrPort {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]netip.AddrPort(nil), s.conns...)
}

func (s *session) Resets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resets
}

func (s *session) Stop() {
	s.cancel()
	<-s.done
}

func (s *session) echoedN() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.echoed
}

func (s *session) err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// lostBetween counts unanswered pings sent in [from, to].
func (p *pinger) lostBetween(from, to time.Time) int {
	s := p.Between(from, to)
	return s.Sent - s.Answered
}

// firstAnsweredAfter is the send time of the first answered ping sent at
// or after t that follows a loss (the end of the blackout), or the first
// answered one if none was lost.
func (p *pinger) firstAnsweredAfter(t time.Time) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, st := range p.sent {
		if !st.Before(t) && p.got[i] {
			return st, true
		}
	}
	return time.Time{}, false
}
