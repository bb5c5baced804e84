// Package metrics exposes a controller's migrations as Prometheus
// metrics (github.com/prometheus/client_golang). It is optional and kept
// apart so that package migration stays free of it: a Controller
// subscribes to a Migrator's events (Watch), or is fed events by the
// program (Observe), and derives every value from them and from the
// Report each Finished event carries. Serve and Handler expose a
// registry over HTTP at /metrics.
//
// Labels are bounded: outcome, link kind, fence mode, FIG. 3 block. No
// migration ID, VM or host name is ever a label.
//
// The metrics, and what each is derived from:
//
//	sealift_migrations_total{outcome,link,fence_mode}  counter    Finished: its outcome; the Report's
//	                                                              Link.Kind (else the plan's); the plan's
//	                                                              fence mode (from Started)
//	sealift_migrations_in_progress                     gauge      runs between Started and Finished
//	sealift_migration_duration_seconds                 histogram  Started.At to the end of the Report's
//	                                                              last step (not for recoveries)
//	sealift_migration_downtime_seconds                 histogram  Report.Migration.Downtime (hypervisor)
//	sealift_migration_switchover_hook_seconds          histogram  Report.Migration.SwitchoverDone -
//	                                                              Switchover
//	sealift_step_duration_seconds{block,step}          histogram  StepFinished.Duration
//	sealift_step_failures_total{block,step}            counter    StepFinished with an error
//	sealift_migration_bytes_total                      counter    MigrationProgress.Transferred as it
//	                                                              grows, then Report.Migration.Bytes
//	sealift_migration_remaining_bytes                  gauge      the last MigrationProgress.Remaining of
//	                                                              each run in progress, summed
//	sealift_connections_kept_total                     counter    len(Report.Audit.Kept)
//	sealift_connections_reset_total                    counter    len(Report.Audit.Reset), if block 365
//	                                                              succeeded
//	sealift_redirect_active                            gauge      block 340 succeeded until block 390 did;
//	                                                              at Finished: Report.Redirect set, not
//	                                                              rolled back, no successful 390; a batch
//	                                                              member's until its BatchFinished says
//	                                                              the batch's tunnel is gone
//	sealift_route_convergence_seconds                  histogram  Report.Converged.After (a batch's:
//	                                                              BatchFinished's Report)
//	sealift_batches_total{outcome}                     counter    BatchFinished: its outcome (its members
//	                                                              count in sealift_migrations_total)
//	sealift_events_dropped_total                       counter    the watched Migrators' Dropped
//
// The agent's metrics (RPC latency, fences, link ends and their
// counters) are package agent's (agent.WithMetrics).
package metrics

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sealift/sealift/migration"
)

// Metric names (the Controller's).
const (
	MigrationsTotal       = "sealift_migrations_total"
	MigrationsInProgress  = "sealift_migrations_in_progress"
	MigrationDuration     = "sealift_migration_duration_seconds"
	MigrationDowntime     = "sealift_migration_downtime_seconds"
	SwitchoverHook        = "sealift_migration_switchover_hook_seconds"
	StepDuration          = "sealift_step_duration_seconds"
	StepFailuresTotal     = "sealift_step_failures_total"
	MigrationBytesTotal   = "sealift_migration_bytes_total"
	MigrationRemaining    = "sealift_migration_remaining_bytes"
	ConnectionsResetTotal = "sealift_connections_reset_total"
	ConnectionsKeptTotal  = "sealift_connections_kept_total"
	RedirectActive        = "sealift_redirect_active"
	RouteConvergence      = "sealift_route_convergence_seconds"
	EventsDroppedTotal    = "sealift_events_dropped_total"
	BatchesTotal          = "sealift_batches_total"
)

// unknown is the label value of a run whose plan this Controller never
// saw (its Started event was missed).
const unknown = "unknown"

// Histogram buckets, in seconds.
var (
	// A run: from seconds (a small VM on a fast link) to an hour.
	durationBuckets = []float64{1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600}
	// The VM's downtime: the lab measures tens of milliseconds; QEMU's
	// default limit is 300 ms.
	downtimeBuckets = []float64{.001, .0025, .005, .01, .025, .05, .075, .1, .15, .2, .3, .5, .75, 1, 2.5, 5, 10}
	// The switchover hook only flips pre-staged state: milliseconds.
	hookBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	// A block: from a journal write to a whole pre-copy.
	stepBuckets = []float64{.001, .005, .01, .05, .1, .5, 1, 5, 10, 30, 60, 300, 600, 1800}
	// The routing core's convergence (BGP: seconds to minutes).
	convergenceBuckets = []float64{.1, .5, 1, 2, 5, 10, 30, 60, 120, 300, 600}
)

