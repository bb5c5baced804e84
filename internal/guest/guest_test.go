package guest_test

import (
	"context"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
)

// TestParseStatus covers both formats the agent prints.
func TestParseStatus(t *testing.T) {
	s, err := guest.ParseStatus("boot=abc counter=42\n")
	if err != nil || s != (guest.Status{BootID: "abc", Counter: 42}) {
		t.Fatalf("status port line: %+v %v", s, err)
	}
	s, err = guest.ParseStatus("sealift-counter 7 boot=xyz")
	if err != nil || s != (guest.Status{BootID: "xyz", Counter: 7}) {
		t.Fatalf("console line: %+v %v", s, err)
	}
	if _, err := guest.ParseStatus("counter=3"); err == nil {
		t.Fatal("line without boot id accepted")
	}
}

// TestGuestServes boots the guest on host A's bridge and checks every
// service the agent promises: ping, echo, a counter that grows on the
// status port and on the serial console, and the same boot id on both;
// the guest is dual-stack (sealift.ip6/gw6): ping, echo and status over
// IPv6 too, from a peer on its LAN and from one behind the core (its
// IPv6 default route).
func TestGuestServes(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt package qemu-system-x86)")
	}
	if _, err := exec.LookPath("ping"); err != nil {
		lab.Missing(t, "ping (apt package iputils-ping)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	img, err := guest.Build(ctx, guest.WithCacheDir(t.TempDir()))
	if err != nil {
		lab.Missing(t, err.Error())
	}
	l := lab.New(t)
	if err := l.DualStack(false); err != nil {
		t.Fatal(err)
	}
	h, err := qemu.New(qemu.WithHost(l.A), qemu.WithStateDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	addr, addr6 := netip.MustParseAddr("10.1.0.30"), netip.MustParseAddr("fd00:1::30")
	cfg := img.Config("g1", guest.Net{Addr: netip.PrefixFrom(addr, 24), Gateway: lab.Gateway,
		Addr6: netip.PrefixFrom(addr6, 64), Gateway6: lab.Gateway6,
		MAC: guest.MAC(addr), Tap: "tapg1", Bridge: "br0"})
	if _, err := h.Start(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	s1, err := guest.WaitReady(ctx, l.A, addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := guest.Ping(ctx, l.Peer, addr, 3); err != nil {
		t.Fatal(err)
	}
	if err := guest.Echo(ctx, l.Peer, addr, []byte("hello sealift")); err != nil {
		t.Fatal(err)
	}
	for _, from := range []string{l.Peer, l.Peer2} {
		if n, err := lab.Ping(from, addr6, 3, 2*time.Second); err != nil || n != 3 {
			t.Fatalf("ping %s from %s: %d of 3 replies, %v", addr6, from, n, err)
		}
	}
	if err := guest.Echo(ctx, l.Peer2, addr6, []byte("hello sealift over IPv6")); err != nil {
		t.Fatal(err)
	}
	s6, err := guest.Query(ctx, l.Peer2, addr6)
	if err != nil {
		t.Fatal(err)
	}
	if s6.BootID != s1.BootID {
		t.Fatalf("status over IPv6 %+v, over IPv4 %+v: not the same guest", s6, s1)
	}
	s2, err := guest.Query(ctx, l.A, addr)
	if err != nil {
		t.Fatal(err)
	}
	if s2.BootID != s1.BootID || s2.Counter <= s1.Counter {
		t.Fatalf("status went %+v -> %+v, want same boot id and a larger counter", s1, s2)
	}
	c, _ := h.Config("g1")
	_, last, err := guest.SerialCounters(c.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if last.BootID != s1.BootID || last.Counter == 0 {
		t.Fatalf("serial console shows %+v, status port %+v", last, s2)
	}
	t.Logf("guest %s: boot %s, counter %d -> %d, serial %d", addr, s1.BootID, s1.Counter, s2.Counter, last.Counter)
}

// BenchmarkBoot measures QEMU start → agent answering on its status port.
func BenchmarkBoot(b *testing.B) {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(b, "qemu-system-x86_64 (apt package qemu-system-x86)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := guest.Build(ctx)
	if err != nil {
		lab.Missing(b, err.Error())
	}
	l := lab.New(b)
	h, err := qemu.New(qemu.WithHost(l.A), qemu.WithStateDir(b.TempDir()))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	addr := netip.MustParseAddr("10.1.0.35")
	cfg := img.Config("boot", guest.Net{Addr: netip.PrefixFrom(addr, 24), MAC: guest.MAC(addr), Tap: "tapboot", Bridge: "br0"})
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := h.Start(ctx, cfg); err != nil {
			b.Fatal(err)
		}
		if _, err := guest.WaitReady(ctx, l.A, addr); err != nil {
			b.Fatal(err)
		}
		total += time.Since(t0)
		if err := h.Stop(ctx, "boot"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "boot-ms")
}
