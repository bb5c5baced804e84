package sockdiag_test

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/sockdiag"
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

// TestVMServerDualStack: the VM serves on a dual-stack socket; an IPv4
// client (seen as v4-mapped on an AF_INET6 socket) and an IPv6 client are
// listed with the VM's addresses as Local and both destroyed.
func TestVMServerDualStack(t *testing.T) {
	w := newWorld(t)
	addIPv6(t, w.Lab)
	srv := listenIn(t, w.VM, "tcp", "[::]:8080", nil)
	c4 := dialIn(t, w.Peer2, "tcp4", "10.1.0.10:8080")
	c6 := dialIn(t, w.Peer2, "tcp6", "[fd01::10]:8080")
	if err := echo(c4, "four"); err != nil {
		t.Fatal(err)
	}
	if err := echo(c6, "six"); err != nil {
		t.Fatal(err)
	}
	sel := conn.Selector{Host: w.VM, Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32"), netip.MustParsePrefix("fd01::10/128")}}
	a := sockdiag.New()
	conns, err := a.List(t.Context(), sel)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, c := range conns {
		got[c.Remote.String()] = c.Local.String() + " " + c.Device
	}
	want := map[string]string{
		c4.LocalAddr().String(): "10.1.0.10:8080 eth0",
		c6.LocalAddr().String(): "[fd01::10]:8080 eth0",
	}
	if len(conns) != 2 || got[c4.LocalAddr().String()] != want[c4.LocalAddr().String()] || got[c6.LocalAddr().String()] != want[c6.LocalAddr().String()] {
		t.Fatalf("List = %v, want %v", got, want)
	}
	res, err := a.Reset(t.Context(), sel, conns)
	if err != nil || res.Reset != 2 {
		t.Fatalf("Reset = %+v, %v", res, err)
	}
	if err := readErr(c4); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("IPv4 client: %v, want ECONNRESET", err)
	}
	if err := readErr(c6); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("IPv6 client: %v, want ECONNRESET", err)
	}
	for _, c := range []string{c4.LocalAddr().String(), c6.LocalAddr().String()} {
		if err := srv.endOf(t, c); !errors.Is(err, syscall.ECONNABORTED) {
			t.Errorf("VM side of %s: %v, want ECONNABORTED", c, err)
		}
	}
}
