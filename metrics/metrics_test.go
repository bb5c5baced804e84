package metrics_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/promtest"
	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/tunnel"
)

var (
	errBoom   = errors.New("boom")
	plainConn = conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:7777"), Remote: netip.MustParseAddrPort("10.2.0.20:40000"), State: "ESTABLISHED"}
	tlsConn   = conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:443"), Remote: netip.MustParseAddrPort("10.2.0.20:40001"), State: "ESTABLISHED"}
)

// sample is one series of a gathered family (promtest.Sample).
type sample = promtest.Sample

// series returns family name's samples by their labels (`k="v",...`).
func series(t *testing.T, g prometheus.Gatherer, name string) map[string]sample {
	t.Helper()
	out, err := promtest.Series(g, name)
	require.NoError(t, err)
	return out
}

// value is the value of the unlabelled counter or gauge name.
func value(t *testing.T, g prometheus.Gatherer, name string) float64 {
	t.Helper()
	s, ok := series(t, g, name)[""]
	require.True(t, ok, "%s has no unlabelled series", name)
	return s.Value
}

// hist is the count and sum of the unlabelled histogram name.
func hist(t *testing.T, g prometheus.Gatherer, name string) (uint64, float64) {
	t.Helper()
	s, ok := series(t, g, name)[""]
	require.True(t, ok, "%s has no unlabelled series", name)
	return s.Count, s.Sum
}

// newController returns a Controller registered with a pedantic registry
// (which checks each metric's consistency at every Gather).
func newController(t *testing.T) (*metrics.Controller, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	c, err := metrics.New(reg)
	require.NoError(t, err)
	return c, reg
}

// migrate runs p on m while c watches it, and returns the report, the
// error and every event the Migrator emitted (from a subscription of
// the test's own). When it returns, c has observed the whole run.
func migrate(t *testing.T, c *metrics.Controller, m *migration.Migrator, p migration.Plan) (*migration.Report, error, []migration.Event) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events, unsubscribe := m.Subscribe(4096)
	done := c.Watch(ctx, m)
	rep, err := m.Run(ctx, p)
	// Run emitted its events before it returned: the Watch drains what it
	// was delivered once its context ends.
	cancel()
	<-done
	unsubscribe()
	var evs []migration.Event
	for e := range events {
		evs = append(evs, e)
	}
	require.Zero(t, m.Dropped(), "events dropped")
	return rep, err, evs
}

func newMigrator(t *testing.T, s *migrationtest.Setup) *migration.Migrator {
	t.Helper()
	m, err := migration.New(s.Config)
	require.NoError(t, err)
	return m
}

// startedAt is the time of the run's Started event.
func startedAt(t *testing.T, evs []migration.Event) time.Time {
	t.Helper()
	for _, e := range evs {
		if s, ok := e.(migration.Started); ok {
			return s.At
		}
	}
	t.Fatal("no Started event")
	return time.Time{}
}

// stepSeries is what sealift_step_duration_seconds must hold for the
// reports' steps: count and summed seconds by label set.
func stepSeries(reps ...*migration.Report) map[string]sample {
	out := map[string]sample{}
	for _, r := range reps {
		for _, s := range r.Steps {
			k := `block="` + strconv.Itoa(int(s.Block)) + `",step="` + s.Name + `"`
			x := out[k]
			x.Count++
			x.Sum += time.Duration(s.Duration).Seconds()
			out[k] = x
		}
	}
	return out
}

func assertSteps(t *testing.T, reg prometheus.Gatherer, reps ...*migration.Report) {
	t.Helper()
	want, got := stepSeries(reps...), series(t, reg, metrics.StepDuration)
	require.Len(t, got, len(want), "step series: got %v, want %v", got, want)
	for k, w := range want {
		g, ok := got[k]
		if assert.True(t, ok, "no step series %s", k) {
			assert.Equal(t, w.Count, g.Count, "%s count", k)
			assert.InDelta(t, w.Sum, g.Sum, 1e-9, "%s sum", k)
		}
	}
}

