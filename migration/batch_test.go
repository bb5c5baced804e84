package migration_test

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/tunnel"
)

// batchSetup is Setup with n VMs of the subnet at a (vm1 .. vmN at
// 10.1.0.10 ..), the core learning the subnet's route via SiteVia once a
// redirect is there.
func batchSetup(n int) (*migrationtest.Setup, migration.Batch) {
	s := migrationtest.NewSetup()
	return s, s.Batch(n)
}

// batchEvents drains a closed subscription's BatchFinished events.
func batchEvents(events <-chan migration.Event) []migration.BatchFinished {
	var out []migration.BatchFinished
	for e := range events {
		if bf, ok := e.(migration.BatchFinished); ok {
			out = append(out, bf)
		}
	}
	return out
}

// calls returns the recorded calls whose string starts with prefix.
func callsOf(s *migrationtest.Setup, prefix string) []string {
	return slices.DeleteFunc(callStrings(s), func(c string) bool { return !strings.HasPrefix(c, prefix) })
}

func TestRunBatch(t *testing.T) {
	ctx := context.Background()
	s, b := batchSetup(3)
	b.Parallel = 2
	m, j := journaled(t, s)
	events, unsubscribe := m.Subscribe(1024)
	rep, err := m.RunBatch(ctx, b)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rep.Outcome, rep.Reason)
	require.Len(t, rep.Reports, 3)
	unsubscribe()
	assert.Equal(t, []migration.BatchFinished{{ID: rep.ID, Outcome: migration.Completed,
		Members: []string{rep.ID + "-1", rep.ID + "-2", rep.ID + "-3"}, Report: rep}}, batchEvents(events),
		"one batch end, after its members' (each its own Finished)")
	for i, r := range rep.Reports {
		assert.Equal(t, migration.Completed, r.Outcome, "member %d: %s", i, r.Reason)
		assert.True(t, r.SubnetMoved)
		assert.Equal(t, fmt.Sprintf("%s-%d", rep.ID, i+1), r.ID)
		assert.Equal(t, []string{"b"}, s.Where(r.VM))
		assert.Equal(t, hypervisor.Running, s.State("b", r.VM))
		require.NotNil(t, r.Redirect)
		assert.Equal(t, rep.Redirect.ID, r.Redirect.ID, "one redirect tunnel")
		_, ok := r.Step(migration.BlockInspect)
		assert.False(t, ok, "a member does not wait for the core: the batch does")
	}
	assert.Empty(t, s.Violations())
	require.NotNil(t, rep.Converged)

	// One tunnel for the subnet; each member's own address routed into it
	// in its switchover; the whole prefix never (members still at the
	// source would lose their traffic).
	calls := callStrings(s)
	assert.Len(t, slices.DeleteFunc(slices.Clone(calls), func(c string) bool { return c != "link.Prepare("+rep.Redirect.ID+")" }), 1, "%v", calls)
	assert.ElementsMatch(t, []string{"routing.AddRedirect(10.1.0.10/32)", "routing.AddRedirect(10.1.0.11/32)", "routing.AddRedirect(10.1.0.12/32)"},
		callsOf(s, "routing.AddRedirect"))
	assert.ElementsMatch(t, []string{"routing.RemoveRedirect(10.1.0.10/32)", "routing.RemoveRedirect(10.1.0.11/32)", "routing.RemoveRedirect(10.1.0.12/32)"},
		callsOf(s, "routing.RemoveRedirect"))
	assert.Equal(t, []string{"routing.Wait(10.1.0.0/24)"}, callsOf(s, "routing.Wait"))
	// The core's wait comes after the last member's end (its 395).
	last := slices.IndexFunc(calls, func(c string) bool { return c == "routing.Wait(10.1.0.0/24)" })
	for _, vm := range []string{"vm1", "vm2", "vm3"} {
		assert.Less(t, slices.Index(calls, "hv:b.Lookup("+vm+")")+0, last)
		assert.Greater(t, slices.Index(calls, "link.Close("+rep.Redirect.ID+")"), last, "the tunnel closes after convergence")
	}
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	assert.Empty(t, rd)
	links, err := s.Linker.List(ctx)
	require.NoError(t, err)
	assert.Len(t, links, 3, "each member's link stays, the redirect tunnel is gone")

	// Journal: the batch's record and each member's, all finished.
	un, err := j.Unfinished(ctx)
	require.NoError(t, err)
	assert.Empty(t, un)
	rec, _, err := j.Load(ctx, rep.ID)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rec.Outcome)
	assert.Equal(t, rep.ID, rec.Plan.Batch)
	for i := range 3 {
		rec, es, err := j.Load(ctx, fmt.Sprintf("%s-%d", rep.ID, i+1))
		require.NoError(t, err)
		assert.Equal(t, migration.Completed, rec.Outcome)
		assert.Equal(t, rep.ID, rec.Plan.Batch)
		assert.NotEmpty(t, es)
	}
}

