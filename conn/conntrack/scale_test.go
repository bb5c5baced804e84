package conntrack_test

import (
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/internal/conntest"
)

// TestAudit10000 lists and classifies 10,000 live flows through host A
// and resets the unsecured half; every reset endpoint (both sides) sees
// ECONNRESET and every kept connection still echoes.
func TestAudit10000(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const half = 5000
	w := newWorld(t)
	srv := conntest.StartEchoHelper(t, w.Peer2, "10.2.0.20:8080", "10.2.0.20:443")
	plain := conntest.DialMany(t, w.VM, "10.2.0.20:8080", half)
	kept := conntest.DialMany(t, w.VM, "10.2.0.20:443", half)
	// One round trip each so every entry is ESTABLISHED in both directions.
	for _, c := range append(append([]net.Conn{}, plain...), kept...) {
		if err := conntest.Echo(c, "x"); err != nil {
			t.Fatal(err)
		}
	}

	a := conntrack.New(conntrack.WithHost(w.A), conntrack.WithResetTimeout(20*time.Second))
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
		if v.Conn.Remote.Port() != 8080 {
			t.Fatalf("reset verdict for %v", v.Conn)
		}
		reset[i] = v.Conn
	}
	res, err := a.Reset(t.Context(), w.sel, reset)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reset != half || res.Missed != 0 {
		t.Fatalf("Reset = %+v, want %d reset", res, half)
	}

	if resets := conntest.CountReadErrs(plain, syscall.ECONNRESET); resets != half {
		t.Errorf("VM side: %d of %d reset connections saw ECONNRESET", resets, half)
	}
	srv.AwaitResets(t, half)
	for i, c := range kept {
		if err := conntest.Echo(c, "y"); err != nil {
			t.Fatalf("kept conn %d: %v", i, err)
		}
	}
	left, err := a.List(t.Context(), w.sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != half {
		t.Errorf("after Reset: %d flows listed, want %d", len(left), half)
	}
}