// TestCompletedMigration: a migration whose subnet moved, watched by a
// Controller: each metric moved by exactly what the run's Report says
// (one completed migration under its link and fence mode, the
// hypervisor's downtime and hook, every block's duration, the stream's
// bytes, one connection kept and one reset, the core's convergence), and
// nothing is left in progress, remaining or redirected.
func TestCompletedMigration(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Auditor.SetConns(plainConn, tlsConn)
	c, reg := newController(t)
	m := newMigrator(t, s)
	rep, err, evs := migrate(t, c, m, s.SubnetPlan())
	require.NoError(t, err)
	require.Equal(t, migration.Completed, rep.Outcome)
	// What the Report holds, so that a wrong derivation fails below.
	require.Len(t, rep.Audit.Kept, 1)
	require.Len(t, rep.Audit.Reset, 1)
	require.NotNil(t, rep.Redirect)
	require.NotNil(t, rep.Converged)
	require.Positive(t, rep.Migration.Downtime)
	require.Positive(t, rep.Migration.Bytes)

	assert.Equal(t, map[string]sample{`fence_mode="at-switchover",link="wireguard",outcome="completed"`: {Value: 1}},
		series(t, reg, metrics.MigrationsTotal))
	assert.Zero(t, value(t, reg, metrics.MigrationsInProgress))

	var end int64
	for _, st := range rep.Steps {
		end = max(end, st.Start+st.Duration)
	}
	n, sum := hist(t, reg, metrics.MigrationDuration)
	assert.Equal(t, uint64(1), n)
	assert.Equal(t, time.Unix(0, end).Sub(startedAt(t, evs)).Seconds(), sum, "run duration: Started to the end of the last block")
	n, sum = hist(t, reg, metrics.MigrationDowntime)
	assert.Equal(t, uint64(1), n)
	assert.Equal(t, rep.Migration.Downtime.Seconds(), sum, "the hypervisor's downtime")
	n, sum = hist(t, reg, metrics.SwitchoverHook)
	assert.Equal(t, uint64(1), n)
	assert.Equal(t, rep.Migration.SwitchoverDone.Sub(rep.Migration.Switchover).Seconds(), sum, "the hook")
	n, sum = hist(t, reg, metrics.RouteConvergence)
	assert.Equal(t, uint64(1), n)
	assert.Equal(t, rep.Converged.After.Seconds(), sum)

	assertSteps(t, reg, rep)
	assert.Empty(t, series(t, reg, metrics.StepFailuresTotal))
	assert.Equal(t, float64(rep.Migration.Bytes), value(t, reg, metrics.MigrationBytesTotal), "progress and the final count, each byte once")
	assert.Zero(t, value(t, reg, metrics.MigrationRemaining))
	assert.Equal(t, 1.0, value(t, reg, metrics.ConnectionsKeptTotal))
	assert.Equal(t, 1.0, value(t, reg, metrics.ConnectionsResetTotal))
	assert.Zero(t, value(t, reg, metrics.RedirectActive), "block 390 removed the redirect")
	assert.Zero(t, value(t, reg, metrics.EventsDroppedTotal))
}

// TestOutcomesByLabel: a completed WireGuard migration fenced at
// switchover, then an XFRM one fenced before copy that fails at Prepare
// and rolls back, on one Controller: one series per outcome, link and
// fence mode; the failed block and the rollback are counted; the rolled
// back run adds no downtime, hook, bytes, connections or redirect.
func TestOutcomesByLabel(t *testing.T) {
	s := migrationtest.NewSetup()
	c, reg := newController(t)
	m := newMigrator(t, s)
	rep1, err, _ := migrate(t, c, m, s.Plan())
	require.NoError(t, err)
	require.Equal(t, migration.Completed, rep1.Outcome)
	// Back to the secure side, over XFRM, fenced before copy: boom.
	s.Linker.Faults.FailOn("Prepare", 0, errBoom)
	p := s.Plan()
	p.From, p.To = "cloud", "secure"
	p.Link, p.FenceMode = tunnel.IPsec, migration.FenceBeforeCopy
	rep2, err, _ := migrate(t, c, m, p)
	require.ErrorIs(t, err, migration.ErrRolledBack)
	require.Equal(t, migration.RolledBack, rep2.Outcome)
	require.Empty(t, rep2.Link.Kind, "Prepare failed: the report has no link (the plan's kind labels it)")

	assert.Equal(t, map[string]sample{
		`fence_mode="at-switchover",link="wireguard",outcome="completed"`: {Value: 1},
		`fence_mode="before-copy",link="ipsec",outcome="rolled-back"`:     {Value: 1},
	}, series(t, reg, metrics.MigrationsTotal))
	assert.Equal(t, map[string]sample{`block="315",step="target"`: {Value: 1}}, series(t, reg, metrics.StepFailuresTotal))
	assertSteps(t, reg, rep1, rep2)
	require.Contains(t, series(t, reg, metrics.StepDuration), `block="900",step="rollback"`)
	n, _ := hist(t, reg, metrics.MigrationDuration)
	assert.Equal(t, uint64(2), n, "failed runs have a duration too")
	for _, h := range []string{metrics.MigrationDowntime, metrics.SwitchoverHook} {
		n, sum := hist(t, reg, h)
		assert.Equal(t, uint64(1), n, "%s: the completed run only", h)
		assert.Positive(t, sum, h)
	}
	assert.Equal(t, float64(rep1.Migration.Bytes), value(t, reg, metrics.MigrationBytesTotal))
	assert.Zero(t, value(t, reg, metrics.MigrationsInProgress))
	assert.Zero(t, value(t, reg, metrics.ConnectionsResetTotal))
	assert.Zero(t, value(t, reg, metrics.RedirectActive))
	n, _ = hist(t, reg, metrics.RouteConvergence)
	assert.Zero(t, n)
}