// One member fails: it alone rolls back (its own address's redirect
// goes), the others complete, the tunnel stays for them, the batch is
// Partial and its error names the VM.
func TestRunBatchOneRollsBack(t *testing.T) {
	ctx := context.Background()
	s, b := batchSetup(3)
	b.Parallel = 1 // members in order: the second Migrate is vm2's
	s.Secure.Hypervisor.FailOn("Migrate", 2, errBoom)
	m, j := journaled(t, s)
	rep, err := m.RunBatch(ctx, b)
	require.Error(t, err)
	assert.ErrorIs(t, err, migration.ErrRolledBack)
	assert.ErrorContains(t, err, `VM "vm2"`)
	assert.Equal(t, migration.Partial, rep.Outcome)
	assert.Equal(t, migration.Completed, rep.Reports[0].Outcome)
	assert.Equal(t, migration.RolledBack, rep.Reports[1].Outcome)
	assert.Equal(t, migration.Completed, rep.Reports[2].Outcome)
	assert.Equal(t, []string{"a"}, s.Where("vm2"))
	assert.Equal(t, hypervisor.Running, s.State("a", "vm2"))
	assert.Empty(t, s.Violations())
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	var got []string
	for _, r := range rd {
		got = append(got, r.Prefix.String())
		assert.Equal(t, rep.Redirect.SecureDevice, r.Device)
	}
	assert.ElementsMatch(t, []string{"10.1.0.10/32", "10.1.0.12/32"}, got, "the moved members' routes stay, vm2's is not there")
	assert.Empty(t, callsOf(s, "routing.Wait"), "the subnet has not moved: nothing to converge")
	assert.NotContains(t, callStrings(s), "link.Close("+rep.Redirect.ID+")")
	rec, _, err := j.Load(ctx, rep.ID)
	require.NoError(t, err)
	assert.Equal(t, migration.Partial, rec.Outcome)
	assert.Contains(t, rec.Reason, "vm2")
}

// Every member fails: the tunnel goes, the batch rolled back.
func TestRunBatchNoneMoves(t *testing.T) {
	ctx := context.Background()
	s, b := batchSetup(2)
	s.Secure.Hypervisor.FailOn("Migrate", 0, errBoom)
	m, _ := journaled(t, s)
	rep, err := m.RunBatch(ctx, b)
	require.Error(t, err)
	assert.Equal(t, migration.RolledBack, rep.Outcome)
	assert.Contains(t, callStrings(s), "link.Close("+rep.Redirect.ID+")")
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	assert.Empty(t, rd)
	links, err := s.Linker.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, links)
	for _, vm := range []string{"vm1", "vm2"} {
		assert.Equal(t, []string{"a"}, s.Where(vm))
	}
}

// A member that fails in its switchover hook, after its route went into
// the tunnel, takes its route away again as it rolls back.
func TestRunBatchHookFailureRemovesItsRoute(t *testing.T) {
	ctx := context.Background()
	s, b := batchSetup(2)
	b.Parallel = 1
	s.Router.FailOn("AddRedirect", 2, errBoom) // vm2's, in its hook
	m, _ := journaled(t, s)
	rep, err := m.RunBatch(ctx, b)
	require.Error(t, err)
	assert.Equal(t, migration.RolledBack, rep.Reports[1].Outcome)
	assert.Contains(t, callStrings(s), "routing.RemoveRedirect(10.1.0.11/32)")
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	require.Len(t, rd, 1)
	assert.Equal(t, netip.MustParsePrefix("10.1.0.10/32"), rd[0].Prefix)
}

