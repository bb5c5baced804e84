package migration

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// Partial is a batch's outcome when its members did not all end the same
// way: some moved, others did not (see BatchReport.Reports), or some
// stayed fenced at the target.
const Partial Outcome = "partial"

// Batch moves several VMs of one subnet from one environment to another
// at once (Migrator.RunBatch): the subnet's evacuation.
type Batch struct {
	// ID names the batch (at most 58 characters); empty means one is
	// generated. Member i's migration is ID-i (1-based).
	ID       string
	From, To string
	// Subnet is the members' subnet: Prefix, Via and ConvergeTimeout as
	// for a lone migration. Moved and Members are the batch's: leave them
	// empty.
	Subnet Subnet
	// Plans are the members, one VM each. Their ID, From, To, Subnet and
	// Batch are the batch's: leave them empty. All use the same Link kind
	// (the redirect tunnel's).
	Plans []Plan
	// Parallel bounds how many members migrate at once (0: all).
	Parallel int
}

// BatchReport is what RunBatch returns.
type BatchReport struct {
	ID string
	// Outcome: Completed when every member completed; RolledBack when
	// none left the source; Partial otherwise (Reason says which).
	Outcome Outcome
	Reason  string `json:",omitempty"`
	// Reports are the members' reports, in the order of Batch.Plans (nil
	// for a member that never started: its error says why).
	Reports []*Report
	// Redirect is the batch's one redirect tunnel, from the source's
	// routing core to the target.
	Redirect *tunnel.Link `json:",omitempty"`
	// Converged is the routing core's route to the subnet at its new
	// place, once every member had moved.
	Converged *routing.Converged `json:",omitempty"`
	// Steps are the batch's own: 315 (the redirect tunnel prepared), 375
	// (every member moved?), 380 and 390.
	Steps    []StepTiming
	Warnings []string `json:",omitempty"`
	Started  time.Time
	Duration time.Duration
}

// batchVM is the VM name of a batch's own journal record: no VM has it
// (a VM's name has no colon in any backend sealift has).
func batchVM(id string) string { return "batch:" + id }

// isBatch reports whether rec is a batch's own record (not a member's).
func isBatch(rec Record) bool { return rec.Plan.Batch != "" && rec.Plan.Batch == rec.ID }

func memberID(batch string, i int) string { return fmt.Sprintf("%s-%d", batch, i+1) }

func memberIDs(batch string, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = memberID(batch, i)
	}
	return ids
}

// plans checks the batch (defaults applied) and returns its members'
// plans and the batch's own plan (its journal record), touching nothing.
// Errors wrap ErrInvalidPlan and name the field and its value.
func (b Batch) plans(cfg *Config) ([]Plan, Plan, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidPlan}, args...)...)
	}
	if len(b.ID) > 58 {
		return nil, Plan{}, bad("Batch.ID %q is longer than 58 characters", b.ID)
	}
	if strings.Contains(b.ID, ":") {
		return nil, Plan{}, bad("Batch.ID %q contains a colon", b.ID)
	}
	if len(b.Plans) == 0 {
		return nil, Plan{}, bad("Batch.Plans is empty")
	}
	if len(b.Plans) > 999 {
		return nil, Plan{}, bad("Batch.Plans has %d members (at most 999)", len(b.Plans))
	}
	if b.Parallel < 0 {
		return nil, Plan{}, bad("Batch.Parallel %d is negative", b.Parallel)
	}
	if b.Subnet.Moved != "" || len(b.Subnet.Members) > 0 {
		return nil, Plan{}, bad("Batch.Subnet.Moved %q / Members %v are set: they are the batch's", b.Subnet.Moved, b.Subnet.Members)
	}
	id := b.ID
	if id == "" {
		id = newID()
	}
	sub := b.Subnet
	sub.Moved = SubnetYes
	vms := map[string]int{}
	for i, p := range b.Plans {
		if p.VM == "" {
			return nil, Plan{}, bad("Batch.Plans[%d].VM is empty", i)
		}
		if j, dup := vms[p.VM]; dup {
			return nil, Plan{}, bad("Batch.Plans[%d].VM %q is also Plans[%d]", i, p.VM, j)
		}
		vms[p.VM] = i
		sub.Members = append(sub.Members, p.VM)
	}
	bp := Plan{ID: id, VM: batchVM(id), From: b.From, To: b.To, Batch: id}
	plans := make([]Plan, len(b.Plans))
	for i, p := range b.Plans {
		for _, f := range []struct{ name, v string }{{"ID", p.ID}, {"From", p.From}, {"To", p.To}, {"Batch", p.Batch}} {
			if f.v != "" {
				return nil, Plan{}, bad("Batch.Plans[%d].%s %q is set: it is the batch's", i, f.name, f.v)
			}
		}
		if p.Subnet != nil {
			return nil, Plan{}, bad("Batch.Plans[%d].Subnet is set: it is the batch's", i)
		}
		p.ID, p.From, p.To, p.Batch = memberID(id, i), b.From, b.To, id
		s := sub
		s.Members = slices.Clone(sub.Members)
		p.Subnet = &s
		p.defaults()
		if err := p.validate(cfg); err != nil {
			return nil, Plan{}, fmt.Errorf("Batch.Plans[%d] (VM %q): %w", i, p.VM, err)
		}
		if i > 0 && p.Link != plans[0].Link {
			return nil, Plan{}, bad("Batch.Plans[%d].Link %q differs from Plans[0].Link %q (one redirect tunnel)", i, p.Link, plans[0].Link)
		}
		for j := range i {
			for _, a := range p.Addrs {
				if slices.Contains(plans[j].Addrs, a) {
					return nil, Plan{}, bad("Batch.Plans[%d].Addrs %s is also Plans[%d]'s", i, a, j)
				}
			}
		}
		plans[i] = p
		bp.Link = p.Link
		bp.Addrs = append(bp.Addrs, p.Addrs...)
		for _, q := range p.Peers {
			if !slices.Contains(bp.Peers, q) {
				bp.Peers = append(bp.Peers, q)
			}
		}
	}
	s := *plans[0].Subnet
	s.Members = slices.Clone(s.Members)
	bp.Subnet = &s
	return plans, bp, nil
}