// TestRedirectKept: the routing core does not converge, so the redirect
// tunnel stays: the completed migration leaves sealift_redirect_active at
// 1 and observes no convergence.
func TestRedirectKept(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Router.Faults.FailOn("Wait", 1, errBoom)
	c, reg := newController(t)
	rep, err, _ := migrate(t, c, newMigrator(t, s), s.SubnetPlan())
	require.NoError(t, err)
	require.Equal(t, migration.Completed, rep.Outcome)
	require.NotNil(t, rep.Redirect)
	require.Nil(t, rep.Converged)
	assert.Equal(t, 1.0, value(t, reg, metrics.RedirectActive))
	assert.Equal(t, map[string]sample{`block="380",step="inspect-routing-core"`: {Value: 1}}, series(t, reg, metrics.StepFailuresTotal))
	n, _ := hist(t, reg, metrics.RouteConvergence)
	assert.Zero(t, n)
}

// TestObserveReplay feeds a recorded run to Observe one event at a time:
// the gauges follow the run (in progress from Started to Finished; the
// bytes counter and the remaining bytes with each progress report; the
// redirect from block 340 to block 390), and the end counts as Watch's.
func TestObserveReplay(t *testing.T) {
	s := migrationtest.NewSetup()
	watcher, _ := newController(t)
	rep, err, evs := migrate(t, watcher, newMigrator(t, s), s.SubnetPlan())
	require.NoError(t, err)
	c, reg := newController(t)
	progress, redirected, sawRedirect := 0, 0.0, false
	for _, e := range evs {
		c.Observe(e)
		switch e := e.(type) {
		case migration.Started:
			assert.Equal(t, 1.0, value(t, reg, metrics.MigrationsInProgress), "after Started")
		case migration.MigrationProgress:
			progress++
			assert.Equal(t, float64(e.Transferred), value(t, reg, metrics.MigrationBytesTotal), "bytes after progress %d", progress)
			assert.Equal(t, float64(e.Remaining), value(t, reg, metrics.MigrationRemaining), "remaining after progress %d", progress)
			if progress == 1 {
				assert.Positive(t, e.Remaining, "the first progress report has bytes left: the check above can fail")
			}
		case migration.StepFinished:
			switch e.Block { // (block 330 ends after the hook's 340)
			case migration.BlockRedirect:
				redirected, sawRedirect = 1, true
			case migration.BlockRemoveTunnel:
				redirected = 0
			}
			assert.Equal(t, redirected, value(t, reg, metrics.RedirectActive), "redirect after block %d", e.Block)
			assert.Equal(t, 1.0, value(t, reg, metrics.MigrationsInProgress), "after block %d", e.Block)
		case migration.Finished:
			assert.Zero(t, value(t, reg, metrics.MigrationsInProgress), "after Finished")
		}
	}
	require.Equal(t, 3, progress, "the fake hypervisor reports three times")
	require.True(t, sawRedirect, "the run added a redirect: the redirect checks can fail")
	assert.Equal(t, float64(rep.Migration.Bytes), value(t, reg, metrics.MigrationBytesTotal))
	assertSteps(t, reg, rep)
}

