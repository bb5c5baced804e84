package conntrack_test

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/internal/lab"
)

// TestResetWithoutTickles: with tickles off, the reset table answers the
// flow's next packets by itself: once it is installed, each end writes,
// each write is rejected with a RST, and Reset returns as soon as both
// directions were rejected (well before its timeout).
func TestResetWithoutTickles(t *testing.T) {
	w := newWorld(t)
	srv := conntest.ListenIn(t, w.Peer2, "tcp4", "10.2.0.20:8080", nil)
	plain := conntest.DialIn(t, w.VM, "tcp4", "10.2.0.20:8080")
	if err := conntest.Echo(plain, "hi"); err != nil {
		t.Fatal(err)
	}
	var logs syncBuf
	a := conntrack.New(conntrack.WithHost(w.A), conntrack.WithTickle(false), conntrack.WithResetTimeout(time.Minute),
		conntrack.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	conns, err := a.List(t.Context(), w.sel)
	if err != nil || len(conns) != 1 {
		t.Fatalf("List = %v, %v", conns, err)
	}
	type result struct {
		res conn.ResetResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := a.Reset(t.Context(), w.sel, conns)
		done <- result{res, err}
	}()
	for {
		out, err := lab.Exec(w.A, "nft", "list", "tables")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(out), "sealift_reset") {
			break
		}
		select {
		case r := <-done:
			t.Fatalf("Reset returned before anything was sent: %+v", r)
		case <-time.After(5 * time.Millisecond):
		}
	}
	// The VM writes: its segment is rejected and the VM gets a RST.
	if _, err := plain.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := conntest.ReadErr(plain); !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("VM side: %v, want ECONNRESET", err)
	}
	// The peer's echo server writes only when it reads: abort its socket
	// instead; its RST is the other direction's next packet.
	if out, err := lab.Exec(w.Peer2, "ss", "-K", "dst", "10.1.0.10"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	r := <-done
	if r.err != nil || r.res.Reset != 1 {
		t.Fatalf("Reset = %+v, %v", r.res, r.err)
	}
	if strings.Contains(logs.String(), "not confirmed") {
		t.Fatalf("Reset ran into its timeout:\n%s", logs.String())
	}
	if err := srv.EndOf(t, plain.LocalAddr().String()); err == nil {
		t.Errorf("peer side ended without error")
	}
}

// syncBuf is a bytes.Buffer safe for a logger and a reader.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
