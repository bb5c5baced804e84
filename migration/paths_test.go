package migration_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/tunnel"
)

// A Migrate that fails after the switchover (the VM is complete at the
// target; the reply was lost) rolls forward: the migration completes,
// and the report says what happened.
func TestRollForwardWhenMigrateFailsAfterSwitchover(t *testing.T) {
	for _, v := range variants() {
		t.Run(v.String(), func(t *testing.T) {
			s := migrationtest.NewSetup()
			s.Cloud.Auditor.SetConns(plainConn)
			s.Secure.Hypervisor.FailAfter("Migrate", 1, errBoom)
			m, j := journaled(t, s)
			rep, err := m.Run(context.Background(), v.plan(s))
			require.Equal(t, 1, s.Secure.Hypervisor.Injected(), "the fault fired")
			checkEnd(t, s, j, rep, err, want{outcome: migration.Completed, host: "b", state: hypervisor.Running})
			st, ok := rep.Step(migration.BlockMigrate)
			require.True(t, ok)
			assert.Contains(t, st.Err, "boom", "block 330 failed")
			_, ok = rep.Step(migration.BlockRestart)
			assert.True(t, ok, "then the VM was resumed at the target (345)")
			if assert.Len(t, rep.Warnings, 1) {
				assert.Contains(t, rep.Warnings[0], "boom")
				assert.Contains(t, rep.Warnings[0], "rolled forward")
			}
			assert.Equal(t, []conn.Conn{plainConn}, s.Cloud.Auditor.ResetConns(), "the audit ran")
		})
	}
}

// The rollback itself fails: Run says so (ErrRollbackFailed, wrapping
// the cause), the report is Abandoned, the journal keeps the migration
// for Recover, which finishes the rollback once the fault is gone.
func TestRollbackFails(t *testing.T) {
	cases := []struct {
		name        string
		mode        migration.FenceMode
		cause, also [3]string // fake, method, nth
		srcFenced   bool      // the source fence is left
		left        string    // what the reason says is left
		check       func(t *testing.T, s *migrationtest.Setup)
	}{
		{name: "target abort fails", cause: [3]string{"link", "Prepare", "1"}, also: [3]string{"hv:b", "Abort", "1"},
			left: "hv:b.Abort"},
		{name: "source lift fails", mode: migration.FenceBeforeCopy,
			cause: [3]string{"hv:a", "Migrate", "1"}, also: [3]string{"fence:a", "Lift", "1"},
			srcFenced: true, left: "fence:a.Lift"},
		{name: "link close fails", cause: [3]string{"hv:a", "Migrate", "1"}, also: [3]string{"link", "Close", "1"},
			left: "link.Close", check: func(t *testing.T, s *migrationtest.Setup) {
				links, err := s.Linker.List(context.Background())
				require.NoError(t, err)
				assert.Len(t, links, 1, "the link is left")
			}},
		{name: "target lift fails", cause: [3]string{"link", "Activate", "1"}, also: [3]string{"fence:b", "Lift", "1"},
			left: "fence:b.Lift", check: func(t *testing.T, s *migrationtest.Setup) {
				_, fenced := s.Cloud.Fencer.Fenced("vm1")
				assert.True(t, fenced, "the target fence is left")
			}},
		// Lookups at the source: 310, where is the VM (rollback), is it back (undo)
		{name: "the VM is not found at the source", cause: [3]string{"link", "Prepare", "1"}, also: [3]string{"hv:a", "Lookup", "3"},
			left: "not found at"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			s := migrationtest.NewSetup()
			p := s.Plan()
			p.FenceMode = c.mode
			inject := func(x [3]string) *migrationtest.Faults {
				f := faultsOf(s)[x[0]]
				var nth int
				fmt.Sscan(x[2], &nth)
				f.FailOn(x[1], nth, errBoom)
				return f
			}
			fc, fa := inject(c.cause), inject(c.also)
			m, j := journaled(t, s)
			rep, err := m.Run(ctx, p)
			require.NotSame(t, fc, fa, "two different fakes")
			assert.Equal(t, 1, fc.Injected(), "the cause fired")
			assert.Positive(t, fa.Injected(), "the rollback's fault fired")
			assert.ErrorIs(t, err, migration.ErrRollbackFailed)
			assert.ErrorIs(t, err, errBoom)
			assert.NotErrorIs(t, err, migration.ErrRolledBack)
			checkEnd(t, s, j, rep, err, want{outcome: migration.Abandoned, host: "a", state: hypervisor.Running,
				srcFenced: c.srcFenced, unfinished: true})
			assert.Contains(t, rep.Reason, c.left, "the reason says what is left")
			if c.check != nil {
				c.check(t, s)
			}

			// Recover finishes the rollback.
			faultsOf(s)[c.cause[0]].ClearFaults()
			faultsOf(s)[c.also[0]].ClearFaults()
			reps, err := m.Recover(ctx)
			require.Len(t, reps, 1)
			checkEnd(t, s, j, reps[0], err, want{outcome: migration.RolledBack, host: "a", state: hypervisor.Running, recovered: true})
		})
	}
}