// ValidateBatch checks a batch without touching anything; RunBatch does
// it too.
func (m *Migrator) ValidateBatch(b Batch) error {
	_, _, err := b.plans(&m.cfg)
	return err
}

// RunBatch migrates a subnet's VMs together: at most Parallel at once,
// each as Run would (its own journal record, secure link and outcome: a
// member that fails rolls back alone), and one redirect tunnel for the
// subnet, from the source's routing core to the target. The tunnel is
// prepared before any member starts; each member's switchover routes
// that member's addresses into it as it leaves (a route for the whole
// prefix would take the members still at the source away from them).
// Once every member is at the target, the batch waits for the routing
// core's route to the subnet's new place, then removes the redirects and
// the tunnel. If some members stayed at the source, the tunnel stays
// with the moved members' routes (Outcome Partial; an operator moves
// the rest, or takes the subnet back); if none left, it goes.
//
// The batch is journaled (a record of its own, ID; its members ID-1 ...)
// so that Recover and Standby finish it. The error is nil when every
// member completed, else it joins the members' errors (each wraps Run's
// sentinels and names the VM).
func (m *Migrator) RunBatch(ctx context.Context, b Batch) (*BatchReport, error) {
	plans, bp, err := b.plans(&m.cfg)
	if err != nil {
		return nil, err
	}
	keys := []string{bp.VM}
	for _, p := range plans {
		keys = append(keys, p.VM)
	}
	for i, k := range keys {
		if !m.lock(k) {
			for _, l := range keys[:i] {
				m.unlock(l)
			}
			return nil, fmt.Errorf("%w: VM %q is being migrated by this Migrator", ErrBusy, k)
		}
	}
	defer func() {
		for _, k := range keys {
			m.unlock(k)
		}
	}()
	start := time.Now()
	if err := m.cfg.Journal.Create(ctx, Record{ID: bp.ID, Plan: bp, Started: start}); err != nil {
		return nil, err
	}
	br := m.newRun(bp)
	br.quiet = true
	br.log.Info("batch started", "members", len(plans), "parallel", b.Parallel, "subnet", bp.Subnet.Prefix)
	ctx, release := br.owned(ctx)
	defer release()
	defer br.done()
	rep := &BatchReport{ID: bp.ID, Started: start, Reports: make([]*Report, len(plans))}
	defer func() { // after the report is filled in (below); not on a Goexit
		if rep.Outcome != "" {
			m.bus.emit(BatchFinished{ID: bp.ID, Outcome: rep.Outcome, Members: memberIDs(bp.ID, len(plans)), Report: rep})
		}
	}()
	defer func() {
		rep.Duration = time.Since(start)
		rep.Steps, rep.Warnings = br.rep.Steps, br.rep.Warnings
		rep.Redirect, rep.Converged = br.redirect, br.rep.Converged
	}()

	// 315, once for the batch: the redirect tunnel, ready before anyone
	// leaves.
	err = br.step(ctx, BlockTarget, map[string]string{"redirect": br.redirID, "members": fmt.Sprint(len(plans))}, func() error {
		red, err := br.linker.Prepare(ctx, br.redirectSpec())
		if err != nil {
			return fmt.Errorf("redirect tunnel: %w", err)
		}
		br.redirect = &red
		if err := br.linker.Activate(ctx, br.redirID); err != nil {
			return fmt.Errorf("redirect tunnel: %w", err)
		}
		return nil
	})
	if err != nil {
		cctx, cancel := br.cleanupCtx(ctx)
		defer cancel()
		cerr := br.linker.Close(cctx, br.redirID)
		rep.Outcome, rep.Reason = RolledBack, err.Error()
		if ferr := br.ownership(br.finish(cctx, RolledBack, err.Error())); ferr != nil || cerr != nil {
			rep.Outcome = Abandoned
			return rep, fmt.Errorf("%w: %w", ErrRollbackFailed, errors.Join(err, cerr, ferr))
		}
		return rep, fmt.Errorf("%w: %w", ErrRolledBack, err)
	}

	// The members, at most Parallel at once.
	n := b.Parallel
	if n == 0 || n > len(plans) {
		n = len(plans)
	}
	sem := make(chan struct{}, n)
	errs := make([]error, len(plans))
	var wg sync.WaitGroup
	var exited atomic.Bool
	for i, p := range plans { // started in the order of Plans
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			errs[i] = fmt.Errorf("VM %q: not started: %w", p.VM, context.Cause(ctx))
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			returned := false
			defer func() {
				if !returned { // runtime.Goexit (a test's simulated crash)
					exited.Store(true)
				}
			}()
			r, err := m.runLocked(ctx, p, br.redirect)
			returned = true
			rep.Reports[i] = r
			if err != nil {
				errs[i] = fmt.Errorf("VM %q: %w", p.VM, err)
			}
		}()
	}
	wg.Wait()
	if exited.Load() {
		// A member's goroutine ended without returning: behave as the
		// caller's goroutine would have (as goWait does).
		runtime.Goexit()
	}

	outcomes := make([]Outcome, len(plans))
	for i, r := range rep.Reports {
		if r != nil {
			outcomes[i] = r.Outcome
		} else {
			outcomes[i] = RolledBack // never started: never left
		}
	}
	berr := br.ownership(br.endBatch(ctx, plans, outcomes))
	rep.Outcome, rep.Reason = br.rep.Outcome, br.rep.Reason
	return rep, errors.Join(append(errs, berr)...)
}