func TestRunBatchRefusesBadInput(t *testing.T) {
	s, _ := batchSetup(2)
	m := newMigrator(t, s)
	for name, c := range map[string]struct {
		edit func(*migration.Batch)
		want string
	}{
		"no plans":       {func(b *migration.Batch) { b.Plans = nil }, "Batch.Plans is empty"},
		"dup vm":         {func(b *migration.Batch) { b.Plans[1].VM = "vm1" }, `Batch.Plans[1].VM "vm1" is also Plans[0]`},
		"dup addr":       {func(b *migration.Batch) { b.Plans[1].Addrs = b.Plans[0].Addrs }, "Batch.Plans[1].Addrs 10.1.0.10/32 is also Plans[0]'s"},
		"member from":    {func(b *migration.Batch) { b.Plans[0].From = "cloud" }, `Batch.Plans[0].From "cloud" is set`},
		"member subnet":  {func(b *migration.Batch) { b.Plans[1].Subnet = &migration.Subnet{} }, "Batch.Plans[1].Subnet is set"},
		"moved":          {func(b *migration.Batch) { b.Subnet.Moved = migration.SubnetNo }, `Batch.Subnet.Moved "no"`},
		"parallel":       {func(b *migration.Batch) { b.Parallel = -1 }, "Batch.Parallel -1 is negative"},
		"long id":        {func(b *migration.Batch) { b.ID = strings.Repeat("x", 59) }, "Batch.ID"},
		"mixed links":    {func(b *migration.Batch) { b.Plans[1].Link = tunnel.IPsec }, `Batch.Plans[1].Link "ipsec" differs`},
		"outside subnet": {func(b *migration.Batch) { b.Plans[1].Addrs = []netip.Prefix{netip.MustParsePrefix("10.9.0.1/32")} }, "Batch.Plans[1] (VM \"vm2\"): migration: invalid plan: Addrs 10.9.0.1/32 is outside Subnet.Prefix 10.1.0.0/24"},
		"bad to":         {func(b *migration.Batch) { b.To = "mars" }, `To "mars" is not a configured environment`},
	} {
		t.Run(name, func(t *testing.T) {
			_, b := batchSetup(2)
			c.edit(&b)
			rep, err := m.RunBatch(context.Background(), b)
			assert.Nil(t, rep)
			assert.ErrorIs(t, err, migration.ErrInvalidPlan)
			assert.ErrorContains(t, err, c.want)
		})
	}
	assert.Empty(t, s.Calls(), "nothing touched")
	// Run refuses a member's plan.
	p := s.SubnetPlan()
	p.Batch = "b1"
	_, err := m.Run(context.Background(), p)
	assert.ErrorIs(t, err, migration.ErrInvalidPlan)
	assert.ErrorContains(t, err, `Batch "b1"`)
}

// The controller dies while a member is complete at the target, paused;
// the other members go on (they are goroutines of the test, not of a
// dead process: the fakes cannot stop them), the batch's own goroutine
// ends unfinished. A new Migrator's Recover finishes that member, then
// the batch: converge, redirects and tunnel gone.
func TestRecoverBatch(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "journal.db")
	s, b := batchSetup(3)
	b.Parallel = 1
	j, err := migration.OpenBoltJournal(path)
	require.NoError(t, err)
	s.Config.Journal = j
	s.Cloud.Hypervisor.CrashOn("Resume", 2)
	m1 := newMigrator(t, s)
	events1, unsubscribe1 := m1.Subscribe(1024)
	done := make(chan struct{})
	go func() { defer close(done); m1.RunBatch(ctx, b) }()
	<-done
	require.Equal(t, 1, s.Cloud.Hypervisor.Injected())
	unsubscribe1()
	assert.Empty(t, batchEvents(events1), "a batch that crashed did not end")
	require.NoError(t, m1.Close())
	assert.Empty(t, callsOf(s, "routing.Wait"), "the batch ended with the crash")

	j2, err := migration.OpenBoltJournal(path)
	require.NoError(t, err)
	defer j2.Close()
	un, err := j2.Unfinished(ctx)
	require.NoError(t, err)
	require.Len(t, un, 2, "the batch and its crashed member")
	s.Cloud.Hypervisor.ClearFaults()
	s.Config.Journal = j2
	m2 := newMigrator(t, s)
	events2, unsubscribe2 := m2.Subscribe(1024)
	reps, err := m2.Recover(ctx)
	require.NoError(t, err)
	require.Len(t, reps, 1)
	unsubscribe2()
	if ends := batchEvents(events2); assert.Len(t, ends, 1) {
		assert.Equal(t, migration.Completed, ends[0].Outcome)
		assert.True(t, ends[0].Recovery)
		assert.Len(t, ends[0].Members, 3)
	}
	assert.Equal(t, "vm2", reps[0].VM)
	assert.Equal(t, migration.Completed, reps[0].Outcome)
	for _, vm := range []string{"vm1", "vm2", "vm3"} {
		assert.Equal(t, []string{"b"}, s.Where(vm))
		assert.Equal(t, hypervisor.Running, s.State("b", vm))
	}
	assert.Equal(t, []string{"routing.Wait(10.1.0.0/24)"}, callsOf(s, "routing.Wait"))
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	assert.Empty(t, rd)
	un, err = j2.Unfinished(ctx)
	require.NoError(t, err)
	assert.Empty(t, un)
	recs, err := j2.List(ctx)
	require.NoError(t, err)
	for _, r := range recs {
		assert.Equal(t, migration.Completed, r.Outcome, "%s (%s): %s", r.ID, r.Plan.VM, r.Reason)
	}
	assert.Empty(t, s.Violations())
	reps, err = m2.Recover(ctx)
	assert.NoError(t, err)
	assert.Empty(t, reps)
}

