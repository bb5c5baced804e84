package wireguard

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// Underlay addresses of the v6-only wan: A - core - wan - B over
// fd00:ff::/64, fd01:1::/64 and fd01:2::/64.
var (
	aUnderlay6 = netip.MustParseAddr("fd00:ff::1")
	bUnderlay6 = netip.MustParseAddr("fd01:2::1")
)

// v6OnlyWAN gives A, the core, the wan and B IPv6 underlay addresses and
// routes, and takes away every IPv4 route across the wan (the wan's route
// to 10.0.0.0/8 and B's default): A and B reach each other by IPv6 only.
func (w *world) v6OnlyWAN(t testing.TB) {
	t.Helper()
	l := w.l
	for _, a := range []struct{ ns, dev, addr string }{
		{l.A, "up0", "fd00:ff::1/64"}, {l.Core, "a0", "fd00:ff::2/64"},
		{l.Core, "wan0", "fd01:1::1/64"}, {l.WAN, "c0", "fd01:1::2/64"},
		{l.WAN, "b0", "fd01:2::2/64"}, {l.B, "wan0", "fd01:2::1/64"},
	} {
		if err := lab.AddAddr(a.ns, a.dev, a.addr); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []struct{ ns, dst, gw string }{
		{l.A, "fd01::/16", "fd00:ff::2"}, {l.Core, "fd01:2::/64", "fd01:1::2"},
		{l.WAN, "fd00:ff::/64", "fd01:1::1"}, {l.B, "fd00:ff::/64", "fd01:2::2"}, {l.B, "fd01:1::/64", "fd01:2::2"},
	} {
		if err := lab.AddRoute(r.ns, r.dst, r.gw, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, ns := range []string{l.Core, l.WAN} {
		if err := lab.Sysctl(ns, "net/ipv6/conf/all/forwarding", "1"); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct{ ns, dst string }{{l.WAN, "10.0.0.0/8"}, {l.B, "default"}} {
		if out, err := lab.Exec(c.ns, "ip", "route", "del", c.dst); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	if n, _ := lab.Ping(l.B, lab.AUplink, 1, 300*time.Millisecond); n != 0 {
		t.Fatal("B still reaches A's IPv4 underlay address: the wan is not v6-only")
	}
	if err := lab.WaitReachable(l.B, aUnderlay6, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// TestLinkOverIPv6Underlay: a link whose ends reach each other only by
// IPv6 (underlay fd00:ff::1 at A, fd01:2::1 at B) carries the protected
// hosts of both families both ways (TCP, UDP, ICMP over IPv4; ICMPv6,
// TCP and UDP over IPv6), and nothing addressed to a protected address
// leaves the wan namespace towards A or B: its outgoing frames on both
// sides are counted by destination, and a deliberate clear packet to the
// VM's IPv4 and IPv6 addresses (sent from the wan itself) is counted
// first, so a zero is believed. The encrypted frames crossed the wan to
// the IPv6 underlay addresses, none to the IPv4 ones.
func TestLinkOverIPv6Underlay(t *testing.T) {
	w := newWorld(t)
	w.dualStack(t)
	w.v6OnlyWAN(t)
	protected := []netip.Prefix{vmHost, vmHost6, peerHost, peerHost6}
	capture := func(dst ...netip.Prefix) func() (addressed, outgoing int) {
		t.Helper()
		var cs []*lab.AddrCapture
		for _, dev := range []string{"c0", "b0"} {
			c, err := lab.StartAddrCapture(w.l.WAN, dev, dst...)
			if err != nil {
				t.Fatal(err)
			}
			cs = append(cs, c)
		}
		return func() (a, o int) {
			for _, c := range cs {
				x, y := c.Stop()
				a, o = a+x, o+y
			}
			return a, o
		}
	}

	// Control: clear packets from the wan to the VM's addresses.
	stop := capture(protected...)
	for _, r := range []struct{ dst, gw string }{{"10.1.0.10/32", "203.0.113.1"}, {"fd00:1::10/128", "fd01:2::1"}} {
		if err := lab.AddRoute(w.l.WAN, r.dst, r.gw, ""); err != nil {
			t.Fatal(err)
		}
	}
	if err := lab.SendControl(w.l.WAN, lab.VMAddr, []byte("SEALIFT-CONTROL")); err != nil {
		t.Fatal(err)
	}
	if err := nsutil.Do(w.l.WAN, func() error {
		c, err := net.DialUDP("udp6", nil, &net.UDPAddr{IP: vmAddr6.AsSlice(), Port: 9})
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("SEALIFT-CONTROL"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if n, _ := stop(); n < 2 {
		t.Fatalf("control: the wan capture counted %d of 2 clear packets to the VM; its zero below would prove nothing", n)
	}
	for _, dst := range []string{"10.1.0.10/32", "fd00:1::10/128"} {
		if out, err := lab.Exec(w.l.WAN, "ip", "route", "del", dst); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}

	lk := testLinker(t, nil, WithBackend(Userspace))
	spec := w.spec6()
	spec.Secure.Underlay, spec.Remote.Underlay = aUnderlay6, bUnderlay6
	ctx := context.Background()
	clear := capture(protected...)
	tunnelled := capture(netip.PrefixFrom(aUnderlay6, 128), netip.PrefixFrom(bUnderlay6, 128))
	underlay4 := capture(netip.PrefixFrom(lab.AUplink, 32), netip.PrefixFrom(lab.BUnderlay, 32))
	if _, err := lk.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, spec.ID)
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := lk.Verify(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	w.exchange(t, []byte("SEALIFT-V6-UNDERLAY"))
	w.exchange6(t, []byte("SEALIFT-V6-UNDERLAY"))
	n, _ := clear()
	enc, _ := tunnelled()
	v4, _ := underlay4()
	if n != 0 {
		t.Errorf("%d frames addressed to protected addresses crossed the wan in clear", n)
	}
	if enc == 0 {
		t.Error("no frame crossed the wan to the IPv6 underlay addresses: the traffic did not take the link")
	}
	if v4 != 0 {
		t.Errorf("%d frames crossed the wan to the IPv4 underlay addresses", v4)
	}
	t.Logf("wan: %d frames to the IPv6 underlay, %d to protected addresses, %d to the IPv4 underlay", enc, n, v4)
}
