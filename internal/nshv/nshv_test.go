package nshv

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/lab"
)

// portAt reports whether host ns has the port and on which bridge.
func portAt(t *testing.T, ns, port string) (bool, string) {
	t.Helper()
	h, err := lab.Handle(ns)
	require.NoError(t, err)
	defer h.Close()
	lk, err := h.LinkByName(port)
	if err != nil {
		return false, ""
	}
	m := lk.Attrs().MasterIndex
	if m == 0 {
		return true, ""
	}
	br, err := h.LinkByIndex(m)
	require.NoError(t, err)
	return true, br.Attrs().Name
}

// TestMoveAndBack migrates the lab's VM from A to B (the port moves after
// the hook), aborts the unresumed VM back to A, and migrates it again.
func TestMoveAndBack(t *testing.T) {
	lab.RequireRoot(t)
	ctx := context.Background()
	l := lab.New(t)
	c := New("vm1", l.VM, "eth0")
	c.PreCopy = 20 * time.Millisecond
	a, b := c.Host(l.A, "vm0", "br0"), c.Host(l.B, "vmb0", "br0")
	require.NoError(t, c.Start(a))
	vm, err := a.Lookup(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Running, vm.State)
	_, err = b.Lookup(ctx, "vm1")
	assert.ErrorIs(t, err, hypervisor.ErrNotFound)

	migrate := func() {
		ep, err := b.PrepareIncoming(ctx, vm)
		require.NoError(t, err)
		in, err := b.Lookup(ctx, "vm1")
		require.NoError(t, err)
		assert.Equal(t, hypervisor.Incoming, in.State)
		assert.Equal(t, vm.NICs[0].MAC, in.NICs[0].MAC)
		ok, br := portAt(t, l.B, "vmb0")
		assert.True(t, ok && br == "br0", "incoming port on B's br0")
		hooked := false
		_, err = a.Migrate(ctx, "vm1", ep, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error {
			hooked = true
			src, err := a.Lookup(ctx, "vm1")
			require.NoError(t, err)
			assert.Equal(t, hypervisor.Paused, src.State)
			ok, _ := portAt(t, l.A, "vm0")
			assert.True(t, ok, "the port moves only after the hook")
			return nil
		}})
		require.NoError(t, err)
		assert.True(t, hooked)
		ok, br = portAt(t, l.B, "vmb0")
		assert.True(t, ok && br == "br0", "VM's port on B's br0")
		ok, _ = portAt(t, l.A, "vm0")
		assert.False(t, ok, "VM's port left A")
		_, err = a.Lookup(ctx, "vm1")
		assert.ErrorIs(t, err, hypervisor.ErrNotFound)
		// B reaches the VM on its bridge: the VM kept its address.
		require.NoError(t, lab.WaitReachable(l.B, lab.VMAddr, 10*time.Second))
	}
	migrate()
	require.NoError(t, b.Abort(ctx, "vm1"))
	src, err := a.Lookup(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Running, src.State)
	require.NoError(t, lab.WaitReachable(l.Peer, lab.VMAddr, 10*time.Second), "back at A")

	migrate()
	require.NoError(t, b.Resume(ctx, "vm1"))
	got, err := b.Lookup(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Running, got.State)
	assert.Equal(t, l.B, c.At())
	assert.NoError(t, b.Abort(ctx, "vm1"), "abort of a running VM is a no-op")
	assert.Equal(t, l.B, c.At())

	// A failing hook leaves the VM running at the source, port unmoved.
	c2 := New("vm1", l.VM, "eth0")
	b2, a2 := c2.Host(l.B, "vmb0", "br0"), c2.Host(l.A, "vm0", "br0")
	require.NoError(t, c2.Start(b2))
	ep, err := a2.PrepareIncoming(ctx, got)
	require.NoError(t, err)
	_, err = b2.Migrate(ctx, "vm1", ep, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error { return assert.AnError }})
	assert.ErrorIs(t, err, hypervisor.ErrSwitchoverHook)
	got, err = b2.Lookup(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Running, got.State)
	require.NoError(t, a2.Abort(ctx, "vm1"))
	ok, _ := portAt(t, l.A, "vm0")
	assert.False(t, ok, "the incoming port is gone after Abort")
}