// endBatch ends a batch whose members have ended with outcomes: 375,
// then, if every member is at the target, the routing core's watch and
// the tunnel's removal (380-390, as a lone subnet migration does); if
// none left, the tunnel goes; else it stays.
func (r *run) endBatch(ctx context.Context, plans []Plan, outcomes []Outcome) error {
	var moved, back, other []string
	allDone := true
	for i, o := range outcomes {
		switch o {
		case Completed, StayedFenced:
			moved = append(moved, plans[i].VM)
		case RolledBack:
			back = append(back, plans[i].VM)
		default:
			other = append(other, plans[i].VM)
		}
		allDone = allDone && o == Completed
	}
	r.subnetMoved = len(moved) == len(plans)
	dctx, release := r.detached(ctx)
	_ = r.step(dctx, BlockSubnetMovedAfterEnable, map[string]string{"moved": fmt.Sprint(r.subnetMoved),
		"at_target": strings.Join(moved, ","), "at_source": strings.Join(back, ",")}, func() error { return nil })
	release()
	cctx, cancel := r.cleanupCtx(ctx)
	defer cancel()
	switch {
	case r.subnetMoved:
		r.converge(ctx)
		if allDone {
			return r.finish(cctx, Completed, "")
		}
		return r.finish(cctx, Partial, fmt.Sprintf("every member is at %q, not all completed (see their reports)", r.plan.To))
	case len(back) == len(plans):
		err := errors.Join(r.removeRedirects(cctx), r.linker.Close(cctx, r.redirID))
		if err != nil {
			r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("remove the redirect tunnel: %v", err))
		}
		return r.finish(cctx, RolledBack, "no member left the source")
	default:
		reason := fmt.Sprintf("members at %q: %v; at %q: %v; needing a human: %v; the redirect tunnel %s stays, with routes for the moved members' addresses only",
			r.plan.To, moved, r.plan.From, back, other, r.redirID)
		r.rep.Warnings = append(r.rep.Warnings, reason)
		return r.finish(cctx, Partial, reason)
	}
}

