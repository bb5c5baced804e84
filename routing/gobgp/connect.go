package gobgp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/sealift/sealift/internal/nsutil"
)

// Connect joins two speakers that run in network namespaces other than
// the program's. GoBGP dials its neighbours from goroutines that do not
// run in the watcher's namespace, so such neighbours are passive; Connect
// opens one TCP connection from b's host (from bAddr) to a's listener and
// one from a's host (from aAddr) to b's listener, and copies bytes between
// them: each speaker sees an incoming session from the other's address,
// carried on the network between aAddr and bAddr. It returns once both
// sessions are established; close tears the sessions down.
func Connect(ctx context.Context, a *Watcher, aAddr netip.Addr, b *Watcher, bAddr netip.Addr) (close func(), err error) {
	if err := waitState(ctx, a, bAddr, api.PeerState_ACTIVE); err != nil {
		return nil, err
	}
	if err := waitState(ctx, b, aAddr, api.PeerState_ACTIVE); err != nil {
		return nil, err
	}
	dial := func(host string, from, to netip.Addr) (net.Conn, error) {
		var c net.Conn
		err := nsutil.Do(host, func() (err error) {
			d := net.Dialer{LocalAddr: &net.TCPAddr{IP: from.AsSlice()}, Timeout: 5 * time.Second}
			c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(to, 179).String())
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("gobgp: connect %s -> %s:179 in %q: %w", from, to, host, err)
		}
		return c, nil
	}
	toA, err := dial(b.host, bAddr, aAddr) // a's session: bytes a writes arrive here
	if err != nil {
		return nil, err
	}
	toB, err := dial(a.host, aAddr, bAddr) // b's session
	if err != nil {
		toA.Close()
		return nil, err
	}
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		defer wg.Done()
		_, _ = io.Copy(dst, src)
		_ = dst.Close()
		_ = src.Close()
	}
	wg.Add(2)
	go pipe(toB, toA)
	go pipe(toA, toB)
	closeAll := func() { toA.Close(); toB.Close(); wg.Wait() }
	if err := errors.Join(waitState(ctx, a, bAddr, api.PeerState_ESTABLISHED),
		waitState(ctx, b, aAddr, api.PeerState_ESTABLISHED)); err != nil {
		closeAll()
		return nil, err
	}
	return closeAll, nil
}

// waitState polls w's session with peer until it is in state.
func waitState(ctx context.Context, w *Watcher, peer netip.Addr, state api.PeerState_SessionState) error {
	for {
		var got api.PeerState_SessionState
		err := w.Server().ListPeer(ctx, &api.ListPeerRequest{Address: peer.String()}, func(p *api.Peer) {
			got = p.GetState().GetSessionState()
		})
		if err != nil {
			return fmt.Errorf("gobgp: session with %s: %w", peer, err)
		}
		if got == state {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("gobgp: session with %s is %v, want %v: %w", peer, got, state, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