// Controller holds a controller's migration metrics. It is a
// prometheus.Collector (New registers it); Observe and Watch are safe for
// concurrent use.
type Controller struct {
	migrations  *prometheus.CounterVec
	inProgress  prometheus.Gauge
	duration    prometheus.Histogram
	downtime    prometheus.Histogram
	hook        prometheus.Histogram
	steps       *prometheus.HistogramVec
	stepFails   *prometheus.CounterVec
	bytes       prometheus.Counter
	remaining   prometheus.Gauge
	reset       prometheus.Counter
	kept        prometheus.Counter
	redirect    prometheus.Gauge
	convergence prometheus.Histogram
	dropped     prometheus.CounterFunc
	batches     *prometheus.CounterVec

	mu   sync.Mutex
	runs map[string]*runState // by migration ID, Started (or first event) to Finished
	// redirects are the migrations whose redirect tunnel is up (bounded:
	// a migration leaves once its tunnel is removed or rolled back).
	redirects map[string]bool
	// watched are the Migrators Watch follows; droppedBase is what the
	// ones it stopped following had dropped (the counter never falls).
	watched     map[*migration.Migrator]int
	droppedBase uint64
}

// runState is what the Controller remembers of a migration in progress.
type runState struct {
	plan      migration.Plan
	planKnown bool
	started   time.Time
	recovery  bool
	counted   uint64 // bytes already added to the bytes counter
	remaining uint64
}

var _ prometheus.Collector = (*Controller)(nil)