// TestObserveSynthetic covers what the fakes do not produce: a run that
// stopped mid-stream (its remaining bytes drop to 0 at Finished, its
// progress bytes stay counted), a final count above the last progress
// report (the difference is added), and events of a run whose Started
// was missed (counted with fence_mode "unknown", no duration).
func TestObserveSynthetic(t *testing.T) {
	c, reg := newController(t)
	p := migration.Plan{ID: "m1", VM: "vm1", Link: tunnel.WireGuard, FenceMode: migration.FenceAtSwitchover}
	at := time.Now()
	c.Observe(migration.Started{ID: "m1", Plan: p, At: at})
	c.Observe(migration.MigrationProgress{ID: "m1", Progress: hypervisor.Progress{Transferred: 100, Remaining: 50}})
	c.Observe(migration.Started{ID: "m2", Plan: p, At: at})
	c.Observe(migration.MigrationProgress{ID: "m2", Progress: hypervisor.Progress{Transferred: 10, Remaining: 7}})
	assert.Equal(t, 57.0, value(t, reg, metrics.MigrationRemaining), "summed over the runs in progress")
	assert.Equal(t, 110.0, value(t, reg, metrics.MigrationBytesTotal))
	assert.Equal(t, 2.0, value(t, reg, metrics.MigrationsInProgress))
	c.Observe(migration.Finished{ID: "m1", Outcome: migration.RolledBack, Report: &migration.Report{ID: "m1", Outcome: migration.RolledBack}})
	assert.Equal(t, 7.0, value(t, reg, metrics.MigrationRemaining), "m1's remaining bytes are gone with it")
	assert.Equal(t, 110.0, value(t, reg, metrics.MigrationBytesTotal), "m1's progress stays counted")
	c.Observe(migration.Finished{ID: "m2", Outcome: migration.Completed, Report: &migration.Report{ID: "m2", Outcome: migration.Completed,
		Migration: hypervisor.Stats{Bytes: 25}}})
	assert.Equal(t, 125.0, value(t, reg, metrics.MigrationBytesTotal), "m2's final count adds 15")
	assert.Zero(t, value(t, reg, metrics.MigrationRemaining))

	// A run seen from its middle: a step, then its end (the link from the
	// report).
	start := time.Now()
	c.Observe(migration.StepFinished{ID: "m3", Block: migration.BlockMigrate, Duration: time.Second, Err: errBoom})
	assert.Equal(t, 1.0, value(t, reg, metrics.MigrationsInProgress))
	c.Observe(migration.Finished{ID: "m3", Outcome: migration.RolledBack, Report: &migration.Report{ID: "m3",
		Link:  tunnel.Link{Spec: tunnel.Spec{Kind: tunnel.IPsec}},
		Steps: []migration.StepTiming{{Block: migration.BlockMigrate, Start: start.UnixNano(), Duration: int64(time.Second)}}}})
	assert.Equal(t, 1.0, series(t, reg, metrics.MigrationsTotal)[`fence_mode="unknown",link="ipsec",outcome="rolled-back"`].Value)
	assert.Equal(t, map[string]sample{`block="330",step="migrate"`: {Value: 1}}, series(t, reg, metrics.StepFailuresTotal))
	assert.Zero(t, value(t, reg, metrics.MigrationsInProgress))
	// m1 and m2 had Started; their reports no step: no duration either.
	n, _ := hist(t, reg, metrics.MigrationDuration)
	assert.Zero(t, n)
}

