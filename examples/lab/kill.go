package main

// The remote lab's crash scenario (issue 12, item 8): `-remote -kill
// source|target` kills the source's or the target's agent with SIGKILL
// in the middle of a migration (-kill-at copy: while QEMU copies RAM;
// switchover: as the controller starts the switchover hook's fence),
// lets the controller give up, restarts the agent and runs `sealift
// recover`. Throughout, the lab watches where the VM runs through
// monitors of its own on each QEMU (not through the agents), and the
// wan as always. The VM must never run in two places, end in exactly
// one, and nothing may cross the wan in clear.

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sealift/sealift/hypervisor/qemu/qmp"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/migration"
)

// KillResult is what the crash scenario saw.
type KillResult struct {
	Agent string `json:"agent"` // the killed agent's host, or "controller"
	At    string `json:"at"`    // copy or switchover; a crash point for the controller
	// The controller's crash (crash.go): Point, the line it printed
	// last before the kill, the journal ("bolt": `sealift recover` after
	// the kill), the outcome the recovery reported, the time from the
	// kill to the recovery's end, the peers' blackout (no reply
	// arriving, from the migration's start to the end), where the VM is
	// active at the end and what the hosts hold that its end does not
	// explain.
	Point    string `json:"point,omitempty"`
	LastLine string `json:"last_line,omitempty"`
	Journal  string `json:"journal,omitempty"`
	Outcome  string `json:"outcome,omitempty"`
	// TakeoverMS: from the kill to the recovering controller's start on
	// the migration (the standby: once it claimed it); RecoveredMS: to
	// the end of the recovery.
	TakeoverMS  float64 `json:"takeover_ms,omitempty"`
	RecoveredMS float64 `json:"recovered_ms,omitempty"`
	BlackoutMS  float64 `json:"blackout_ms,omitempty"`
	// BlackoutFromKillMS: when the longest gap began, from the kill
	// (negative: before it, in the migration's own switchover).
	BlackoutFromKillMS float64  `json:"blackout_from_kill_ms"`
	VMActiveCount      int      `json:"vm_active_count"`
	VMRunningAt        []string `json:"vm_running_at,omitempty"`
	Leftovers          []string `json:"leftovers"`
	// What `sealift inspect` showed of A and B right after the kill and
	// after the recovery, and what the agents' lists held then.
	InspectAfterKill     map[string]inspected `json:"inspect_after_kill,omitempty"`
	InspectAfterRecovery map[string]inspected `json:"inspect_after_recovery,omitempty"`
	AgentsHold           map[string]inspected `json:"agents_hold,omitempty"`
	// KilledAfterMS: from the controller's report of the trigger block
	// starting (330 for copy, 320 for switchover) to the kill.
	KilledAfterMS  float64 `json:"killed_after_ms"`
	MigrateExit    int     `json:"migrate_exit"`
	MigrateOutcome string  `json:"migrate_outcome"`
	MigrateError   string  `json:"migrate_error,omitempty"`
	RecoverExit    int     `json:"recover_exit"`
	// RecoverOutcomes: one per migration the recovery handled.
	RecoverOutcomes []string `json:"recover_outcomes"`
	// Placement, from the lab's own monitors every 20 ms from the start
	// of the migration to the end: how many samples, the most QEMU
	// instances of the VM running at once, the final status per host.
	Samples    int               `json:"placement_samples"`
	MaxRunning int               `json:"max_running_at_once"`
	Final      map[string]string `json:"final_placement"`
	// LinkEnds and Fences left on A and B after the recovery (the
	// agents' own lists).
	LinkEnds   int  `json:"link_ends_left"`
	Fences     int  `json:"fences_left"`
	PeersReach bool `json:"peers_reach_vm"`
	// JournalUnfinished: migrations the controller's journal still
	// holds unfinished after the recovery.
	JournalUnfinished int    `json:"journal_unfinished"`
	Error             string `json:"error,omitempty"`
}

// placement samples where the VM's QEMUs are and what they do.
type placement struct {
	paths      map[string]string // host -> the lab's monitor socket
	mons       map[string]*qmp.Client
	mu         sync.Mutex
	samples    int
	maxRunning int
	stop, done chan struct{}
}

