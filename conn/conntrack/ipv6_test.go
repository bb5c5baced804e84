package conntrack_test

import (
	"errors"
	"log/slog"
	"net/netip"
	"syscall"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/internal/lab"
)

// addIPv6 gives the lab's VM (fd01::10) and peer2 (fd02::20) IPv6 routed
// through A and core.
func addIPv6(t *testing.T, l *lab.Lab) {
	t.Helper()
	for _, a := range []struct{ ns, dev, addr string }{
		{l.VM, "eth0", "fd01::10/64"}, {l.A, "br0", "fd01::1/64"}, {l.A, "up0", "fd0f::1/64"},
		{l.Core, "a0", "fd0f::2/64"}, {l.Core, "p2", "fd02::1/64"}, {l.Peer2, "eth0", "fd02::20/64"},
	} {
		if err := lab.AddAddr(a.ns, a.dev, a.addr); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct{ ns, dst, gw string }{
		{l.VM, "::/0", "fd01::1"}, {l.Peer2, "::/0", "fd02::1"}, {l.A, "fd02::/64", "fd0f::2"}, {l.Core, "fd01::/64", "fd0f::1"},
	} {
		if out, err := lab.Exec(r.ns, "ip", "-6", "route", "add", r.dst, "via", r.gw); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	for _, ns := range []string{l.A, l.Core} {
		if err := lab.Sysctl(ns, "net/ipv6/conf/all/forwarding", "1"); err != nil {
			t.Fatal(err)
		}
	}
}

// TestResetIPv6: the IPv6 sets and tickles reset a plain IPv6 session at
// both ends and keep the one on 443.
func TestResetIPv6(t *testing.T) {
	w := newWorld(t)
	addIPv6(t, w.Lab)
	plainSrv := listenIn(t, w.Peer2, "tcp6", "[fd02::20]:8080", nil)
	listenIn(t, w.Peer2, "tcp6", "[fd02::20]:443", nil)
	plain := dialIn(t, w.VM, "tcp6", "[fd02::20]:8080")
	kept := dialIn(t, w.VM, "tcp6", "[fd02::20]:443")
	if err := echo(plain, "p"); err != nil {
		t.Fatal(err)
	}
	if err := echo(kept, "k"); err != nil {
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
	if err := readErr(plain); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("VM side: %v, want ECONNRESET", err)
	}
	if err := plainSrv.endOf(t, plain.LocalAddr().String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer side: %v, want ECONNRESET", err)
	}
	if err := echo(kept, "still"); err != nil {
		t.Errorf("kept session: %v", err)
	}
}