// TestLint: every metric of a Controller that saw a completed and a
// rolled-back migration (so each family has a series) passes promlint.
func TestLint(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Auditor.SetConns(plainConn, tlsConn)
	c, reg := newController(t)
	m := newMigrator(t, s)
	_, err, _ := migrate(t, c, m, s.SubnetPlan())
	require.NoError(t, err)
	s.Linker.Faults.FailOn("Prepare", 0, errBoom)
	p := s.Plan()
	p.From, p.To = "cloud", "secure"
	_, err, _ = migrate(t, c, m, p)
	require.ErrorIs(t, err, migration.ErrRolledBack)

	mfs, err := reg.Gather()
	require.NoError(t, err)
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	want := []string{metrics.MigrationsTotal, metrics.MigrationsInProgress, metrics.MigrationDuration, metrics.MigrationDowntime,
		metrics.SwitchoverHook, metrics.StepDuration, metrics.StepFailuresTotal, metrics.MigrationBytesTotal, metrics.MigrationRemaining,
		metrics.ConnectionsResetTotal, metrics.ConnectionsKeptTotal, metrics.RedirectActive, metrics.RouteConvergence, metrics.EventsDroppedTotal}
	slices.Sort(want)
	require.Equal(t, want, names, "the families gathered: every one is linted")
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	assert.Empty(t, problems)
	// Control: the linter catches a badly named metric.
	bad := prometheus.NewRegistry()
	bad.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: "sealift_migration_bytes", Help: "x"}))
	problems, err = testutil.GatherAndLint(bad)
	require.NoError(t, err)
	assert.NotEmpty(t, problems, "control: promlint passes a counter without _total")
}

// TestNewTwice: a second Controller on the same registry is refused.
func TestNewTwice(t *testing.T) {
	reg := prometheus.NewRegistry()
	_, err := metrics.New(reg)
	require.NoError(t, err)
	_, err = metrics.New(reg)
	var are prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &are)
	c, err := metrics.New(nil)
	require.NoError(t, err, "nil: registered nowhere")
	assert.Positive(t, testutil.CollectAndCount(c, metrics.MigrationsInProgress))
}

// TestWatchEndsWithMigrator: Watch returns once its context ends, having
// observed every event delivered before, and counts events the Migrator
// dropped for a full subscriber.
func TestWatchEndsWithMigrator(t *testing.T) {
	s := migrationtest.NewSetup()
	c, reg := newController(t)
	m := newMigrator(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	done := c.Watch(ctx, m)
	_, unsubscribe := m.Subscribe(0) // never read: every event dropped
	defer unsubscribe()
	_, err := m.Run(context.Background(), s.Plan())
	require.NoError(t, err)
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Watch did not end with its context")
	}
	require.Positive(t, m.Dropped())
	assert.Equal(t, float64(m.Dropped()), value(t, reg, metrics.EventsDroppedTotal), "drops of the watched Migrator")
	assert.Equal(t, 1.0, series(t, reg, metrics.MigrationsTotal)[`fence_mode="at-switchover",link="wireguard",outcome="completed"`].Value)
}

// TestResetFailedAndRedirectRolledBack: a reset that fails (block 365)
// leaves the VM fenced at the target and counts no connection as reset
// (one kept, and the failure); a redirect that fails in the hook (block
// 340) rolls the migration back, and the rolled-back redirect tunnel
// (prepared at 315) is not counted as up.
func TestResetFailedAndRedirectRolledBack(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Auditor.SetConns(plainConn, tlsConn)
	s.Cloud.Auditor.Faults.FailOn("Reset", 1, errBoom)
	c, reg := newController(t)
	m := newMigrator(t, s)
	rep, err, _ := migrate(t, c, m, s.Plan())
	require.ErrorIs(t, err, migration.ErrStayedFenced)
	require.Len(t, rep.Audit.Reset, 1, "one connection was to be reset")
	assert.Zero(t, value(t, reg, metrics.ConnectionsResetTotal), "the reset failed")
	assert.Equal(t, 1.0, value(t, reg, metrics.ConnectionsKeptTotal))
	assert.Equal(t, map[string]sample{`block="365",step="reset-unsecured"`: {Value: 1}}, series(t, reg, metrics.StepFailuresTotal))
	assert.Equal(t, map[string]sample{`fence_mode="at-switchover",link="wireguard",outcome="stayed-fenced"`: {Value: 1}},
		series(t, reg, metrics.MigrationsTotal))

	s = migrationtest.NewSetup()
	s.Router.Faults.FailOn("AddRedirect", 1, errBoom)
	c, reg = newController(t)
	rep, err, _ = migrate(t, c, newMigrator(t, s), s.SubnetPlan())
	require.ErrorIs(t, err, migration.ErrRolledBack)
	require.NotNil(t, rep.Redirect, "the redirect tunnel was prepared")
	assert.Zero(t, value(t, reg, metrics.RedirectActive), "the rollback removed it")
	assert.Equal(t, map[string]sample{`fence_mode="at-switchover",link="wireguard",outcome="rolled-back"`: {Value: 1}},
		series(t, reg, metrics.MigrationsTotal))
}