func (w *world) watchPlacement(vm string) *placement {
	p := &placement{paths: map[string]string{}, mons: map[string]*qmp.Client{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, h := range []string{"host-a", "host-b"} {
		p.paths[h] = labMonitor(w.rm.agents[h], vm)
	}
	go func() {
		defer close(p.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				p.sample()
			}
		}
	}()
	return p
}

// sample records one look at every host; it returns each host's QEMU
// status ("none": no QEMU of the VM there).
func (p *placement) sample() map[string]string {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := map[string]string{}
	running := 0
	for h, path := range p.paths {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c := p.mons[h]
		if c == nil {
			if _, err := os.Stat(path); err == nil {
				if c, _ = qmp.Dial(ctx, path); c != nil {
					p.mons[h] = c
				}
			}
		}
		st[h] = "none"
		if c != nil {
			var s struct {
				Status string `json:"status"`
			}
			if err := c.Execute(ctx, "query-status", nil, &s); err != nil {
				c.Close()
				delete(p.mons, h)
			} else {
				st[h] = s.Status
			}
		}
		cancel()
		if st[h] == "running" {
			running++
		}
	}
	p.samples++
	p.maxRunning = max(p.maxRunning, running)
	return st
}

// counts are how many samples were taken and the most QEMU instances
// running at once.
func (p *placement) counts() (samples, maxRunning int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.samples, p.maxRunning
}

func (p *placement) close() {
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.mons {
		c.Close()
	}
}

// killScenario runs the crash scenario on the first guest.
func (w *world) killScenario(ctx context.Context, t lab.TB, res *Result, pingers map[string][]*pinger) error {
	ps := pingers[w.vms[0].name]
	o := w.opts
	k := &KillResult{Agent: map[string]string{"source": "host-a", "target": "host-b", "controller": "controller"}[o.Kill], At: o.KillAt}
	res.Kill = k
	fail := func(err error) error { k.Error = err.Error(); return err }
	if o.Kill == "controller" {
		if err := w.controllerKill(ctx, t, res, k, pingers); err != nil {
			return fail(err)
		}
		return nil
	}
	v := w.vms[0]
	plan := migration.Plan{VM: v.name, From: "secure", To: "cloud", Link: o.Link, FenceMode: o.Fence, MaxDowntime: maxDowntime,
		Addrs: w.planAddrs(v), Peers: w.planPeers()}
	pl := w.watchPlacement(v.name)
	defer pl.close()
	c, err := w.startController(ctx, migrateArgs(plan)...)
	if err != nil {
		return fail(err)
	}
	trigger, delay := "block 330 migrate ...", 300*time.Millisecond
	if o.KillAt == "switchover" {
		trigger, delay = "block 320 fence ...", 0
	}
	var t0 time.Time
	timeout := time.After(2 * time.Minute)
	for t0.IsZero() {
		select {
		case line := <-c.lines:
			if strings.HasPrefix(line, trigger) {
				t0 = time.Now()
			}
		case <-c.done:
			return fail(fmt.Errorf("the controller ended before %q: %v", trigger, c.wait().err))
		case <-timeout:
			return fail(fmt.Errorf("no %q from the controller in 2 minutes", trigger))
		}
	}
	time.Sleep(delay)
	victim := w.rm.agents[k.Agent]
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fail(fmt.Errorf("kill agent %s: %w", k.Agent, err))
	}
	<-victim.exited
	k.KilledAfterMS = ms(time.Since(t0))
	w.log.Info("agent killed", "agent", k.Agent, "after_ms", k.KilledAfterMS)

	// The controller gives up (or finishes) on its own.
	select {
	case <-c.done:
	case <-time.After(3 * time.Minute):
		_ = c.cmd.Process.Kill()
	}
	run := c.wait()
	k.MigrateExit = run.code
	if len(run.reps) > 0 {
		k.MigrateOutcome = string(run.reps[0].Outcome)
		k.MigrateError = run.reps[0].Reason
	} else if run.err != nil {
		k.MigrateError = run.err.Error()
	}

	// The agent comes back and adopts what is left; the controller
	// recovers.
	if err := w.startAgent(t, victim); err != nil {
		return fail(err)
	}
	if err := w.dialAgent(t, victim); err != nil {
		return fail(err)
	}
	if err := waitAgent(ctx, victim); err != nil {
		return fail(err)
	}
	rc, err := w.startController(ctx, "recover")
	if err != nil {
		return fail(err)
	}
	rr := rc.wait()
	k.RecoverExit = rr.code
	k.RecoverOutcomes = []string{}
	for _, r := range rr.reps {
		k.RecoverOutcomes = append(k.RecoverOutcomes, string(r.Outcome)+" "+r.Reason)
	}

	// The recovery is done: where the VM runs now is final. Its peers
	// reach it again once their pings find it (at most 10 s).
	k.Final = pl.sample()
	k.PeersReach = peersReach(ctx, ps)
	k.Samples, k.MaxRunning = pl.counts()
	for _, h := range []string{"host-a", "host-b"} {
		cl := w.rm.agents[h].client
		if ends, err := cl.LinkEnd().List(ctx); err == nil {
			k.LinkEnds += len(ends)
		}
		if f, err := cl.Fencer(ctx); err == nil {
			if fs, err := f.List(ctx); err == nil {
				k.Fences += len(fs)
			}
		}
	}
	bj, err := migration.OpenBoltJournal(w.rm.journal)
	if err != nil {
		return fail(fmt.Errorf("the controller's journal: %w", err))
	}
	defer bj.Close()
	un, err := bj.Unfinished(ctx)
	if err != nil {
		return fail(err)
	}
	k.JournalUnfinished = len(un)
	return nil
}