// The caller's context is cancelled at one step. Before the VM is
// complete at the target the migration rolls back (the error says
// why); once it is there, there is no way back: the Migrator finishes,
// but does not wait for the routing core (the redirect tunnel stays,
// with a warning).
func TestCancelMidMigration(t *testing.T) {
	rolledBack := want{outcome: migration.RolledBack, host: "a", state: hypervisor.Running}
	completed := want{outcome: migration.Completed, host: "b", state: hypervisor.Running}
	cases := []struct {
		fake, method string
		subnetOnly   bool
		want         want
	}{
		{fake: "link", method: "Prepare", want: rolledBack},
		{fake: "fence:a", method: "Fence", want: rolledBack},
		{fake: "routing", method: "AddRedirect", subnetOnly: true, want: rolledBack},
		{fake: "hv:a", method: "Migrate", want: rolledBack},
		{fake: "hv:b", method: "Resume", want: completed},
		{fake: "link", method: "Verify", want: completed},
		{fake: "audit:b", method: "List", want: completed},
		{fake: "routing", method: "Wait", subnetOnly: true, want: completed},
	}
	for _, c := range cases {
		for _, v := range variants() {
			if c.subnetOnly && !v.subnet {
				continue
			}
			t.Run(c.fake+"."+c.method+"/"+v.String(), func(t *testing.T) {
				s := migrationtest.NewSetup()
				s.Cloud.Auditor.SetConns(plainConn)
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				var cancelled bool
				faultsOf(s)[c.fake].OnCall(c.method, 1, func() { cancelled = true; cancel() })
				m, j := journaled(t, s)
				rep, err := m.Run(ctx, v.plan(s))
				require.True(t, cancelled, "the context was cancelled at %s.%s", c.fake, c.method)
				checkEnd(t, s, j, rep, err, c.want)
				if c.want.outcome == migration.RolledBack {
					assert.ErrorIs(t, err, context.Canceled)
				}
				if c.want.outcome == migration.Completed && v.subnet {
					if assert.Len(t, rep.Warnings, 1) {
						assert.Contains(t, rep.Warnings[0], "redirect tunnel kept")
					}
					rd, err := s.Router.Redirects(context.Background())
					require.NoError(t, err)
					assert.Len(t, rd, 1, "the redirect stays")
				} else {
					assert.Empty(t, rep.Warnings)
				}
			})
		}
	}
}

// failJournal wraps a journal and fails the writes a test picks.
type failJournal struct {
	migration.Journal
	mu         sync.Mutex
	failAppend func(migration.Entry) bool
	failFinish bool
	failed     int
}

var errJournal = errors.New("disk full")

// Append fails (writing nothing) if the test picks any of es.
func (j *failJournal) Append(ctx context.Context, id string, es ...migration.Entry) error {
	j.mu.Lock()
	fail := j.failAppend != nil && slices.ContainsFunc(es, j.failAppend)
	if fail {
		j.failed++
	}
	j.mu.Unlock()
	if fail {
		return errJournal
	}
	return j.Journal.Append(ctx, id, es...)
}

func (j *failJournal) Finish(ctx context.Context, id string, o migration.Outcome, reason string) error {
	j.mu.Lock()
	fail := j.failFinish
	if fail {
		j.failed++
	}
	j.mu.Unlock()
	if fail {
		return errJournal
	}
	return j.Journal.Finish(ctx, id, o, reason)
}

func (j *failJournal) set(append func(migration.Entry) bool, finish bool) {
	j.mu.Lock()
	j.failAppend, j.failFinish = append, finish
	j.mu.Unlock()
}