// TestRecovery: a controller dies while waiting for the routing core (the
// VM runs at the target, the redirect is up); a new Migrator's Recover,
// watched, finishes it: the migration counts as completed, the
// recovery's blocks are observed, its redirect removal brings the gauge
// back to 0, and a recovery adds no run duration (it did not migrate).
func TestRecovery(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	s.Config.Journal = migration.NewMemJournal()
	s.Router.Faults.CrashOn("Wait", 1)
	m1 := newMigrator(t, s)
	crashed := make(chan struct{})
	go func() { defer close(crashed); _, _ = m1.Run(ctx, s.SubnetPlan()) }()
	<-crashed
	require.Equal(t, 1, s.Router.Faults.Injected(), "the crash happened")
	s.Router.Faults.ClearFaults()

	c, reg := newController(t)
	m2 := newMigrator(t, s)
	wctx, cancel := context.WithCancel(ctx)
	done := c.Watch(wctx, m2)
	reps, err := m2.Recover(ctx)
	cancel()
	<-done
	require.NoError(t, err)
	require.Len(t, reps, 1)
	require.Equal(t, migration.Completed, reps[0].Outcome)
	require.NotEmpty(t, reps[0].Steps)
	assert.Equal(t, map[string]sample{`fence_mode="at-switchover",link="wireguard",outcome="completed"`: {Value: 1}},
		series(t, reg, metrics.MigrationsTotal))
	assertSteps(t, reg, reps[0])
	assert.Zero(t, value(t, reg, metrics.MigrationsInProgress))
	assert.Zero(t, value(t, reg, metrics.RedirectActive))
	n, _ := hist(t, reg, metrics.MigrationDuration)
	assert.Zero(t, n, "a recovery is not a migration's duration")
}

// runBatch runs a batch of vm1 and vm2 (both of the subnet, at a) on a
// fresh Setup while c watches; fail, if set, injects faults first.
func runBatch(t *testing.T, c *metrics.Controller, fail func(*migrationtest.Setup)) *migration.BatchReport {
	t.Helper()
	s := migrationtest.NewSetup()
	b := s.Batch(2)
	b.Parallel = 1
	if fail != nil {
		fail(s)
	}
	m := newMigrator(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := c.Watch(ctx, m)
	rep, _ := m.RunBatch(ctx, b)
	cancel()
	<-done
	require.NotNil(t, rep)
	require.Zero(t, m.Dropped(), "events dropped")
	return rep
}

// TestBatch: a batch's members count as migrations and the batch as
// one batch; the members' redirect (their addresses routed into the
// batch's one tunnel) is active until the batch removes the tunnel, and
// the batch's convergence is observed once. A partial batch keeps its
// tunnel: its moved member's redirect stays active.
func TestBatch(t *testing.T) {
	c, reg := newController(t)
	rep := runBatch(t, c, nil)
	require.Equal(t, migration.Completed, rep.Outcome, rep.Reason)
	require.NotNil(t, rep.Converged)
	assert.Equal(t, map[string]sample{`fence_mode="at-switchover",link="wireguard",outcome="completed"`: {Value: 2}},
		series(t, reg, metrics.MigrationsTotal))
	assert.Equal(t, map[string]sample{`outcome="completed"`: {Value: 1}}, series(t, reg, metrics.BatchesTotal))
	assert.Zero(t, value(t, reg, metrics.RedirectActive), "the batch removed its tunnel")
	n, sum := hist(t, reg, metrics.RouteConvergence)
	assert.Equal(t, uint64(1), n, "one convergence: the batch's")
	assert.Equal(t, rep.Converged.After.Seconds(), sum)
	assert.Zero(t, value(t, reg, metrics.MigrationsInProgress))

	c, reg = newController(t)
	rep = runBatch(t, c, func(s *migrationtest.Setup) { s.Secure.Hypervisor.FailOn("Migrate", 2, hypervisor.ErrMigration) })
	require.Equal(t, migration.Partial, rep.Outcome, rep.Reason)
	assert.Equal(t, map[string]sample{`outcome="partial"`: {Value: 1}}, series(t, reg, metrics.BatchesTotal))
	assert.Equal(t, 1.0, value(t, reg, metrics.RedirectActive), "the moved member's redirect stays with the tunnel")
}