// Controller a's lease ends while its batch waits for the routing core
// (every member completed): a stops touching hosts, the batch's record
// stays unfinished; standby b claims it and ends it (the core's watch,
// the redirects and the tunnel removed).
func TestStandbyTakesOverBatch(t *testing.T) {
	ctx := context.Background()
	store := migrationtest.NewSharedStore()
	a, b := store.Controller("ctl-a"), store.Controller("ctl-b")
	s, bt := batchSetup(3)
	s.Config.Journal = a
	s.Router.OnCall("Wait", 1, a.Expire)
	ma := newMigrator(t, s)
	rep, err := ma.RunBatch(ctx, bt)
	require.ErrorIs(t, err, migration.ErrNotOwner)
	assert.Equal(t, migration.Abandoned, rep.Outcome, rep.Reason)
	for _, r := range rep.Reports {
		assert.Equal(t, migration.Completed, r.Outcome)
	}
	un, err := b.Unfinished(ctx)
	require.NoError(t, err)
	require.Len(t, un, 1)
	assert.Equal(t, rep.ID, un[0].ID)
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	assert.Len(t, rd, 3, "a left the members' routes")

	s.Router.ClearFaults()
	s.Config.Journal = b
	mb := newMigrator(t, s)
	sctx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	took := 0
	err = mb.Standby(sctx, func(r *migration.Report, err error) {
		took++
		assert.NoError(t, err)
		stop()
	})
	require.ErrorIs(t, err, context.Canceled, "the standby took nothing over in 10 s")
	assert.Equal(t, 1, took)
	rec, _, err := b.Load(ctx, rep.ID)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rec.Outcome, rec.Reason)
	assert.Equal(t, "ctl-b", rec.Owner)
	rd, err = s.Router.Redirects(ctx)
	require.NoError(t, err)
	assert.Empty(t, rd)
	assert.Contains(t, callStrings(s), "link.Close("+rep.Redirect.ID+")")
	assert.Empty(t, s.Violations())
}

// TestStandbyLeavesBatchToMembersOwner: a batch's controller died in its
// second member; another controller (c) claimed that member first. A
// standby (b) that sees the batch orphaned does not claim it — it would
// then wait for a member that is not its own, and no one would end the
// batch — and c, recovering its member, ends the batch too.
func TestStandbyLeavesBatchToMembersOwner(t *testing.T) {
	ctx := context.Background()
	store := migrationtest.NewSharedStore()
	a, b, c := store.Controller("ctl-a"), store.Controller("ctl-b"), store.Controller("ctl-c")
	s, bt := batchSetup(2)
	bt.Parallel = 1
	s.Config.Journal = a
	s.Cloud.Hypervisor.CrashOn("Resume", 2)
	ma := newMigrator(t, s)
	var brep *migration.BatchReport
	done := make(chan struct{})
	go func() { defer close(done); brep, _ = ma.RunBatch(ctx, bt) }()
	<-done
	require.Nil(t, brep, "the batch's controller crashed")
	require.Equal(t, 1, s.Cloud.Hypervisor.Injected())
	a.Expire()
	s.Cloud.Hypervisor.ClearFaults()
	un, err := c.Unfinished(ctx)
	require.NoError(t, err)
	require.Len(t, un, 2, "the batch and its second member")
	var batchID, member string
	for _, r := range un {
		if r.Plan.VM == "vm2" {
			member = r.ID
		} else {
			batchID = r.ID
		}
	}
	require.NoError(t, c.Claim(ctx, member), "c takes the member first")

	s.Config.Journal = b
	mb := newMigrator(t, s)
	sctx, stop := context.WithTimeout(ctx, time.Second)
	defer stop()
	err = mb.Standby(sctx, func(r *migration.Report, err error) { t.Errorf("b took over %v: %v", r, err) })
	require.ErrorIs(t, err, context.DeadlineExceeded)
	rec, _, err := c.Load(ctx, batchID)
	require.NoError(t, err)
	assert.Equal(t, "ctl-a", rec.Owner, "b claimed the batch")

	s.Config.Journal = c
	mc := newMigrator(t, s)
	reps, err := mc.Recover(ctx)
	require.NoError(t, err)
	require.Len(t, reps, 1)
	assert.Equal(t, migration.Completed, reps[0].Outcome, reps[0].Reason)
	rec, _, err = c.Load(ctx, batchID)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rec.Outcome, rec.Reason)
	for _, vm := range []string{"vm1", "vm2"} {
		assert.Equal(t, []string{"b"}, s.Where(vm))
	}
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	assert.Empty(t, rd)
	assert.Empty(t, s.Violations())
}
