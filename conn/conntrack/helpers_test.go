package conntrack_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// server is a TCP echo server in a namespace that remembers how each
// accepted connection ended.
type server struct {
	ln    net.Listener
	mu    sync.Mutex
	ends  map[string]error // remote addr -> error that ended the conn
	endc  chan struct{}
	conns sync.WaitGroup
}

func listenIn(t testing.TB, ns, network, addr string, cfg *tls.Config) *server {
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
	s := &server{ln: ln, ends: map[string]error{}, endc: make(chan struct{}, 1<<16)}
	go s.serve()
	t.Cleanup(func() { ln.Close() })
	return s
}

func (s *server) serve() {
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

// endOf waits for the server side of the connection from remote to end
// and returns its error.
func (s *server) endOf(t testing.TB, remote string) error {
	t.Helper()
	for {
		s.mu.Lock()
		err, ok := s.ends[remote]
		s.mu.Unlock()
		if ok {
			return err
		}
		select {
		case <-s.endc:
		case <-t.Context().Done():
			t.Fatalf("server side of %s did not end", remote)
		}
	}
}

// resets counts the server-side connections that ended with ECONNRESET.
func (s *server) resets() int {
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

// dialIn connects from ns (sockets keep the namespace they were made in).
func dialIn(t testing.TB, ns, network, addr string) net.Conn {
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

// echo writes msg and reads it back.
func echo(c net.Conn, msg string) error {
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

// selfSigned returns a server config and a client config trusting it.
func selfSigned(t testing.TB, name string) (srv, cli *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP(name)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	srv = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}
	cli = &tls.Config{RootCAs: pool, ServerName: name}
	return srv, cli
}

// readErr blocks until c's next read fails and returns the error (a
// deadline of a minute guards against a hang, not a timing assertion).
func readErr(c net.Conn) error {
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			return err
		}
	}
}

// The scale test's server side runs in a child process (this test binary
// re-executed), so that neither process needs more than 10,000 sockets.
const helperEnv = "SEALIFT_CT_ECHO_HELPER"

func TestMain(m *testing.M) {
	if addrs := os.Getenv(helperEnv); addrs != "" {
		runEchoHelper(strings.Split(addrs, ","))
		return
	}
	os.Exit(m.Run())
}

// runEchoHelper echoes on addrs and prints "END reset" or "END other" for
// every connection that ends.
func runEchoHelper(addrs []string) {
	out := make(chan string, 1024)
	for _, a := range addrs {
		ln, err := net.Listen("tcp4", a)
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(1)
		}
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					err := readEcho(c)
					c.Close()
					if errors.Is(err, syscall.ECONNRESET) {
						out <- "END reset"
					} else {
						out <- "END other"
					}
				}()
			}
		}()
	}
	fmt.Println("READY")
	go func() { _, _ = io.Copy(io.Discard, os.Stdin); os.Exit(0) }() // parent gone: exit
	for l := range out {
		fmt.Println(l)
	}
}

func readEcho(c net.Conn) error {
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

// echoHelper is a running child echo server.
type echoHelper struct {
	resets chan struct{}
}

// startEchoHelper runs the echo helper in ns on addrs.
func startEchoHelper(t testing.TB, ns string, addrs ...string) *echoHelper {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+strings.Join(addrs, ","))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := nsutil.Do(ns, cmd.Start); err != nil {
		t.Fatalf("start echo helper in %s: %v", ns, err)
	}
	t.Cleanup(func() {
		stdin.Close()
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	h := &echoHelper{resets: make(chan struct{}, 1<<16)}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "READY" {
		t.Fatalf("echo helper: %q %v", sc.Text(), sc.Err())
	}
	go func() {
		for sc.Scan() {
			if sc.Text() == "END reset" {
				select {
				case h.resets <- struct{}{}:
				default: // nobody counts (benchmarks)
				}
			}
		}
	}()
	return h
}
