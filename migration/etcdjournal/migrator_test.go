package etcdjournal

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/etcdlab"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// A Migrator journals a whole migration on the etcd cluster while its
// leader is killed (in the copy) and the leadership moves (in the audit):
// the migration completes and its record holds every block, begun and
// done.
func TestMigrationThroughLeaderLoss(t *testing.T) {
	c := etcdlab.Start(t, 3)
	j := open(t, c.Client(t), "ctl-a", WithTTL(testTTL), prefix())
	s := migrationtest.NewSetup()
	s.Config.Journal = j
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	killed, moved := -1, false
	s.Secure.Hypervisor.Faults.OnCall("Migrate", 1, func() {
		l, err := c.Leader(ctx)
		if assert.NoError(t, err) {
			c.Kill(l)
			killed = l
		}
	})
	s.Cloud.Auditor.Faults.OnCall("List", 1, func() {
		l, err := c.Leader(ctx)
		if !assert.NoError(t, err) {
			return
		}
		for to := range 3 {
			if to != l && to != killed {
				moved = assert.NoError(t, c.MoveLeader(ctx, to))
				return
			}
		}
	})
	m, err := migration.New(s.Config)
	require.NoError(t, err)
	rep, err := m.Run(ctx, s.Plan())
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rep.Outcome)
	require.NotEqual(t, -1, killed, "the leader was killed in the copy")
	require.True(t, moved, "the leadership moved in the audit")
	require.NoError(t, c.Restart(killed))

	rec, es, err := j.Load(ctx, rep.ID)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rec.Outcome)
	open := map[migration.Block]int{}
	for i, e := range es {
		assert.Equal(t, uint64(i+1), e.Seq, "entries numbered in order")
		if e.Phase == migration.PhaseBegin {
			open[e.Block]++
		} else {
			open[e.Block]--
		}
	}
	for b, n := range open {
		assert.Zero(t, n, "block %d: begins minus ends", b)
	}
	assert.Len(t, es, 2*len(rep.Steps), "a begin and an end per step")
}

// Controller a dies (its lease revoked, as when it expires) with its VM
// paused at the target; a standby on the same cluster claims the
// migration and completes it, and a's writes are refused from then on.
func TestStandbyTakesOverOnEtcd(t *testing.T) {
	c := etcdlab.Start(t, 3)
	cli := c.Client(t)
	p := prefix()
	a := open(t, cli, "ctl-a", WithTTL(testTTL), p)
	b := open(t, cli, "ctl-b", WithTTL(testTTL), p)
	s := migrationtest.NewSetup()
	s.Config.Journal = a
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	s.Cloud.Hypervisor.Faults.CrashOn("Resume", 1) // a dies right there
	ma, err := migration.New(s.Config)
	require.NoError(t, err)
	done := make(chan struct{})
	var rep *migration.Report
	go func() { defer close(done); rep, _ = ma.Run(ctx, s.Plan()) }()
	<-done
	require.Nil(t, rep, "a's run ended in the crash")
	s.Cloud.Hypervisor.Faults.ClearFaults()
	un, err := b.Unfinished(ctx)
	require.NoError(t, err)
	require.Len(t, un, 1)
	id := un[0].ID

	s.Config.Journal = b
	mb, err := migration.New(s.Config)
	require.NoError(t, err)
	sctx, stop := context.WithCancel(ctx)
	took := make(chan *migration.Report, 1)
	go func() {
		_ = mb.Standby(sctx, func(r *migration.Report, err error) {
			assert.NoError(t, err)
			took <- r
		})
	}()
	defer stop()
	expire(t, cli, a)
	select {
	case r := <-took:
		require.NotNil(t, r)
		assert.Equal(t, migration.Completed, r.Outcome, "reason %q", r.Reason)
	case <-ctx.Done():
		t.Fatal("the standby took nothing over")
	}
	rec, _, err := b.Load(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rec.Outcome)
	assert.Equal(t, "ctl-b", rec.Owner)
	assert.Equal(t, []string{"b"}, s.Where("vm1"))
	assert.ErrorIs(t, a.Append(ctx, id, entry(migration.BlockEnd, migration.PhaseBegin)), migration.ErrNotOwner)
}