// A journal write fails. The journal comes first: a step whose begin
// cannot be written does not run; before the target resumes that rolls
// back, after it the VM stays fenced. A rollback that cannot be
// journaled still undoes everything, and the migration stays unfinished
// in the journal for Recover.
func TestJournalWriteFails(t *testing.T) {
	at := func(b migration.Block, ph migration.Phase) func(migration.Entry) bool {
		return func(e migration.Entry) bool { return e.Block == b && e.Phase == ph }
	}
	// 310 and 315 are journaled, and 330's begin; nothing after.
	fromHookOn := func(e migration.Entry) bool {
		ok := e.Block == migration.BlockSelect || e.Block == migration.BlockTarget ||
			e.Block == migration.BlockMigrate && e.Phase == migration.PhaseBegin
		return !ok
	}
	cases := []struct {
		name      string
		mode      migration.FenceMode
		append    func(migration.Entry) bool
		finish    bool
		want      want
		runErr    error // Run's error wraps it, if set
		recoverTo *want // Recover (journal mended) ends so
		hookLost  bool  // the hook's steps ran, their entries were not written
	}{
		{name: "310 begin", append: at(migration.BlockSelect, migration.PhaseBegin),
			want: want{outcome: migration.RolledBack, host: "a", state: hypervisor.Running}},
		{name: "320 before copy", mode: migration.FenceBeforeCopy, append: at(migration.BlockFence, migration.PhaseBegin),
			want: want{outcome: migration.RolledBack, host: "a", state: hypervisor.Running}},
		// the hook's steps are written in one Append, which fails whole
		{name: "in the switchover hook", append: at(migration.BlockPause, migration.PhaseBegin),
			want: want{outcome: migration.RolledBack, host: "a", state: hypervisor.Running}, hookLost: true},
		{name: "345 begin", append: at(migration.BlockRestart, migration.PhaseBegin),
			want: want{outcome: migration.StayedFenced, host: "b", state: hypervisor.Paused}},
		{name: "for good, from the hook on", append: fromHookOn,
			want:      want{outcome: migration.Abandoned, host: "a", state: hypervisor.Running, unfinished: true},
			runErr:    migration.ErrRollbackFailed,
			recoverTo: &want{outcome: migration.RolledBack, host: "a", state: hypervisor.Running, recovered: true}},
		{name: "the outcome", finish: true,
			want: want{outcome: migration.Completed, host: "b", state: hypervisor.Running, unfinished: true}, runErr: errJournal,
			recoverTo: &want{outcome: migration.Completed, host: "b", state: hypervisor.Running, recovered: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			s := migrationtest.NewSetup()
			mem := migration.NewMemJournal()
			j := &failJournal{Journal: mem}
			j.set(c.append, c.finish)
			s.Config.Journal = j
			m := newMigrator(t, s)
			p := s.Plan()
			p.FenceMode = c.mode
			rep, err := m.Run(ctx, p)
			require.Positive(t, j.failed, "a journal write failed")
			if c.name == "for good, from the hook on" {
				_, entries, err := mem.Load(ctx, rep.ID)
				require.NoError(t, err)
				assert.Len(t, entries, 5, "310 and 315 begun and done, 330 begun")
				assert.True(t, containsCall(callStrings(s), "hv:a.Migrate"), "the migration began")
			}
			if c.runErr != nil {
				assert.ErrorIs(t, err, c.runErr)
				// checkEnd wants no error for a Completed outcome.
				if c.want.outcome == migration.Completed {
					err = nil
				}
			} else {
				assert.ErrorIs(t, err, errJournal)
			}
			switch {
			case c.want.unfinished:
				// checkJournal cannot compare the steps: some were not
				// journaled. The record must stay unfinished.
				rec, _, lerr := mem.Load(ctx, rep.ID)
				require.NoError(t, lerr)
				assert.False(t, rec.Done(), "journal record %+v", rec)
				c.want.unfinished = false
				checkWorld(t, s, rep, c.want)
			case c.hookLost:
				rec, entries, lerr := mem.Load(ctx, rep.ID)
				require.NoError(t, lerr)
				assert.Equal(t, rep.Outcome, rec.Outcome, "journal outcome")
				_, ran := rep.Step(migration.BlockPause)
				assert.True(t, ran, "the hook's steps ran")
				for _, e := range entries {
					assert.NotContains(t, []migration.Block{migration.BlockPause, migration.BlockFence, migration.BlockSubnetMoved}, e.Block,
						"an entry of the failed batch was written: %+v", e)
				}
				checkWorld(t, s, rep, c.want)
			default:
				checkEnd(t, s, mem, rep, err, c.want)
			}
			if c.recoverTo != nil {
				j.set(nil, false)
				reps, err := m.Recover(ctx)
				require.Len(t, reps, 1)
				checkEnd(t, s, mem, reps[0], err, *c.recoverTo)
			}
		})
	}
}

