package migration_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// Both journals keep the same contract.
func TestJournals(t *testing.T) {
	impls := map[string]func(t *testing.T) migration.Journal{
		"mem": func(*testing.T) migration.Journal { return migration.NewMemJournal() },
		"bolt": func(t *testing.T) migration.Journal {
			j, err := migration.OpenBoltJournal(filepath.Join(t.TempDir(), "j.db"))
			require.NoError(t, err)
			t.Cleanup(func() { j.Close() })
			return j
		},
	}
	for name, open := range impls {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			j := open(t)
			plan := func(vm string) migration.Plan { return migration.Plan{VM: vm, From: "secure", To: "cloud"} }
			t0 := time.Now()
			require.NoError(t, j.Create(ctx, migration.Record{ID: "m1", Plan: plan("vm1"), Started: t0}))
			require.NoError(t, j.Create(ctx, migration.Record{ID: "m2", Plan: plan("vm2"), Started: t0.Add(time.Second)}))
			assert.ErrorIs(t, j.Create(ctx, migration.Record{ID: "m3", Plan: plan("vm1")}), migration.ErrBusy, "a second unfinished migration of vm1")
			assert.ErrorIs(t, j.Create(ctx, migration.Record{ID: "m1", Plan: plan("vm9")}), migration.ErrInvalidPlan, "a reused ID")

			e := func(b migration.Block, ph migration.Phase) migration.Entry {
				return migration.Entry{Time: time.Now(), Block: b, Phase: ph, Data: map[string]string{"k": "v"}}
			}
			require.NoError(t, j.Append(ctx, "m1", e(310, migration.PhaseBegin)))
			// One write of several entries (the switchover hook's).
			require.NoError(t, j.Append(ctx, "m1", e(325, migration.PhaseBegin), e(325, migration.PhaseDone), e(335, migration.PhaseBegin), e(335, migration.PhaseFail)))
			require.NoError(t, j.Append(ctx, "m1"), "no entries, no write")
			assert.ErrorIs(t, j.Append(ctx, "nope", e(310, migration.PhaseBegin)), migration.ErrNoRecord)

			rec, es, err := j.Load(ctx, "m1")
			require.NoError(t, err)
			assert.Equal(t, "vm1", rec.Plan.VM)
			assert.False(t, rec.Done())
			require.Len(t, es, 5)
			for i, x := range es {
				assert.Equal(t, uint64(i+1), x.Seq, "entries are numbered in order")
			}
			assert.Equal(t, []migration.Block{310, 325, 325, 335, 335}, []migration.Block{es[0].Block, es[1].Block, es[2].Block, es[3].Block, es[4].Block})
			assert.Equal(t, migration.PhaseFail, es[4].Phase)
			assert.Equal(t, "v", es[1].Data["k"])
			_, _, err = j.Load(ctx, "nope")
			assert.ErrorIs(t, err, migration.ErrNoRecord)

			un, err := j.Unfinished(ctx)
			require.NoError(t, err)
			if assert.Len(t, un, 2) {
				assert.Equal(t, "m1", un[0].ID, "oldest first")
				assert.Equal(t, "m2", un[1].ID)
			}
			require.NoError(t, j.Finish(ctx, "m1", migration.RolledBack, "why"))
			assert.ErrorIs(t, j.Finish(ctx, "nope", migration.Completed, ""), migration.ErrNoRecord)
			rec, _, err = j.Load(ctx, "m1")
			require.NoError(t, err)
			assert.Equal(t, migration.RolledBack, rec.Outcome)
			assert.Equal(t, "why", rec.Reason)
			assert.False(t, rec.Finished.IsZero())
			un, err = j.Unfinished(ctx)
			require.NoError(t, err)
			if assert.Len(t, un, 1) {
				assert.Equal(t, "m2", un[0].ID)
			}
			// vm1 may migrate again.
			assert.NoError(t, j.Create(ctx, migration.Record{ID: "m3", Plan: plan("vm1")}))
		})
	}
}

// The bbolt journal survives a reopen.
func TestBoltJournalReopen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "j.db")
	j, err := migration.OpenBoltJournal(path)
	require.NoError(t, err)
	require.NoError(t, j.Create(ctx, migration.Record{ID: "m1", Plan: migration.Plan{VM: "vm1"}, Started: time.Now()}))
	require.NoError(t, j.Append(ctx, "m1", migration.Entry{Block: 310, Phase: migration.PhaseBegin}, migration.Entry{Block: 310, Phase: migration.PhaseDone}))
	require.NoError(t, j.Close())
	j, err = migration.OpenBoltJournal(path)
	require.NoError(t, err)
	defer j.Close()
	un, err := j.Unfinished(ctx)
	require.NoError(t, err)
	require.Len(t, un, 1)
	_, es, err := j.Load(ctx, "m1")
	require.NoError(t, err)
	assert.Len(t, es, 2)
	require.NoError(t, j.Append(ctx, "m1", migration.Entry{Block: 315, Phase: migration.PhaseBegin}))
	_, es, err = j.Load(ctx, "m1")
	require.NoError(t, err)
	if assert.Len(t, es, 3) {
		assert.Equal(t, uint64(3), es[2].Seq, "numbering goes on after a reopen")
	}
}

// countJournal counts the Append calls (each one durable write).
type countJournal struct {
	migration.Journal
	mu    sync.Mutex
	sizes []int
}

func (j *countJournal) Append(ctx context.Context, id string, es ...migration.Entry) error {
	j.mu.Lock()
	j.sizes = append(j.sizes, len(es))
	j.mu.Unlock()
	return j.Journal.Append(ctx, id, es...)
}

// The switchover hook's steps (325, 320 at switchover, 335, 340 if the
// subnet moved) are journaled in one write; every other entry in its
// own. Every step still has its begin and end entries.
func TestHookJournaledInOneWrite(t *testing.T) {
	for _, v := range variants() {
		t.Run(v.String(), func(t *testing.T) {
			s := migrationtest.NewSetup()
			mem := migration.NewMemJournal()
			j := &countJournal{Journal: mem}
			s.Config.Journal = j
			rep, err := newMigrator(t, s).Run(context.Background(), v.plan(s))
			require.NoError(t, err)
			hookSteps := 2 // 325, 335
			if v.mode == migration.FenceAtSwitchover {
				hookSteps++ // 320
			}
			if v.subnet {
				hookSteps++ // 340
			}
			var batches []int
			for _, n := range j.sizes {
				if n != 1 {
					batches = append(batches, n)
				}
			}
			// The hook's entries in one write; 330's end with 345's begin
			// (the resume waits for no fsync); every other entry alone.
			assert.Equal(t, []int{2 * hookSteps, 2}, batches, "one write for the hook's entries, one for 330's end and 345's begin, one per other entry")
			assert.Equal(t, 2*(len(rep.Steps)-hookSteps)-1+1, len(j.sizes), "durable writes")
			checkJournal(t, mem, rep, want{outcome: migration.Completed})
		})
	}
}
