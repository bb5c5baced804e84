package conntest

import (
	"testing"

	"github.com/sealift/sealift/internal/lab"
)

// AddIPv6 gives the lab's VM (fd01::10) and peer2 (fd02::20) IPv6 routed
// through A and core.
func AddIPv6(t testing.TB, l *lab.Lab) {
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
