package conntest

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
)

// DialIn connects from ns (sockets keep the namespace they were made in);
// the connection is closed in t's cleanup.
func DialIn(t testing.TB, ns, network, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	err := nsutil.Do(ns, func() error {
		var err error
		d := net.Dialer{Timeout: 10 * time.Second}
		c, err = d.DialContext(t.Context(), network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s %s from %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// DialMany opens n TCP connections from ns to the IPv4 addr on one locked
// thread; they are closed in t's cleanup.
func DialMany(t testing.TB, ns, addr string, n int) []net.Conn {
	t.Helper()
	out := make([]net.Conn, 0, n)
	err := nsutil.Do(ns, func() error {
		d := net.Dialer{Timeout: 10 * time.Second}
		for range n {
			c, err := d.DialContext(t.Context(), "tcp4", addr)
			if err != nil {
				return fmt.Errorf("after %d conns: %w", len(out), err)
			}
			out = append(out, c)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, c := range out {
			c.Close()
		}
	})
	if err != nil {
		t.Fatalf("dial %s from %s: %v", addr, ns, err)
	}
	return out
}

// Echo writes msg and reads it back.
func Echo(c net.Conn, msg string) error {
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	if err == nil && string(buf) != msg {
		err = errors.New("echo mismatch: " + string(buf))
	}
	return err
}

// ReadErr blocks until c's next read fails and returns the error (a
// deadline of a minute guards against a hang, not a timing assertion).
func ReadErr(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
}

// CountReadErrs runs ReadErr on every conn at once and counts those whose
// error is target (errors.Is).
func CountReadErrs(conns []net.Conn, target error) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	n := 0
	for _, c := range conns {
		wg.Go(func() {
			if err := ReadErr(c); errors.Is(err, target) {
				mu.Lock()
				n++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return n
}

// ReadEcho echoes what c reads until a read or write fails and returns
// that error.
func ReadEcho(c net.Conn) error {
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		if err != nil {
			return err
		}
		if _, err := c.Write(buf[:n]); err != nil {
			return err
		}
	}
}
