package sockdiag_test

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/sockdiag"
	"github.com/sealift/sealift/internal/nsutil"
)

// dialMany opens n connections from ns to addr on one locked thread.
func dialMany(t testing.TB, ns, addr string, n int) []net.Conn {
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

// TestAudit10000 lists and classifies the VM's 10,000 sockets and destroys
// the unsecured half: each destroyed socket's owner sees ECONNABORTED,
// each peer a RST, and each kept connection still echoes.
func TestAudit10000(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const half = 5000
	w := newWorld(t)
	srv := startEchoHelper(t, w.Peer2, "10.2.0.20:8080", "10.2.0.20:443")
	plain := dialMany(t, w.VM, "10.2.0.20:8080", half)
	kept := dialMany(t, w.VM, "10.2.0.20:443", half)

	a := sockdiag.New()
	conns, err := a.List(t.Context(), w.sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 2*half {
		t.Fatalf("List: %d conns, want %d", len(conns), 2*half)
	}
	cl := conn.Classify(conns, w.policy)
	if len(cl.Keep) != half || len(cl.Reset) != half {
		t.Fatalf("Classify: keep %d reset %d, want %d each", len(cl.Keep), len(cl.Reset), half)
	}
	reset := make([]conn.Conn, len(cl.Reset))
	for i, v := range cl.Reset {
		reset[i] = v.Conn
	}
	res, err := a.Reset(t.Context(), w.sel, reset)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reset != half || res.Missed != 0 {
		t.Fatalf("Reset = %+v, want %d reset", res, half)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	aborted := 0
	for _, c := range plain {
		wg.Go(func() {
			if err := readErr(c); errors.Is(err, syscall.ECONNABORTED) {
				mu.Lock()
				aborted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if aborted != half {
		t.Errorf("VM side: %d of %d destroyed sockets saw ECONNABORTED", aborted, half)
	}
	for n := 0; n < half; n++ {
		select {
		case <-srv.resets:
		case <-t.Context().Done():
			t.Fatalf("peer side: %d of %d saw ECONNRESET", n, half)
		}
	}
	for i, c := range kept {
		if err := echo(c, "y"); err != nil {
			t.Fatalf("kept conn %d: %v", i, err)
		}
	}
	if left, err := a.List(t.Context(), w.sel); err != nil || len(left) != half {
		t.Errorf("after Reset: %d sockets listed (%v), want %d", len(left), err, half)
	}
}

func TestBadInput(t *testing.T) {
	a := sockdiag.New()
	vm := []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}
	good := conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:1"), Remote: netip.MustParseAddrPort("10.2.0.20:2")}
	for _, tc := range []struct {
		name  string
		run   func() error
		is    error
		names string
	}{
		{"list empty selector", func() error { _, err := a.List(t.Context(), conn.Selector{Host: "x"}); return err }, conn.ErrInvalid, "Selector.Addrs"},
		{"list unknown host", func() error {
			_, err := a.List(t.Context(), conn.Selector{Host: "sl-no-such-ns", Addrs: vm})
			return err
		}, conn.ErrNoHost, "sl-no-such-ns"},
		{"reset unknown host", func() error {
			_, err := a.Reset(t.Context(), conn.Selector{Host: "sl-no-such-ns", Addrs: vm}, []conn.Conn{good})
			return err
		}, conn.ErrNoHost, "sl-no-such-ns"},
		{"option host unknown", func() error {
			_, err := sockdiag.New(sockdiag.WithHost("sl-no-such-ns2")).List(t.Context(), conn.Selector{Addrs: vm})
			return err
		}, conn.ErrNoHost, "sl-no-such-ns2"},
		{"reset bad proto", func() error {
			c := good
			c.Proto = ""
			_, err := a.Reset(t.Context(), conn.Selector{Addrs: vm}, []conn.Conn{c})
			return err
		}, conn.ErrInvalid, "conns[0].Proto"},
		{"reset no local", func() error {
			c := good
			c.Local = netip.AddrPort{}
			_, err := a.Reset(t.Context(), conn.Selector{Addrs: vm}, []conn.Conn{good, c})
			return err
		}, conn.ErrInvalid, "conns[1].Local"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.names) {
				t.Fatalf("err = %v, want %v naming %q", err, tc.is, tc.names)
			}
		})
	}
}