// peersReach waits (at most 10 s) until every pinger's replies arrive
// again.
func peersReach(ctx context.Context, ps []*pinger) bool {
	reached := func() bool {
		for _, p := range ps {
			if _, ok := p.FirstArrivalAfter(time.Now().Add(-300 * time.Millisecond)); !ok {
				return false
			}
		}
		return true
	}
	return waitFor(ctx, 10*time.Second, reached) == nil
}

// judgeKill adds the crash scenario's verdicts.
func (r *Result) judgeKill(add func(string, bool, string, ...any)) {
	k := r.Kill
	if k == nil {
		add("crash scenario ran", false, "no result")
		return
	}
	if k.Agent == "controller" {
		add("the kill landed at the point", k.LastLine != "" && k.MigrateExit == -1,
			"point %s, last line %q, sealift migrate's exit %d (-1: killed)", k.Point, k.LastLine, k.MigrateExit)
	} else {
		add("the kill landed mid-migration", k.KilledAfterMS > 0 && k.MigrateOutcome != string(migration.Completed),
			"killed %s %.0f ms after the trigger; sealift migrate: exit %d, %s %s", k.Agent, k.KilledAfterMS, k.MigrateExit, k.MigrateOutcome, k.MigrateError)
	}
	add("never running in two places", k.Samples > 0 && k.MaxRunning <= 1, "%d samples, at most %d running at once", k.Samples, k.MaxRunning)
	var where []string
	running := 0
	for h, st := range k.Final {
		if st != "none" {
			where = append(where, h+" "+st)
		}
		if st == "running" {
			running++
		}
	}
	add("ends in exactly one place, running", len(where) == 1 && running == 1, "%v", k.Final)
	fenced := k.RecoverExit == exitStayedFenced
	if k.Agent == "controller" {
		add("recovered: completed or rolled back", k.Outcome == string(migration.Completed) || k.Outcome == string(migration.RolledBack),
			"exit %d: %v", k.RecoverExit, k.RecoverOutcomes)
		add("nothing left over", len(k.Leftovers) == 0, "%v", k.Leftovers)
		want := map[string]inspected{"host-a": {}, "host-b": {}}
		if k.Outcome == string(migration.Completed) { // the VM's link, and B's fence open to it
			want = map[string]inspected{"host-a": {Links: 1}, "host-b": {Fences: 1, Links: 1}}
		}
		add("sealift inspect after the recovery shows what the agents hold, and only the end's",
			maps.Equal(k.InspectAfterRecovery, k.AgentsHold) && maps.Equal(k.InspectAfterRecovery, want),
			"inspect %v, agents %v, want %v (after the kill: %v)", k.InspectAfterRecovery, k.AgentsHold, want, k.InspectAfterKill)
	} else {
		add("recover finished it", k.RecoverExit == 0 || k.RecoverExit == exitRolledBack || fenced,
			"exit %d: %v", k.RecoverExit, k.RecoverOutcomes)
	}
	add("journal: nothing unfinished", k.JournalUnfinished == 0, "%d unfinished", k.JournalUnfinished)
	if !fenced {
		add("peers reach the VM after", k.PeersReach, "")
	}
	if k.Agent != "controller" && k.Final["host-a"] == "running" && k.Final["host-b"] == "none" {
		add("rolled back clean: no link end, no fence left", k.LinkEnds == 0 && k.Fences == 0, "%d link ends, %d fences", k.LinkEnds, k.Fences)
	}
}

// The controller's exit codes (cmd/sealift).
const (
	exitRolledBack   = 3
	exitStayedFenced = 4
)
