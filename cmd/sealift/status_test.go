package main

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// sealift status on a shared journal: an unfinished migration is
// "running" while its owner's lease lives, "orphaned" once it is gone,
// and its outcome once finished; the last journal entry is shown.
func TestStatusShared(t *testing.T) {
	ctx := context.Background()
	store := migrationtest.NewSharedStore()
	a, b := store.Controller("ctl-a"), store.Controller("ctl-b")
	rec := func(id, vm string) migration.Record {
		return migration.Record{ID: id, Plan: migration.Plan{VM: vm, From: "secure", To: "cloud"}, Started: time.Now()}
	}
	require.NoError(t, a.Create(ctx, rec("m1", "vm1")))
	require.NoError(t, a.Append(ctx, "m1", migration.Entry{Block: migration.BlockMigrate, Phase: migration.PhaseBegin}))
	require.NoError(t, b.Create(ctx, rec("m2", "vm2")))
	require.NoError(t, b.Finish(ctx, "m2", migration.Completed, ""))
	states := func() map[string]MigrationStatus {
		sts, err := status(ctx, b)
		require.NoError(t, err)
		out := map[string]MigrationStatus{}
		for _, s := range sts {
			out[s.ID] = s
		}
		return out
	}
	st := states()
	assert.Equal(t, "running", st["m1"].State)
	assert.Equal(t, "ctl-a", st["m1"].Owner)
	assert.Equal(t, "330 migrate begin", st["m1"].Last)
	assert.Equal(t, "completed", st["m2"].State)
	a.Expire()
	assert.Equal(t, "orphaned", states()["m1"].State)

	// A batch: its own record lists its members' VMs; members name it.
	bj := migration.NewMemJournal()
	brec := rec("b1", "batch:b1")
	brec.Plan.Batch, brec.Plan.Subnet = "b1", &migration.Subnet{Members: []string{"vm1", "vm2"}}
	require.NoError(t, bj.Create(ctx, brec))
	mrec := rec("b1-1", "vm1")
	mrec.Plan.Batch = "b1"
	require.NoError(t, bj.Create(ctx, mrec))
	sts, err := status(ctx, bj)
	require.NoError(t, err)
	require.Len(t, sts, 2)
	byID := map[string]MigrationStatus{sts[0].ID: sts[0], sts[1].ID: sts[1]}
	assert.Equal(t, "vm1,vm2", byID["b1"].VM)
	assert.Equal(t, "b1", byID["b1"].Batch)
	assert.Equal(t, "vm1", byID["b1-1"].VM)
	assert.Equal(t, "b1", byID["b1-1"].Batch)

	// A journal of one controller cannot tell: "unfinished".
	mj := migration.NewMemJournal()
	require.NoError(t, mj.Create(ctx, rec("m3", "vm3")))
	sts, err = status(ctx, mj)
	require.NoError(t, err)
	require.Len(t, sts, 1)
	assert.Equal(t, "unfinished", sts[0].State)
}
