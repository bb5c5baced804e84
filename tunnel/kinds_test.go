package tunnel_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/tunnel"
)

// TestKinds: a host serving two kinds of link ends opens each link on
// its kind's end, reaches it there for the other calls, lists both and
// refuses a kind it does not serve, naming the ones it does.
func TestKinds(t *testing.T) {
	ctx := context.Background()
	wg, xf := newFakeEnd("a"), newFakeEnd("a")
	k := tunnel.Kinds{tunnel.WireGuard: wg, tunnel.IPsec: xf}
	ws, xs := spec("w1"), spec("x1")
	xs.Kind = tunnel.IPsec
	for _, s := range []tunnel.Spec{ws, xs} {
		_, err := k.Open(ctx, s, tunnel.SecureRole)
		require.NoError(t, err)
	}
	assert.Contains(t, wg.ends, "w1")
	assert.NotContains(t, wg.ends, "x1")
	assert.Contains(t, xf.ends, "x1")
	require.NoError(t, k.Connect(ctx, "x1", tunnel.Public{Key: "k"}))
	assert.True(t, xf.ends["x1"].st.Connected)
	require.NoError(t, k.Activate(ctx, "x1"))
	assert.True(t, xf.ends["x1"].st.Active)
	require.NoError(t, k.Activate(ctx, "w1"))
	assert.True(t, wg.ends["w1"].st.Active)
	assert.ErrorIs(t, k.Activate(ctx, "zz"), tunnel.ErrNoLink)
	_, err := k.Verify(ctx, "x1")
	require.NoError(t, err)
	ls, err := k.List(ctx)
	require.NoError(t, err)
	assert.Len(t, ls, 2)
	require.NoError(t, k.Close(ctx, "x1"))
	assert.Empty(t, xf.ends)
	assert.Contains(t, wg.ends, "w1")

	only := tunnel.Kinds{tunnel.WireGuard: wg}
	_, err = only.Open(ctx, xs, tunnel.SecureRole)
	require.ErrorIs(t, err, tunnel.ErrInvalid)
	assert.Contains(t, err.Error(), `Spec.Kind "ipsec": this host serves wireguard`)
}