// New returns a Controller and registers it with reg (nil: registered
// nowhere; register it yourself). A registry that already holds these
// metrics (another Controller) is an error wrapping the registry's
// prometheus.AlreadyRegisteredError.
func New(reg prometheus.Registerer) (*Controller, error) {
	c := &Controller{
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{Name: MigrationsTotal,
			Help: "Migration runs finished by this controller, by outcome (completed, rolled-back, stayed-fenced, abandoned), secure link kind and fence mode. Recover and Standby runs count too (a run that lost its ownership ends abandoned here and counts again where it is taken over)."},
			[]string{"outcome", "link", "fence_mode"}),
		inProgress: prometheus.NewGauge(prometheus.GaugeOpts{Name: MigrationsInProgress,
			Help: "Migration runs (Run, Recover, Standby) started and not finished."}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MigrationDuration,
			Help:    "Duration of migration runs (not recoveries), from their start to the end of their last FIG. 3 block, whatever the outcome.",
			Buckets: durationBuckets}),
		downtime: prometheus.NewHistogram(prometheus.HistogramOpts{Name: MigrationDowntime,
			Help:    "The VM's downtime as its hypervisor measured it (source paused to target running), per migration whose stream completed.",
			Buckets: downtimeBuckets}),
		hook: prometheus.NewHistogram(prometheus.HistogramOpts{Name: SwitchoverHook,
			Help:    "Duration of the switchover hook (blocks 325-340 while the source is paused; part of the downtime), per migration that reached it and completed its stream.",
			Buckets: hookBuckets}),
		steps: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: StepDuration,
			Help:    "Duration of FIG. 3's blocks, by block number (310-395; 900: rollback) and name, failed ones included.",
			Buckets: stepBuckets}, []string{"block", "step"}),
		stepFails: prometheus.NewCounterVec(prometheus.CounterOpts{Name: StepFailuresTotal,
			Help: "FIG. 3 blocks that ended with an error, by block number and name."}, []string{"block", "step"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: MigrationBytesTotal,
			Help: "Bytes the hypervisors sent in migration streams (progress while they run, the final count when they end; aborted streams included)."}),
		remaining: prometheus.NewGauge(prometheus.GaugeOpts{Name: MigrationRemaining,
			Help: "Bytes left in the current pre-copy pass, summed over the migrations in progress (0 when none migrates)."}),
		reset: prometheus.NewCounter(prometheus.CounterOpts{Name: ConnectionsResetTotal,
			Help: "Connections of migrated VMs reset because nothing secured them (block 365, when it succeeded)."}),
		kept: prometheus.NewCounter(prometheus.CounterOpts{Name: ConnectionsKeptTotal,
			Help: "Connections of migrated VMs kept because they were secure by their own means (block 360)."}),
		redirect: prometheus.NewGauge(prometheus.GaugeOpts{Name: RedirectActive,
			Help: "Migrations whose redirect tunnel is up as this controller last saw them: from the routing core's redirect (block 340) until its removal (block 390) or a rollback; a run that ended with it kept (the core did not converge, or stayed fenced, or abandoned) counts until a later run of the same migration removes it or this process restarts."}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{Name: RouteConvergence,
			Help:    "Time the routing core took to learn the moved subnet's real route (blocks 380/385), per migration or batch whose core converged (a batch's members do not wait: the batch does).",
			Buckets: convergenceBuckets}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: BatchesTotal,
			Help: "Batches (a subnet's VMs moved together) finished by this controller, by outcome (completed, partial, rolled-back, abandoned); each member also counts as a migration."},
			[]string{"outcome"}),
		runs:      map[string]*runState{},
		redirects: map[string]bool{},
		watched:   map[*migration.Migrator]int{},
	}
	c.dropped = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: EventsDroppedTotal,
		Help: "Events the watched Migrators could not deliver to a subscriber whose buffer was full (any subscriber: these metrics may have missed a step or a run's end)."},
		c.droppedTotal)
	if reg != nil {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

func (c *Controller) collectors() []prometheus.Collector {
	return []prometheus.Collector{c.migrations, c.inProgress, c.duration, c.downtime, c.hook, c.steps, c.stepFails,
		c.bytes, c.remaining, c.reset, c.kept, c.redirect, c.convergence, c.dropped, c.batches}
}

// Describe implements prometheus.Collector.
func (c *Controller) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range c.collectors() {
		m.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (c *Controller) Collect(ch chan<- prometheus.Metric) {
	for _, m := range c.collectors() {
		m.Collect(ch)
	}
}

// Watch subscribes to m's events before it returns (a Run started after
// Watch returned is seen from its start) and observes them in a goroutine
// of its own, until ctx ends (it then unsubscribes and observes what was
// already delivered) or m closes the subscription. The returned channel
// is closed once that goroutine is done. The subscription's buffer is
// generous (4096 events); what m still drops is counted in
// sealift_events_dropped_total.
func (c *Controller) Watch(ctx context.Context, m *migration.Migrator) <-chan struct{} {
	events, unsubscribe := m.Subscribe(4096)
	c.mu.Lock()
	c.watched[m]++
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer c.unwatch(m)
		stop := context.AfterFunc(ctx, unsubscribe) // closes events: the loop drains them
		defer stop()
		for e := range events {
			c.Observe(e)
		}
		unsubscribe()
	}()
	return done
}

// unwatch stops counting m's drops, keeping what it dropped so far.
func (c *Controller) unwatch(m *migration.Migrator) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.watched[m]--; c.watched[m] <= 0 {
		delete(c.watched, m)
		c.droppedBase += m.Dropped()
	}
}

func (c *Controller) droppedTotal() float64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.droppedBase
	for m := range c.watched {
		n += m.Dropped()
	}
	return float64(n)
}

// run returns id's state, made on the first event of a run whose Started
// this Controller missed; c.mu is held.
func (c *Controller) run(id string) *runState {
	rs := c.runs[id]
	if rs == nil {
		rs = &runState{}
		c.runs[id] = rs
	}
	return rs
}

// Observe updates the metrics with one event of a Migrator (Watch calls
// it; a program that reads the events itself may too). Events of one
// migration must come in the order the Migrator emitted them.
func (c *Controller) Observe(e migration.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch e := e.(type) {
	case migration.Started:
		c.runs[e.ID] = &runState{plan: e.Plan, planKnown: true, started: e.At, recovery: e.Recovery}
	case migration.StepFinished:
		c.run(e.ID)
		block, name := strconv.Itoa(int(e.Block)), e.Block.String()
		c.steps.WithLabelValues(block, name).Observe(e.Duration.Seconds())
		if e.Err != nil {
			c.stepFails.WithLabelValues(block, name).Inc()
		}
		switch {
		case e.Block == migration.BlockRedirect && e.Err == nil:
			c.redirects[e.ID] = true
		case e.Block == migration.BlockRemoveTunnel && e.Err == nil:
			delete(c.redirects, e.ID)
		}
	case migration.StepStarted:
		c.run(e.ID)
	case migration.MigrationProgress:
		rs := c.run(e.ID)
		c.countBytes(rs, e.Transferred)
		rs.remaining = e.Remaining
	case migration.Finished:
		c.finished(e)
	case migration.BatchFinished:
		c.batchFinished(e)
	}
	c.inProgress.Set(float64(len(c.runs)))
	var remaining uint64
	for _, rs := range c.runs {
		remaining += rs.remaining
	}
	c.remaining.Set(float64(remaining))
	c.redirect.Set(float64(len(c.redirects)))
}

