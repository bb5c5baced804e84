package tunnel_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/tunnel"
)

// statsEnd is a fakeEnd that reports counters for the ends it holds.
type statsEnd struct {
	*fakeEnd
	stats tunnel.EndStats
}

func (s statsEnd) Stats(_ context.Context, id string) (tunnel.EndStats, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ends[id]; !ok {
		return tunnel.EndStats{}, fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	return s.stats, nil
}

// TestKindsStats: Kinds asks the end of the link's kind for its counters
// and skips ends that report none; a link no reporting end holds is
// ErrNoLink.
func TestKindsStats(t *testing.T) {
	ctx := context.Background()
	hs := time.Unix(1700000000, 0)
	wg := statsEnd{newFakeEnd("a"), tunnel.EndStats{RxBytes: 10, TxBytes: 20, LastHandshake: hs}}
	xf := statsEnd{newFakeEnd("a"), tunnel.EndStats{RxBytes: 30, TxBytes: 40}}
	plain := newFakeEnd("a") // no Stats
	ws, xs, ps := spec("w1"), spec("x1"), spec("p1")
	xs.Kind = tunnel.IPsec
	_, err := wg.Open(ctx, ws, tunnel.SecureRole)
	require.NoError(t, err)
	_, err = xf.Open(ctx, xs, tunnel.RemoteRole)
	require.NoError(t, err)
	_, err = plain.Open(ctx, ps, tunnel.SecureRole)
	require.NoError(t, err)
	k := tunnel.Kinds{tunnel.WireGuard: wg, tunnel.IPsec: xf, "other": plain}

	st, err := k.Stats(ctx, "w1")
	require.NoError(t, err)
	assert.Equal(t, wg.stats, st)
	st, err = k.Stats(ctx, "x1")
	require.NoError(t, err)
	assert.Equal(t, xf.stats, st)
	_, err = k.Stats(ctx, "p1")
	assert.ErrorIs(t, err, tunnel.ErrNoLink, "a link held by an end without counters")
	_, err = k.Stats(ctx, "zz")
	assert.ErrorIs(t, err, tunnel.ErrNoLink)
}
