package sockdiag_test

import (
	"syscall"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/conn/sockdiag"
)

// TestAudit10000 lists and classifies the VM's 10,000 sockets and destroys
// the unsecured half: each destroyed socket's owner sees ECONNABORTED,
// each peer a RST, and each kept connection still echoes.
func TestAudit10000(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	const half = 5000
	w := newWorld(t)
	srv := conntest.StartEchoHelper(t, w.Peer2, "10.2.0.20:8080", "10.2.0.20:443")
	plain := conntest.DialMany(t, w.VM, "10.2.0.20:8080", half)
	kept := conntest.DialMany(t, w.VM, "10.2.0.20:443", half)

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
	if aborted := conntest.CountReadErrs(plain, syscall.ECONNABORTED); aborted != half {
		t.Errorf("VM side: %d of %d destroyed sockets saw ECONNABORTED", aborted, half)
	}
	srv.AwaitResets(t, half)
	for i, c := range kept {
		if err := conntest.Echo(c, "y"); err != nil {
			t.Fatalf("kept conn %d: %v", i, err)
		}
	}
	if left, err := a.List(t.Context(), w.sel); err != nil || len(left) != half {
		t.Errorf("after Reset: %d sockets listed (%v), want %d", len(left), err, half)
	}
}