// checkWorld is checkEnd without the journal.
func checkWorld(t *testing.T, s *migrationtest.Setup, rep *migration.Report, w want) {
	t.Helper()
	require.NotNil(t, rep)
	assert.Equal(t, w.outcome, rep.Outcome, "reason %q", rep.Reason)
	assert.Equal(t, []string{w.host}, s.Where("vm1"))
	assert.Equal(t, w.state, s.State(w.host, "vm1"))
	assert.Empty(t, s.Violations())
	_, fencedA := s.Secure.Fencer.Fenced("vm1")
	_, fencedB := s.Cloud.Fencer.Fenced("vm1")
	assert.Equal(t, w.srcFenced, fencedA, "source fence")
	links, err := s.Linker.List(context.Background())
	require.NoError(t, err)
	if w.host == "a" {
		assert.False(t, fencedB, "target fence left")
		assert.Empty(t, links, "links left")
	} else {
		assert.True(t, fencedB, "target fence")
		assert.NotEmpty(t, links, "links")
	}
}

// Recover finds the VM running at the target and active at the source:
// it cannot tell which copy is the VM, so it touches no hypervisor,
// fences both copies (full block: neither may talk until a human has
// chosen) and ends the migration abandoned.
func TestRecoverFindsVMInTwoPlaces(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	m, j := journaled(t, s)
	p := unfinished(t, j, s.Plan())
	s.AddVM("b", "vm1", "tap-vm1", "52:54:00:00:00:01") // a second copy, running
	require.Len(t, s.Violations(), 1, "the test made the VM run twice")
	before := len(s.Calls())

	reps, err := m.Recover(ctx)
	require.Len(t, reps, 1)
	rep := reps[0]
	assert.ErrorIs(t, err, migration.ErrRollbackFailed)
	assert.Equal(t, migration.Abandoned, rep.Outcome)
	assert.Contains(t, rep.Reason, "running at")
	assert.Contains(t, rep.Reason, "both copies are fenced")
	assert.Equal(t, []string{"a", "b"}, s.Where("vm1"), "Recover moved no copy")
	for _, c := range s.Calls()[before:] {
		assert.NotContains(t, []string{"Abort", "Resume", "Migrate", "PrepareIncoming", "Lift"}, c.Method, "Recover called %s", c)
	}
	for host, f := range map[string]*migrationtest.Fencer{"a": s.Secure.Fencer, "b": s.Cloud.Fencer} {
		spec, fenced := f.Fenced("vm1")
		if assert.True(t, fenced, "the copy at %s is not fenced", host) {
			assert.Empty(t, spec.AllowVia, "the copy at %s: want a full block", host)
		}
	}
	rec, _, err := j.Load(ctx, p.ID)
	require.NoError(t, err)
	assert.Equal(t, migration.Abandoned, rec.Outcome, "the journal says a human must look")
	assert.Equal(t, rep.Reason, rec.Reason)
	reps, err = m.Recover(ctx)
	assert.NoError(t, err)
	assert.Empty(t, reps, "abandoned is final")
}

// Recover finds the VM nowhere: abandoned, ErrVMLost, nothing resumed.
func TestRecoverFindsVMNowhere(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	m, j := journaled(t, s)
	p := s.Plan()
	p.VM = "vm2" // never existed
	p = unfinished(t, j, p)
	reps, err := m.Recover(ctx)
	require.Len(t, reps, 1)
	assert.ErrorIs(t, err, migration.ErrVMLost)
	assert.Equal(t, migration.Abandoned, reps[0].Outcome)
	assert.Contains(t, reps[0].Reason, `"vm2" found in neither`)
	for _, c := range s.Calls() {
		assert.Contains(t, []string{"Lookup", "List"}, c.Method, "Recover called %s", c)
	}
	rec, _, err := j.Load(ctx, p.ID)
	require.NoError(t, err)
	assert.Equal(t, migration.Abandoned, rec.Outcome)
	assert.Equal(t, []string{"a"}, s.Where("vm1"), "another VM is left alone")
}

