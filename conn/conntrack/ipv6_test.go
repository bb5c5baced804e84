package conntrack_test

import (
	"errors"
	"log/slog"
	"net/netip"
	"syscall"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/internal/conntest"
)

// TestResetIPv6: the IPv6 sets and tickles reset a plain IPv6 session at
// both ends and keep the one on 443.
func TestResetIPv6(t *testing.T) {
	w := newWorld(t)
	conntest.AddIPv6(t, w.Lab)
	plainSrv := conntest.ListenIn(t, w.Peer2, "tcp6", "[fd02::20]:8080", nil)
	conntest.ListenIn(t, w.Peer2, "tcp6", "[fd02::20]:443", nil)
	plain := conntest.DialIn(t, w.VM, "tcp6", "[fd02::20]:8080")
	kept := conntest.DialIn(t, w.VM, "tcp6", "[fd02::20]:443")
	if err := conntest.Echo(plain, "p"); err != nil {
		t.Fatal(err)
	}
	if err := conntest.Echo(kept, "k"); err != nil {
		t.Fatal(err)
	}
	sel := conn.Selector{Addrs: []netip.Prefix{netip.MustParsePrefix("fd01::10/128")}}
	a := conntrack.New(conntrack.WithHost(w.A), conntrack.WithLogger(slog.New(slog.NewTextHandler(t.Output(), nil))))
	conns, err := a.List(t.Context(), sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 2 {
		t.Fatalf("List: %v", conns)
	}
	cl := conn.Classify(conns, conn.Policy{})
	if len(cl.Reset) != 1 || cl.Reset[0].Conn.Remote.String() != "[fd02::20]:8080" || cl.Reset[0].Conn.Device != "up0" {
		t.Fatalf("Classify: %+v", cl)
	}
	res, err := a.Reset(t.Context(), sel, []conn.Conn{cl.Reset[0].Conn})
	if err != nil || res.Reset != 1 {
		t.Fatalf("Reset = %+v, %v", res, err)
	}
	if err := conntest.ReadErr(plain); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("VM side: %v, want ECONNRESET", err)
	}
	if err := plainSrv.EndOf(t, plain.LocalAddr().String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer side: %v, want ECONNRESET", err)
	}
	if err := conntest.Echo(kept, "still"); err != nil {
		t.Errorf("kept session: %v", err)
	}
}
