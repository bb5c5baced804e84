package wireguard

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// sendOneWay sends n datagrams of size bytes from netns from to addr, in
// netns to, where a socket reads them and answers nothing; it returns how
// many arrived.
func sendOneWay(t *testing.T, from, to string, addr netip.AddrPort, size, n int) int {
	t.Helper()
	var sink, src net.PacketConn
	if err := nsutil.Do(to, func() (err error) { sink, err = net.ListenPacket("udp", addr.String()); return }); err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	if err := nsutil.Do(from, func() (err error) { src, err = net.ListenPacket("udp", ":0"); return }); err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	payload := make([]byte, size)
	buf := make([]byte, size+64)
	got := 0
	for range n {
		if _, err := src.WriteTo(payload, net.UDPAddrFromAddrPort(addr)); err != nil {
			t.Fatal(err)
		}
		_ = sink.SetReadDeadline(time.Now().Add(time.Second))
		if k, _, err := sink.ReadFrom(buf); err == nil && k == size {
			got++
		}
	}
	return got
}

// TestEndStats: an End's Stats reads its own device's counters: after
// datagrams crossed the link one way (peer at A → VM at B), the sending
// end's transmit counter and the receiving end's receive counter rose by
// at least their payload while the opposite counters rose by far less
// (so swapped or foreign counters fail), both ends report a recent
// handshake, an end not connected reports zeros, and an unknown link is
// ErrNoLink.
func TestEndStats(t *testing.T) {
	w := newWorld(t)
	a, b := NewEnd(w.l.A, WithBackend(Userspace)), NewEnd(w.l.B, WithBackend(Userspace))
	pair := tunnel.Pair{Secure: a, Remote: b}
	ctx := context.Background()
	spec := w.spec()
	start := time.Now().Add(-time.Second) // the kernel's clock, in whole seconds
	if _, err := pair.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	if err := pair.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := pair.Verify(ctx, spec.ID); err != nil { // both sessions live
		t.Fatal(err)
	}
	stats := func(e *End) tunnel.EndStats {
		t.Helper()
		s, err := e.Stats(ctx, spec.ID)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a0, b0 := stats(a), stats(b)
	for name, s := range map[string]tunnel.EndStats{"secure": a0, "remote": b0} {
		if s.LastHandshake.Before(start) || s.LastHandshake.After(time.Now()) {
			t.Errorf("%s end: last handshake %v, want since %v", name, s.LastHandshake, start)
		}
		if s.TxBytes == 0 || s.RxBytes == 0 {
			t.Errorf("%s end after Verify: %+v, want both counters above 0", name, s)
		}
	}
	const size, n = 1200, 20
	sendOneWay(t, w.l.Peer, w.vm, netip.AddrPortFrom(vmHost.Addr(), 7003), 64, 3) // warm-up: ARP on the way
	a0, b0 = stats(a), stats(b)
	if got := sendOneWay(t, w.l.Peer, w.vm, netip.AddrPortFrom(vmHost.Addr(), 7003), size, n); got != n {
		t.Fatalf("%d of %d datagrams reached the VM through the link", got, n)
	}
	a1, b1 := stats(a), stats(b)
	sent := uint64(size * n)
	if d := a1.TxBytes - a0.TxBytes; d < sent {
		t.Errorf("secure end sent %d bytes more, want ≥ %d", d, sent)
	}
	if d := b1.RxBytes - b0.RxBytes; d < sent {
		t.Errorf("remote end received %d bytes more, want ≥ %d", d, sent)
	}
	if d := a1.RxBytes - a0.RxBytes; d >= sent/4 {
		t.Errorf("secure end received %d bytes more for one-way traffic toward the VM (its counters swapped?)", d)
	}
	if d := b1.TxBytes - b0.TxBytes; d >= sent/4 {
		t.Errorf("remote end sent %d bytes more for one-way traffic toward the VM (its counters swapped?)", d)
	}

	// An end without its peer, and an unknown one.
	lone := w.spec()
	if _, err := a.Open(ctx, lone, tunnel.SecureRole); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close(context.Background(), lone.ID) })
	if s, err := a.Stats(ctx, lone.ID); err != nil || s != (tunnel.EndStats{}) {
		t.Errorf("an end not connected: %+v, %v; want zeros", s, err)
	}
	if _, err := a.Stats(ctx, "zz9"); !errors.Is(err, tunnel.ErrNoLink) {
		t.Errorf("an unknown link: %v, want ErrNoLink", err)
	}
}
