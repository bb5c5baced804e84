package wireguard

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// TestHostGone: once a link's Remote host (netns) is gone, Activate (of a
// prepared and of an active link) and Verify fail with host.ErrNotFound
// naming it; Close still succeeds and cleans the end that is left.
func TestHostGone(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil)
	ctx := context.Background()
	active, err := lk.Prepare(ctx, w.spec())
	require.NoError(t, err)
	require.NoError(t, lk.Activate(ctx, active.ID))
	prepared, err := lk.Prepare(ctx, w.spec())
	require.NoError(t, err)

	require.NoError(t, delNS(w.l.B))
	calls := []struct {
		name string
		run  func() error
		also error
	}{
		{"Activate prepared", func() error { return lk.Activate(ctx, prepared.ID) }, nil},
		{"Activate active", func() error { return lk.Activate(ctx, active.ID) }, nil},
		{"Verify", func() error { _, err := lk.Verify(ctx, active.ID); return err }, tunnel.ErrNotProven},
	}
	for _, c := range calls {
		t.Run(c.name, func(t *testing.T) {
			err := c.run()
			require.Error(t, err)
			assert.ErrorIs(t, err, host.ErrNotFound)
			assert.ErrorContains(t, err, w.l.B)
			if c.also != nil {
				assert.ErrorIs(t, err, c.also)
			}
		})
	}
	for _, l := range []tunnel.Link{prepared, active} {
		assert.NoError(t, lk.Close(ctx, l.ID), "Close %s after its Remote host went away", l.ID)
	}
	links, err := lk.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, links)
	// A keeps neither link's device.
	h, err := lab.Handle(w.l.A)
	require.NoError(t, err)
	defer h.Close()
	for _, l := range []tunnel.Link{prepared, active} {
		_, err := h.LinkByName(l.SecureDevice)
		assert.Error(t, err, "device %s left at A", l.SecureDevice)
	}
}
