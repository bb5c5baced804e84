package migration

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/tunnel"
)

// Config is what a Migrator works with.
type Config struct {
	// Environments by name; Plan.From and Plan.To name two of them.
	Environments map[string]Environment
	// Linkers by kind: the secure-link backends (tunnel/wireguard, ipsec).
	Linkers map[tunnel.Kind]tunnel.SecureLinker
	// Journal stores the steps; nil means an in-memory journal (no
	// recovery across process restarts).
	Journal Journal
	// Logger; nil means no logging.
	Logger *slog.Logger
	// CleanupTimeout bounds work that runs whatever the caller's context
	// says (0: 2 minutes): a rollback, a recovery, and each phase of a
	// migration whose VM is complete only at the target (345; 355-370;
	// 390; 395), where stopping would leave the VM paused or fenced.
	CleanupTimeout time.Duration
}

func (c *Config) envNames() []string {
	names := make([]string, 0, len(c.Environments))
	for n := range c.Environments {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Migrator runs secure live migrations. It is safe for concurrent use;
// one VM migrates at most once at a time.
type Migrator struct {
	cfg Config
	log *slog.Logger
	bus bus

	mu   sync.Mutex
	busy map[string]bool
}

// New returns a Migrator for cfg.
func New(cfg Config) (*Migrator, error) {
	if len(cfg.Environments) < 2 {
		return nil, fmt.Errorf("%w: Config.Environments needs at least 2, has %d", ErrInvalidPlan, len(cfg.Environments))
	}
	if len(cfg.Linkers) == 0 {
		return nil, fmt.Errorf("%w: Config.Linkers is empty", ErrInvalidPlan)
	}
	if cfg.Journal == nil {
		cfg.Journal = NewMemJournal()
	}
	if cfg.CleanupTimeout == 0 {
		cfg.CleanupTimeout = 2 * time.Minute
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Migrator{cfg: cfg, log: log, busy: map[string]bool{}}, nil
}

// Close closes the journal.
func (m *Migrator) Close() error { return m.cfg.Journal.Close() }

// Validate checks a plan without touching anything; Run does it too.
func (m *Migrator) Validate(p Plan) error {
	p.defaults()
	return p.validate(&m.cfg)
}

func (m *Migrator) lock(vm string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.busy[vm] {
		return false
	}
	m.busy[vm] = true
	return true
}

func (m *Migrator) unlock(vm string) {
	m.mu.Lock()
	delete(m.busy, vm)
	m.mu.Unlock()
}

// Run migrates the plan's VM (FIG. 3). The Report is returned whatever the
// outcome (nil only when the plan was refused before anything happened);
// the error is nil for Completed and wraps ErrRolledBack,
// ErrStayedFenced, ErrRollbackFailed or ErrVMLost otherwise (or is the
// journal's error if the outcome could not be recorded).
//
// Cancelling ctx before the VM is complete at the target rolls the
// migration back; after, it only cuts short the wait for the routing
// core: the rest runs to its end (see Config.CleanupTimeout).
func (m *Migrator) Run(ctx context.Context, p Plan) (*Report, error) {
	p.defaults()
	if err := p.validate(&m.cfg); err != nil {
		return nil, err
	}
	if p.Batch != "" {
		return nil, fmt.Errorf("%w: Batch %q is set: RunBatch sets it for its members", ErrInvalidPlan, p.Batch)
	}
	if p.ID == "" {
		p.ID = newID()
	}
	if !m.lock(p.VM) {
		return nil, fmt.Errorf("%w: VM %q is being migrated by this Migrator", ErrBusy, p.VM)
	}
	defer m.unlock(p.VM)
	return m.runLocked(ctx, p, nil)
}

// runLocked runs a validated plan whose VM this Migrator has locked;
// redirect is a batch's redirect tunnel (members only).
func (m *Migrator) runLocked(ctx context.Context, p Plan, redirect *tunnel.Link) (*Report, error) {
	if err := m.cfg.Journal.Create(ctx, Record{ID: p.ID, Plan: p, Started: time.Now()}); err != nil {
		return nil, err
	}
	r := m.newRun(p)
	if redirect != nil {
		r.redirect = redirect
		r.rep.Redirect = redirect
	}
	m.log.Info("migration started", "id", p.ID, "vm", p.VM, "from", p.From, "to", p.To,
		"link", p.Link, "fence", p.FenceMode)
	ctx, release := r.owned(ctx)
	defer release()
	defer r.done()
	r.started(false)
	err := r.ownership(r.forward(ctx))
	r.finished()
	return r.rep, err
}

// done releases what the run holds of its journal's ownership context
// (a long-lived controller runs many).
func (r *run) done() {
	if r.disown != nil {
		r.disown(nil)
	}
}

// started and finished announce the run's beginning and end.
func (r *run) started(recovery bool) {
	r.m.bus.emit(Started{ID: r.plan.ID, Plan: r.plan, Recovery: recovery, At: time.Now()})
}

func (r *run) finished() {
	r.m.bus.emit(Finished{ID: r.plan.ID, Outcome: r.rep.Outcome, Reason: r.rep.Reason, Report: r.rep})
}

func newID() string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "m" + hex.EncodeToString(b)
}

// linkIDs derives the IDs of the migration's links from its ID, so that a
// recovering controller finds them even if it crashed mid-Prepare.
func linkIDs(id string) (link, redirect string) {
	h := sha256.Sum256([]byte(id))
	x := hex.EncodeToString(h[:4])
	return "l" + x[:7], "r" + x[:7]
}

// run is the state of one migration.
type run struct {
	m        *Migrator
	j        Journal
	log      *slog.Logger
	plan     Plan
	src, dst Environment
	linker   tunnel.SecureLinker
	rep      *Report

	linkID, redirID  string
	subnetMoved      bool
	link             tunnel.Link
	redirect         *tunnel.Link
	srcSpec, dstSpec fence.Spec
	fenceInHook      bool         // the target's instance appears only during the migration
	dstFenced        bool         // the target's fence is in place
	migrated         bool         // Migrate returned: the VM is complete at the target
	srcLift          <-chan error // the source fence's lift, started once the VM left
	srcJoined        bool         // srcLift was waited for; its result is srcLiftErr
	released         int          // packets the source's fence held and released (srcLift's goroutine; read after joining it)
	releaseErr       error
	srcLiftErr       error
	resumed          bool
	// hookEntries collects the journal entries of the switchover hook's
	// steps, written in one Append at its end (nil outside the hook).
	hookEntries *[]Entry
	// carry holds entries written with the next journal write (block
	// 330's end, so the target's resume waits for no fsync).
	carry []Entry
	// own ends when this controller stops owning the migration (a
	// SharedJournal's Owning, or a write it refused with ErrNotOwner);
	// nil with a journal of one controller. Every host call of the run
	// uses a context that ends with it (owned).
	own    context.Context
	disown context.CancelCauseFunc
	// quiet: a batch's own record, whose steps are not a migration's
	// (no events).
	quiet bool
}

func (m *Migrator) newRun(p Plan) *run {
	r := &run{m: m, j: m.cfg.Journal, plan: p, src: m.cfg.Environments[p.From],
		dst: m.cfg.Environments[p.To], linker: m.cfg.Linkers[p.Link],
		rep: &Report{ID: p.ID, VM: p.VM}}
	r.linkID, r.redirID = linkIDs(p.ID)
	if p.Batch != "" { // the batch's one redirect tunnel
		_, r.redirID = linkIDs(p.Batch)
	}
	r.log = m.log.With("id", p.ID, "vm", p.VM)
	if sj, ok := m.cfg.Journal.(SharedJournal); ok {
		r.own, r.disown = context.WithCancelCause(sj.Owning())
	}
	return r
}

// owned returns ctx, also ended (cause ErrNotOwner) when this controller
// stops owning the migration, and the function that releases it. The
// returned context is a child of the run's ownership, so it is done by
// the time ownership has ended (no host call can start after); ctx's own
// end and deadline reach it too, and its values.
func (r *run) owned(ctx context.Context) (context.Context, context.CancelFunc) {
	if r.own == nil {
		c, cancel := context.WithCancelCause(ctx)
		return c, func() { cancel(nil) }
	}
	c, cancel := context.WithCancelCause(r.own)
	var cancelDeadline context.CancelFunc = func() {}
	if d, ok := ctx.Deadline(); ok {
		c, cancelDeadline = context.WithDeadline(c, d)
	}
	stop := context.AfterFunc(ctx, func() { cancel(context.Cause(ctx)) })
	return valuesOf{c, ctx}, func() { stop(); cancelDeadline(); cancel(nil) }
}

// valuesOf is a context whose values are another's.
type valuesOf struct {
	context.Context
	vals context.Context
}

func (v valuesOf) Value(key any) any { return v.vals.Value(key) }

// lostOwnership reports whether this controller stopped owning the
// migration.
func (r *run) lostOwnership() bool { return r.own != nil && r.own.Err() != nil }

// ownership turns the end of a run that lost its ownership into an
// Abandoned report and an error wrapping ErrNotOwner: the run stopped
// where it was, touched no host since, and could not write its outcome;
// the journal keeps the migration for the controller that claims it.
func (r *run) ownership(err error) error {
	if !r.lostOwnership() {
		return err
	}
	r.rep.Outcome = Abandoned
	r.rep.Reason = "this controller lost its ownership of the migration (its lease ended): the controller that claims it finishes it"
	r.log.Warn("ownership lost: stopped touching hosts", "cause", context.Cause(r.own), "err", err)
	if err == nil || errors.Is(err, ErrNotOwner) {
		return fmt.Errorf("%w: %w", ErrNotOwner, cmp.Or(err, context.Cause(r.own)))
	}
	return fmt.Errorf("%w: %w", ErrNotOwner, err)
}

// step journals, times and announces one block of FIG. 3.
func (r *run) step(ctx context.Context, b Block, data map[string]string, fn func() error) error {
	if r.lostOwnership() { // (also in the switchover hook, which journals at its end)
		return fmt.Errorf("block %d (%s): %w: %w", b, b, ErrNotOwner, context.Cause(r.own))
	}
	start := time.Now()
	if err := r.journal(ctx, Entry{Time: start, Block: b, Phase: PhaseBegin, Data: data}); err != nil {
		return fmt.Errorf("journal %s (%d) begin: %w", b, b, err)
	}
	if !r.quiet {
		r.m.bus.emit(StepStarted{ID: r.plan.ID, Block: b, At: start})
	}
	err := fn()
	d := time.Since(start)
	e := Entry{Time: time.Now(), Block: b, Phase: PhaseDone}
	st := StepTiming{Block: b, Name: b.String(), Start: start.UnixNano(), Duration: int64(d)}
	if err != nil {
		e.Phase, e.Err, st.Err = PhaseFail, err.Error(), err.Error()
	}
	r.rep.Steps = append(r.rep.Steps, st)
	if !r.quiet {
		r.m.bus.emit(StepFinished{ID: r.plan.ID, Block: b, Duration: d, Err: err})
	}
	if err != nil {
		r.log.Warn("step failed", "block", int(b), "step", b.String(), "ms", d.Milliseconds(), "err", err)
	} else {
		r.log.Debug("step done", "block", int(b), "step", b.String(), "ms", d.Milliseconds())
	}
	if b == BlockMigrate && err == nil {
		// The VM is complete at the target: its resume is next and waits
		// for no fsync of ours. This entry goes with the next write (block
		// 345's begin); a crash before that loses only it, and Recover
		// asks the hypervisors where the VM is anyway.
		r.carry = append(r.carry, e)
	} else if jerr := r.journal(ctx, e); jerr != nil && err == nil {
		return fmt.Errorf("journal %s (%d) end: %w", b, b, jerr)
	}
	if err != nil {
		return fmt.Errorf("block %d (%s): %w", b, b, err)
	}
	return nil
}

// journal writes e (after any entry carried over), or keeps it for the
// switchover hook's one write.
func (r *run) journal(ctx context.Context, e Entry) error {
	if r.hookEntries != nil {
		*r.hookEntries = append(*r.hookEntries, e)
		return nil
	}
	es := append(slices.Clip(r.carry), e)
	if err := r.j.Append(ctx, r.plan.ID, es...); err != nil {
		r.refused(err)
		return err // the carried entries wait for the next write
	}
	r.carry = nil
	return nil
}

// finish records the outcome in the journal, the report and the events.
func (r *run) finish(ctx context.Context, o Outcome, reason string) error {
	if len(r.carry) > 0 {
		if err := r.j.Append(ctx, r.plan.ID, r.carry...); err != nil {
			return err
		}
		r.carry = nil
	}
	r.rep.Outcome, r.rep.Reason = o, reason
	r.log.Info("migration finished", "outcome", o, "reason", reason)
	err := r.j.Finish(ctx, r.plan.ID, o, reason)
	r.refused(err)
	return err
}

// refused ends the run's ownership if the journal refused a write with
// ErrNotOwner.
func (r *run) refused(err error) {
	if r.disown != nil && errors.Is(err, ErrNotOwner) {
		r.disown(err)
	}
}

// cleanupCtx is a context for work that must happen even when the
// caller's context is done (rollback, fencing, finishing a migration
// past the point of no return), bounded by CleanupTimeout.
func (r *run) cleanupCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	c, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.m.cfg.CleanupTimeout)
	oc, release := r.owned(c)
	return oc, func() { release(); cancel() }
}

// detached is ctx without its cancellation, still ended when this
// controller stops owning the migration.
func (r *run) detached(ctx context.Context) (context.Context, context.CancelFunc) {
	return r.owned(context.WithoutCancel(ctx))
}

func joinErrs(errs []error) error {
	errs = slices.DeleteFunc(errs, func(e error) bool { return e == nil })
	return errors.Join(errs...)
}
