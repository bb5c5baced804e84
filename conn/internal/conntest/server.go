package conntest

import (
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// Server is a TCP echo server in a namespace that remembers how each
// accepted connection ended.
type Server struct {
	ln   net.Listener
	mu   sync.Mutex
	ends map[string]error // remote addr -> error that ended the conn
	endc chan struct{}
}

// ListenIn starts an echo server on network and addr in namespace ns,
// TLS when cfg is not nil; it is closed in t's cleanup.
func ListenIn(t testing.TB, ns, network, addr string, cfg *tls.Config) *Server {
	t.Helper()
	var ln net.Listener
	err := nsutil.Do(ns, func() error {
		var err error
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			_ = c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
			return serr
		}}
		ln, err = lc.Listen(t.Context(), network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s in %s: %v", addr, ns, err)
	}
	if cfg != nil {
		ln = tls.NewListener(ln, cfg)
	}
	s := &Server{ln: ln, ends: map[string]error{}, endc: make(chan struct{}, 1<<16)}
	go s.serve()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *Server) serve() {
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		go func() {
			buf := make([]byte, 4096)
			var err error
			for {
				var n int
				if n, err = c.Read(buf); err != nil {
					break
				}
				if _, err = c.Write(buf[:n]); err != nil {
					break
				}
			}
			s.mu.Lock()
			s.ends[c.RemoteAddr().String()] = err
			s.mu.Unlock()
			c.Close()
			s.endc <- struct{}{}
		}()
	}
}

// WaitTimeout bounds the helpers' waits. (A test's own context ends only
// after the test function returns: a wait on it alone would hang until
// the test binary's timeout instead of failing the test.)
const WaitTimeout = 30 * time.Second

// EndOf waits for the server side of the connection from remote to end
// and returns its error.
func (s *Server) EndOf(t testing.TB, remote string) error {
	t.Helper()
	timeout := time.After(WaitTimeout)
	for {
		s.mu.Lock()
		err, ok := s.ends[remote]
		s.mu.Unlock()
		if ok {
			return err
		}
		select {
		case <-s.endc:
		case <-timeout:
			t.Fatalf("server side of %s did not end within %v", remote, WaitTimeout)
		}
	}
}

// Resets counts the server-side connections that ended with ECONNRESET.
func (s *Server) Resets() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, err := range s.ends {
		if errors.Is(err, syscall.ECONNRESET) {
			n++
		}
	}
	return n
}
