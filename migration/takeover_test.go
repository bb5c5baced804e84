package migration_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// TestTakeover: controller a's lease ends in the middle of a migration
// (at each of these calls); a stops there, touches no host after (no call
// of any fake), reports Abandoned with an error wrapping ErrNotOwner, and
// leaves the record unfinished; standby b claims it and finishes it as
// the hypervisors say (rolled back before the target resumed, completed
// after), and ends with exactly one VM, nothing left over.
func TestTakeover(t *testing.T) {
	cases := []crashCase{
		{"link", "Prepare", migration.RolledBack, "a"},
		{"fence:a", "Fence", migration.RolledBack, "a"},
		{"hv:a", "Migrate", migration.RolledBack, "a"},
		{"hv:b", "Resume", migration.Completed, "b"},
		{"link", "Verify", migration.Completed, "b"},
		{"audit:b", "Reset", migration.Completed, "b"},
		{"routing", "Wait", migration.Completed, "b"},
	}
	for _, c := range cases {
		for _, v := range []variant{{migration.FenceAtSwitchover, "wireguard", true}, {migration.FenceBeforeCopy, "wireguard", true}} {
			t.Run(c.fake+"."+c.method+"/"+v.String(), func(t *testing.T) { takeover(t, c, v) })
		}
	}
}

func takeover(t *testing.T, c crashCase, v variant) {
	ctx := context.Background()
	store := migrationtest.NewSharedStore()
	a, b := store.Controller("ctl-a"), store.Controller("ctl-b")
	s := migrationtest.NewSetup()
	s.Cloud.Auditor.SetConns(plainConn)
	s.Config.Journal = a
	p := v.plan(s)
	f := faultsOf(s)[c.fake]
	var callsAtExpiry int
	f.OnCall(c.method, 1, func() {
		a.Expire()
		callsAtExpiry = len(s.Calls())
	})
	ma := newMigrator(t, s)
	rep, err := ma.Run(ctx, p)
	require.NotZero(t, callsAtExpiry, "a's lease ended at %s.%s", c.fake, c.method)
	require.ErrorIs(t, err, migration.ErrNotOwner)
	require.NotNil(t, rep)
	assert.Equal(t, migration.Abandoned, rep.Outcome, "reason %q", rep.Reason)
	// Calls after the lease ended: only those of work already running
	// beside the one that saw it end (the switchover hook activates the
	// link beside the fence; the source's fence is released and lifted
	// while the target resumes), refused by their context.
	for _, call := range s.Calls()[callsAtExpiry:] {
		beside := call.Fake == "link" && call.Method == "Activate" || call.Fake == "fence:a" && (call.Method == "Release" || call.Method == "Lift")
		onItsWay := beside && call.CtxDone
		assert.True(t, onItsWay, "a called %s after its lease ended", call)
	}
	un, err := b.Unfinished(ctx)
	require.NoError(t, err)
	require.Len(t, un, 1, "unfinished after a stopped")
	assert.Equal(t, "ctl-a", un[0].Owner)

	f.ClearFaults()
	s.Config.Journal = b
	mb := newMigrator(t, s)
	sctx, stop := context.WithCancel(ctx)
	var (
		mu   sync.Mutex
		reps []*migration.Report
		errs []error
	)
	done := make(chan error, 1)
	go func() {
		done <- mb.Standby(sctx, func(r *migration.Report, err error) {
			mu.Lock()
			reps, errs = append(reps, r), append(errs, err)
			mu.Unlock()
			stop()
		})
	}()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		stop()
		t.Fatal("the standby took over nothing in 10 s")
	}
	require.Len(t, reps, 1)
	rec, _, err := b.Load(ctx, rep.ID)
	require.NoError(t, err)
	assert.True(t, rec.Done(), "the standby ended the migration")
	assert.Equal(t, c.want, rec.Outcome, "standby's outcome (err %v, reason %q)", errs[0], rec.Reason)
	assert.Equal(t, "ctl-b", rec.Owner, "owner after the takeover")
	w := want{outcome: c.want, host: c.host, state: hypervisor.Running, recovered: true}
	checkEnd(t, s, b, reps[0], errs[0], w)

	// a, with its lease gone, can write nothing more.
	assert.ErrorIs(t, a.Append(ctx, rep.ID, migration.Entry{Block: migration.BlockEnd, Phase: migration.PhaseBegin}), migration.ErrNotOwner)
}

// TestStandbyLeavesLiveOwners: Recover and Standby on another controller
// leave a migration whose owner's lease lives; Standby needs a shared
// journal.
func TestStandbyLeavesLiveOwners(t *testing.T) {
	ctx := context.Background()
	store := migrationtest.NewSharedStore()
	a, b := store.Controller("ctl-a"), store.Controller("ctl-b")
	s := migrationtest.NewSetup()
	s.Config.Journal = a
	p := s.Plan()
	f := &s.Cloud.Hypervisor.Faults
	f.CrashOn("Resume", 1) // a dies in the middle, its lease still alive
	ma := newMigrator(t, s)
	go ma.Run(ctx, p)
	require.Eventually(t, func() bool { return f.Injected() == 1 }, 5*time.Second, 10*time.Millisecond)
	f.ClearFaults()

	s.Config.Journal = b
	mb := newMigrator(t, s)
	reps, err := mb.Recover(ctx)
	require.NoError(t, err)
	assert.Empty(t, reps, "Recover took a migration whose owner lives")
	sctx, stop := context.WithTimeout(ctx, 200*time.Millisecond)
	defer stop()
	took := 0
	require.ErrorIs(t, mb.Standby(sctx, func(*migration.Report, error) { took++ }), context.DeadlineExceeded)
	assert.Zero(t, took, "Standby took a migration whose owner lives")
	assert.Equal(t, hypervisor.Paused, s.State("b", "vm1"), "untouched: still paused at b")

	// A standby whose own lease ends stops: it could claim nothing.
	done := make(chan error, 1)
	go func() { done <- mb.Standby(ctx, nil) }()
	b.Expire()
	select {
	case err := <-done:
		assert.ErrorIs(t, err, migration.ErrNotOwner)
	case <-time.After(5 * time.Second):
		t.Fatal("Standby went on after its lease ended")
	}

	s.Config.Journal = migration.NewMemJournal()
	assert.Error(t, newMigrator(t, s).Standby(ctx, nil), "Standby on a journal of one controller")
}