// recoverBatch finishes a batch a stopped controller left: its members
// first (as Recover does each), then the batch as RunBatch would have
// ended it, from the members' outcomes in the journal.
func (m *Migrator) recoverBatch(ctx context.Context, rec Record) (*BatchReport, []*Report, error) {
	bp := rec.Plan
	if bp.Subnet == nil || len(bp.Subnet.Members) == 0 {
		return nil, nil, fmt.Errorf("%w: batch %s: its record has no members", ErrInvalidPlan, rec.ID)
	}
	if _, ok := m.cfg.Environments[bp.From]; !ok {
		return nil, nil, fmt.Errorf("%w: batch %s: From %q is not a configured environment", ErrInvalidPlan, rec.ID, bp.From)
	}
	if _, ok := m.cfg.Environments[bp.To]; !ok {
		return nil, nil, fmt.Errorf("%w: batch %s: To %q is not a configured environment", ErrInvalidPlan, rec.ID, bp.To)
	}
	if m.cfg.Linkers[bp.Link] == nil || m.cfg.Environments[bp.From].Core == nil {
		return nil, nil, fmt.Errorf("%w: batch %s: no %q linker or no routing core at %q", ErrInvalidPlan, rec.ID, bp.Link, bp.From)
	}
	// The members first: each is an ordinary unfinished migration.
	unfinished, err := m.cfg.Journal.Unfinished(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("read journal: %w", err)
	}
	reps, errs := m.recoverEach(ctx, slices.DeleteFunc(unfinished, func(mr Record) bool { return mr.Plan.Batch != rec.ID || isBatch(mr) }))
	// A member still unfinished that this Migrator did not fail to
	// recover is another live controller's (it claimed it first): the
	// batch is left unclaimed, for that controller to end once its member
	// ends (it sees the batch's record orphaned too). Claiming it here
	// would leave it to no one.
	for i := range bp.Subnet.Members {
		mrec, _, err := m.cfg.Journal.Load(ctx, memberID(rec.ID, i))
		if err == nil && !mrec.Done() {
			if len(errs) == 0 {
				return nil, reps, errSkipped
			}
			return nil, reps, errors.Join(append(errs, fmt.Errorf("batch %s: member %s (VM %q) is unfinished", rec.ID, mrec.ID, mrec.Plan.VM))...)
		}
	}
	if !m.lock(bp.VM) {
		return nil, reps, errSkipped
	}
	defer m.unlock(bp.VM)
	if sj, ok := m.cfg.Journal.(SharedJournal); ok {
		if err := sj.Claim(ctx, rec.ID); errors.Is(err, ErrBusy) || errors.Is(err, ErrNoRecord) {
			return nil, reps, errSkipped
		} else if err != nil {
			return nil, reps, fmt.Errorf("claim: %w", err)
		}
	}
	plans := make([]Plan, len(bp.Subnet.Members))
	outcomes := make([]Outcome, len(plans))
	for i := range plans {
		mrec, _, err := m.cfg.Journal.Load(ctx, memberID(rec.ID, i))
		switch {
		case errors.Is(err, ErrNoRecord): // never started
			plans[i], outcomes[i] = Plan{VM: bp.Subnet.Members[i]}, RolledBack
		case err != nil:
			return nil, reps, fmt.Errorf("batch %s: load member %d: %w", rec.ID, i+1, err)
		case !mrec.Done():
			// Its recovery failed or is another's: the batch waits for it.
			return nil, reps, errors.Join(append(errs, fmt.Errorf("batch %s: member %s (VM %q) is unfinished", rec.ID, mrec.ID, mrec.Plan.VM))...)
		default:
			plans[i], outcomes[i] = mrec.Plan, mrec.Outcome
		}
	}
	br := m.newRun(bp)
	br.quiet = true
	br.log.Info("recovering batch", "started", rec.Started, "owner", rec.Owner)
	ctx, release := br.owned(ctx)
	defer release()
	defer br.done()
	links, err := br.linker.List(ctx)
	if err != nil {
		return nil, reps, fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if l.ID == br.redirID {
			red := l
			br.redirect = &red
		}
	}
	rep := &BatchReport{ID: rec.ID, Started: rec.Started, Redirect: br.redirect}
	if br.redirect == nil && slices.Contains(outcomes, Completed) {
		// Members moved, their tunnel is gone: nothing to converge away.
		br.rep.Warnings = append(br.rep.Warnings, fmt.Sprintf("redirect tunnel %s not found", br.redirID))
	}
	err = br.ownership(br.endBatch(ctx, plans, outcomes))
	rep.Outcome, rep.Reason, rep.Steps, rep.Warnings, rep.Converged = br.rep.Outcome, br.rep.Reason, br.rep.Steps, br.rep.Warnings, br.rep.Converged
	rep.Duration = time.Since(rec.Started)
	m.bus.emit(BatchFinished{ID: rec.ID, Outcome: rep.Outcome, Members: memberIDs(rec.ID, len(plans)), Recovery: true, Report: rep})
	return rep, reps, errors.Join(append(errs, err)...)
}
