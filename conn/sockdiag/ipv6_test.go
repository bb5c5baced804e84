package sockdiag_test

import (
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/conn/sockdiag"
)

// TestVMServerDualStack: the VM serves on a dual-stack socket; an IPv4
// client (seen as v4-mapped on an AF_INET6 socket) and an IPv6 client are
// listed with the VM's addresses as Local and both destroyed.
func TestVMServerDualStack(t *testing.T) {
	w := newWorld(t)
	conntest.AddIPv6(t, w.Lab)
	srv := conntest.ListenIn(t, w.VM, "tcp", "[::]:8080", nil)
	c4 := conntest.DialIn(t, w.Peer2, "tcp4", "10.1.0.10:8080")
	c6 := conntest.DialIn(t, w.Peer2, "tcp6", "[fd01::10]:8080")
	if err := conntest.Echo(c4, "four"); err != nil {
		t.Fatal(err)
	}
	if err := conntest.Echo(c6, "six"); err != nil {
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
	if err := conntest.ReadErr(c4); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("IPv4 client: %v, want ECONNRESET", err)
	}
	if err := conntest.ReadErr(c6); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("IPv6 client: %v, want ECONNRESET", err)
	}
	for _, c := range []string{c4.LocalAddr().String(), c6.LocalAddr().String()} {
		if err := srv.EndOf(t, c); !errors.Is(err, syscall.ECONNABORTED) {
			t.Errorf("VM side of %s: %v, want ECONNABORTED", c, err)
		}
	}
}