// Recover cannot tell where the VM is (a hypervisor does not answer):
// it touches nothing and the migration stays unfinished.
func TestRecoverCannotTell(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	m, j := journaled(t, s)
	p := unfinished(t, j, s.Plan())
	s.Cloud.Hypervisor.FailOn("Lookup", 0, errBoom)
	reps, err := m.Recover(ctx)
	require.Len(t, reps, 1)
	assert.ErrorIs(t, err, errBoom)
	for _, c := range s.Calls() {
		assert.Contains(t, []string{"Lookup", "List"}, c.Method, "Recover called %s", c)
	}
	rec, _, err := j.Load(ctx, p.ID)
	require.NoError(t, err)
	assert.False(t, rec.Done(), "the migration stays for the next Recover")
}

// unfinished journals p (defaults applied) as a migration a stopped
// controller left before its first step.
func unfinished(t *testing.T, j migration.Journal, p migration.Plan) migration.Plan {
	t.Helper()
	p.ID, p.Link, p.FenceMode = "m-left", tunnel.WireGuard, migration.FenceAtSwitchover
	require.NoError(t, j.Create(context.Background(), migration.Record{ID: p.ID, Plan: p, Started: time.Now()}))
	return p
}

// A migration that fails while the source's hypervisor does not answer
// cannot tell where the VM is: resuming the target could run it twice,
// aborting the target could lose the only complete copy. It touches
// neither, and leaves the record for Recover.
func TestRollbackCannotTell(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	m, j := journaled(t, s)
	s.Secure.Hypervisor.FailOn("Migrate", 1, hypervisor.ErrMigration)
	s.Secure.Hypervisor.FailOn("Lookup", 2, errBoom) // 310 looked it up; the rollback cannot
	rep, err := m.Run(ctx, s.Plan())
	require.ErrorIs(t, err, migration.ErrRollbackFailed)
	assert.ErrorIs(t, err, errBoom)
	require.NotNil(t, rep)
	assert.Equal(t, migration.Abandoned, rep.Outcome)
	for _, c := range s.Calls() {
		assert.NotContains(t, []string{"Abort", "Resume"}, c.Method, "touched a hypervisor: %s", c)
	}
	rec, _, err := j.Load(ctx, rep.ID)
	require.NoError(t, err)
	assert.False(t, rec.Done(), "the migration stays for Recover")
	assert.Empty(t, s.Violations())
}

// A source Fencer that can hold (fence.Holder): in at-switchover mode
// with a device link the source fence holds (fence.Spec.Hold), what it
// held is released before the fence is lifted and counted in the
// report; a failing Release costs those packets only (a warning, the
// migration completes). Before-copy mode and XFRM links do not hold.
func TestSourceFenceHolds(t *testing.T) {
	for _, v := range variants() {
		for _, fail := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/release-fails=%v", v, fail), func(t *testing.T) {
				s := migrationtest.NewSetup()
				hf := s.World.HoldingFencer("a", 7)
				s.Secure.Fencer = hf.Fencer
				env := s.Config.Environments["secure"]
				env.Fencer = hf
				s.Config.Environments["secure"] = env
				if fail {
					hf.FailOn("Release", 0, errBoom)
				}
				m, j := journaled(t, s)
				rep, err := m.Run(context.Background(), v.plan(s))
				checkEnd(t, s, j, rep, err, want{outcome: migration.Completed, host: "b", state: hypervisor.Running})
				holds := v.mode == migration.FenceAtSwitchover && v.link == tunnel.WireGuard
				var order []string
				for _, c := range s.Calls() {
					if c.Fake == "fence:a" && (c.Method == "Release" || c.Method == "Lift") {
						order = append(order, c.Method)
					}
				}
				switch {
				case !holds:
					assert.Zero(t, rep.Released)
					assert.NotContains(t, order, "Release", "a fence that does not hold was released")
				case fail:
					assert.Zero(t, rep.Released)
					assert.Equal(t, []string{"Release", "Lift"}, order)
					if assert.Len(t, rep.Warnings, 1) {
						assert.Contains(t, rep.Warnings[0], "held packets")
					}
				default:
					assert.Equal(t, 7, rep.Released)
					assert.Equal(t, []string{"Release", "Lift"}, order, "released before the fence goes")
					assert.Empty(t, rep.Warnings)
				}
			})
		}
	}
}
