package etcdjournal

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/etcdlab"
	"github.com/sealift/sealift/migration"
)

// A controller cut off from etcd stops owning (Owning ends) before a
// standby sees its migration orphaned; once the partition heals, its
// writes are refused, by the journal at once and by etcd itself (the
// transaction's compare on the owner's key and lease), and the standby
// finishes the migration.
func TestPartitionedOwnerRefused(t *testing.T) {
	c := etcdlab.Start(t, 3)
	proxy := c.Proxy(t, 0)
	a := open(t, c.Client(t, proxy.Endpoint()), "ctl-a", WithTTL(testTTL))
	b := open(t, c.Client(t), "ctl-b", WithTTL(testTTL))
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()

	require.NoError(t, a.Create(ctx, record("m1", "vm1")))
	require.NoError(t, a.Append(ctx, "m1", entry(310, migration.PhaseBegin), entry(310, migration.PhaseDone)))
	orphans, err := b.Orphans(ctx)
	require.NoError(t, err)
	ownEnded := make(chan time.Time, 1)
	go func() {
		<-a.Owning().Done()
		ownEnded <- time.Now()
	}()

	cut := time.Now()
	proxy.Cut()
	var orphaned time.Time
	select {
	case id := <-orphans:
		orphaned = time.Now()
		require.Equal(t, "m1", id)
	case <-ctx.Done():
		t.Fatal("the standby saw no orphan")
	}
	var ended time.Time
	select {
	case ended = <-ownEnded:
	default:
		t.Fatalf("the standby saw the orphan %s after the cut, and the cut-off owner still owned it", orphaned.Sub(cut))
	}
	t.Logf("after the cut: Owning ended at +%s, the standby saw the orphan at +%s (TTL %s, margin %s)",
		ended.Sub(cut).Round(time.Millisecond), orphaned.Sub(cut).Round(time.Millisecond), a.ttl, a.margin)
	assert.True(t, ended.Before(orphaned), "Owning ended at %s, after the orphan was seen at %s", ended, orphaned)
	assert.ErrorIs(t, context.Cause(a.Owning()), migration.ErrNotOwner, "Owning's cause")
	require.NoError(t, b.Claim(ctx, "m1"), "the standby claims the orphan")

	proxy.Heal()
	// The journal refuses at once...
	assert.ErrorIs(t, a.Append(ctx, "m1", entry(315, migration.PhaseBegin)), migration.ErrNotOwner, "Append")
	assert.ErrorIs(t, a.Finish(ctx, "m1", migration.Completed, ""), migration.ErrNotOwner, "Finish")
	assert.ErrorIs(t, a.Create(ctx, record("m2", "vm2")), migration.ErrNotOwner, "Create")
	// ...and etcd too, when the journal does not check first.
	a.trustServer = true
	err = a.Append(ctx, "m1", entry(315, migration.PhaseBegin))
	if assert.ErrorIs(t, err, migration.ErrNotOwner, "Append sent to etcd") {
		assert.Contains(t, err.Error(), "ctl-b", "names the new owner")
	}
	assert.ErrorIs(t, a.Finish(ctx, "m1", migration.Completed, ""), migration.ErrNotOwner, "Finish sent to etcd")
	assert.ErrorIs(t, a.Create(ctx, record("m2", "vm2")), migration.ErrNotOwner, "Create sent to etcd (the lease is gone)")
	assert.ErrorIs(t, a.Claim(ctx, "m1"), migration.ErrBusy, "Claim sent to etcd")

	r, es, err := b.Load(ctx, "m1")
	require.NoError(t, err)
	assert.Len(t, es, 2, "nothing of the old owner's was written")
	assert.Equal(t, "ctl-b", r.Owner)
	assert.False(t, r.Done())
	_, _, err = b.Load(ctx, "m2")
	assert.ErrorIs(t, err, migration.ErrNoRecord, "the old owner's Create")

	require.NoError(t, b.Append(ctx, "m1", entry(315, migration.PhaseBegin)), "the new owner's Append")
	require.NoError(t, b.Finish(ctx, "m1", migration.RolledBack, "taken over"), "the new owner's Finish")
	_, es, err = b.Load(ctx, "m1")
	require.NoError(t, err)
	if assert.Len(t, es, 3) {
		assert.Equal(t, uint64(3), es[2].Seq)
	}
}

// Close revokes the lease: a standby sees the controller's unfinished
// migrations at once, not a TTL later; the closed journal's writes are
// refused.
func TestCloseOrphansAtOnce(t *testing.T) {
	c := etcdlab.Start(t, 3)
	cli := c.Client(t)
	a := open(t, cli, "ctl-a", WithTTL(30*time.Second))
	b := open(t, cli, "ctl-b", WithTTL(30*time.Second))
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	require.NoError(t, a.Create(ctx, record("m1", "vm1")))
	orphans, err := b.Orphans(ctx)
	require.NoError(t, err)
	start := time.Now()
	require.NoError(t, a.Close())
	select {
	case id := <-orphans:
		assert.Equal(t, "m1", id)
		assert.Less(t, time.Since(start), 5*time.Second, "the orphan came with the revocation")
	case <-ctx.Done():
		t.Fatal("no orphan after Close")
	}
	assert.ErrorIs(t, context.Cause(a.Owning()), migration.ErrNotOwner)
	assert.ErrorIs(t, a.Append(ctx, "m1", entry(310, migration.PhaseBegin)), migration.ErrNotOwner)
	require.NoError(t, b.Claim(ctx, "m1"))
	assert.NoError(t, a.Close(), "Close again")
}