// countBytes adds what a run transferred since it was last counted.
func (c *Controller) countBytes(rs *runState, transferred uint64) {
	if transferred > rs.counted {
		c.bytes.Add(float64(transferred - rs.counted))
		rs.counted = transferred
	}
}

// finished derives a run's end from its Report; c.mu is held.
func (c *Controller) finished(e migration.Finished) {
	rs := c.runs[e.ID]
	delete(c.runs, e.ID)
	if rs == nil {
		rs = &runState{}
	}
	rep := e.Report
	if rep == nil {
		rep = &migration.Report{ID: e.ID, Outcome: e.Outcome}
	}
	outcome, link, fenceMode := string(e.Outcome), string(rep.Link.Kind), unknown
	if rs.planKnown {
		fenceMode = string(rs.plan.FenceMode)
		if link == "" {
			link = string(rs.plan.Link)
		}
	}
	if outcome == "" {
		outcome = unknown
	}
	if link == "" {
		link = unknown
	}
	c.migrations.WithLabelValues(outcome, link, fenceMode).Inc()
	if end, ok := lastStepEnd(rep); ok && !rs.started.IsZero() && !rs.recovery && end.After(rs.started) {
		c.duration.Observe(end.Sub(rs.started).Seconds())
	}
	st := rep.Migration
	if st.Downtime > 0 {
		c.downtime.Observe(st.Downtime.Seconds())
	}
	if !st.Switchover.IsZero() && !st.SwitchoverDone.IsZero() {
		c.hook.Observe(st.SwitchoverDone.Sub(st.Switchover).Seconds())
	}
	c.countBytes(rs, st.Bytes)
	c.kept.Add(float64(len(rep.Audit.Kept)))
	if stepOK(rep, migration.BlockReset) {
		c.reset.Add(float64(len(rep.Audit.Reset)))
	}
	if rep.Converged != nil {
		c.convergence.Observe(rep.Converged.After.Seconds())
	}
	// The redirect tunnel: removed by block 390, or by the rollback.
	if rep.Redirect != nil && e.Outcome != migration.RolledBack && !stepOK(rep, migration.BlockRemoveTunnel) {
		c.redirects[e.ID] = true
	} else {
		delete(c.redirects, e.ID)
	}
}

// batchFinished counts a batch's end; its members' redirect is gone with
// the batch's tunnel (removed by the batch's block 390, or closed because
// no member left). c.mu is held.
func (c *Controller) batchFinished(e migration.BatchFinished) {
	outcome := string(e.Outcome)
	if outcome == "" {
		outcome = unknown
	}
	c.batches.WithLabelValues(outcome).Inc()
	rep := e.Report
	if rep == nil {
		return
	}
	if rep.Converged != nil {
		c.convergence.Observe(rep.Converged.After.Seconds())
	}
	if e.Outcome == migration.RolledBack || stepsOK(rep.Steps, migration.BlockRemoveTunnel) {
		for _, id := range e.Members {
			delete(c.redirects, id)
		}
	}
}

// stepOK reports whether the report has block b, ended without error.
func stepOK(r *migration.Report, b migration.Block) bool { return stepsOK(r.Steps, b) }

// stepsOK reports whether steps have block b, ended without error.
func stepsOK(steps []migration.StepTiming, b migration.Block) bool {
	for _, s := range steps {
		if s.Block == b && s.Err == "" {
			return true
		}
	}
	return false
}

// lastStepEnd is when the report's last block ended.
func lastStepEnd(r *migration.Report) (time.Time, bool) {
	var end int64
	for _, s := range r.Steps {
		end = max(end, s.Start+s.Duration)
	}
	return time.Unix(0, end), end > 0
}
