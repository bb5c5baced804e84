package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
)

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
