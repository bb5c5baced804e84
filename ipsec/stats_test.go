package ipsec

import (
	"context"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// TestEndStatsOnHost runs on this machine's kernel (policies, no ESP): an
// end opened but not connected has zero counters; an unknown link and a
// bad ID are refused.
func TestEndStatsOnHost(t *testing.T) {
	lab.RequireRoot(t)
	if klab.InGuest() {
		t.Skip("TestGuestEndStats covers the guest")
	}
	l := lab.New(t)
	ctx := context.Background()
	a := NewEnd(l.A)
	spec := specFor(l, "st1")
	_, err := a.Open(ctx, spec, tunnel.SecureRole)
	require.NoError(t, err)
	t.Cleanup(func() { _ = a.Close(context.Background(), spec.ID) })
	s, err := a.Stats(ctx, spec.ID)
	require.NoError(t, err)
	require.Equal(t, tunnel.EndStats{}, s)
	_, err = a.Stats(ctx, "zz9")
	require.ErrorIs(t, err, tunnel.ErrNoLink)
	_, err = a.Stats(ctx, "Bad!")
	require.ErrorIs(t, err, tunnel.ErrInvalid)
}

// sendOneWay sends n datagrams of size bytes from netns from to addr, in
// netns to, where a socket reads them and answers nothing; it returns how
// many arrived.
func sendOneWay(t *testing.T, from, to string, addr netip.AddrPort, size, n int) int {
	t.Helper()
	var sink, src net.PacketConn
	require.NoError(t, nsutil.Do(to, func() (err error) { sink, err = net.ListenPacket("udp", addr.String()); return }))
	defer sink.Close()
	require.NoError(t, nsutil.Do(from, func() (err error) { src, err = net.ListenPacket("udp", ":0"); return }))
	defer src.Close()
	payload := make([]byte, size)
	buf := make([]byte, size+64)
	got := 0
	for range n {
		_, err := src.WriteTo(payload, net.UDPAddrFromAddrPort(addr))
		require.NoError(t, err)
		_ = sink.SetReadDeadline(time.Now().Add(time.Second))
		if k, _, err := sink.ReadFrom(buf); err == nil && k == size {
			got++
		}
	}
	return got
}

// TestGuestEndStats: two Ends' Stats read their own host's SAs by
// direction: after datagrams crossed the link one way (peer at A → VM at
// B), the secure end's transmit counter and the remote end's receive
// counter rose by at least their payload while the opposite counters rose
// by far less (swapped or foreign counters fail); XFRM has no handshake.
func TestGuestEndStats(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := movedVM(t)
	l := w.l
	a, b := NewEnd(l.A), NewEnd(l.B)
	pair := tunnel.Pair{Secure: a, Remote: b}
	spec := specFor(l, "st2")
	_, err := pair.Prepare(ctx, spec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	require.NoError(t, pair.Activate(ctx, spec.ID))
	stats := func(e *End) tunnel.EndStats {
		t.Helper()
		s, err := e.Stats(ctx, spec.ID)
		require.NoError(t, err)
		require.True(t, s.LastHandshake.IsZero(), "an XFRM end has no handshake")
		return s
	}
	const size, n = 1200, 20
	sendOneWay(t, l.Peer, w.vm, netip.AddrPortFrom(lab.VMAddr, 7003), 64, 3) // warm-up: ARP on the way
	a0, b0 := stats(a), stats(b)
	require.Equal(t, n, sendOneWay(t, l.Peer, w.vm, netip.AddrPortFrom(lab.VMAddr, 7003), size, n), "datagrams through the link")
	a1, b1 := stats(a), stats(b)
	sent := uint64(size * n)
	require.GreaterOrEqual(t, a1.TxBytes-a0.TxBytes, sent, "the secure end's sending SA")
	require.GreaterOrEqual(t, b1.RxBytes-b0.RxBytes, sent, "the remote end's receiving SA")
	require.Less(t, a1.RxBytes-a0.RxBytes, sent/4, "the secure end received for one-way traffic toward the VM (counters swapped?)")
	require.Less(t, b1.TxBytes-b0.TxBytes, sent/4, "the remote end sent for one-way traffic toward the VM (counters swapped?)")
	t.Logf("secure end %+v -> %+v; remote end %+v -> %+v", a0, a1, b0, b1)
}
