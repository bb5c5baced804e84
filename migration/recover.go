package migration

import (
	"context"
	"errors"
	"fmt"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/routing"
)

// Recover finishes the migrations a stopped controller left unfinished in
// the journal. It asks the hypervisors where each VM really is, then
// rolls back (the VM is still active at the source: abort, remove links,
// redirect and fences) or forward (the VM is only at the target: resume,
// prove the link, audit, enable, converge). Every action is idempotent.
// It returns one report per migration it handled and the errors of those
// that did not end Completed or RolledBack.
func (m *Migrator) Recover(ctx context.Context) ([]*Report, error) {
	recs, err := m.cfg.Journal.Unfinished(ctx)
	if err != nil {
		return nil, fmt.Errorf("read journal: %w", err)
	}
	var reps []*Report
	var errs []error
	for _, rec := range recs {
		rep, err := m.recoverOne(ctx, rec)
		if errors.Is(err, errSkipped) {
			continue
		}
		if rep != nil {
			reps = append(reps, rep)
		}
		if err != nil && !errors.Is(err, ErrRolledBack) {
			errs = append(errs, fmt.Errorf("migration %s: %w", rec.ID, err))
		}
	}
	return reps, errors.Join(errs...)
}

// errSkipped: recoverOne left the migration to the one running it.
var errSkipped = errors.New("migration: run elsewhere")

// recoverOne recovers one unfinished migration. With a SharedJournal it
// first claims it: one another live controller owns is skipped.
func (m *Migrator) recoverOne(ctx context.Context, rec Record) (*Report, error) {
	p := rec.Plan
	if err := p.validate(&m.cfg); err != nil {
		return nil, fmt.Errorf("plan no longer fits this Migrator: %w", err)
	}
	if !m.lock(p.VM) {
		return nil, errSkipped // being run right now by this process
	}
	defer m.unlock(p.VM)
	if sj, ok := m.cfg.Journal.(SharedJournal); ok {
		if err := sj.Claim(ctx, rec.ID); errors.Is(err, ErrBusy) || errors.Is(err, ErrNoRecord) {
			return nil, errSkipped // a live controller owns it, or it ended meanwhile
		} else if err != nil {
			return nil, fmt.Errorf("claim: %w", err)
		}
	}
	r := m.newRun(p)
	r.log.Info("recovering migration", "started", rec.Started, "owner", rec.Owner)
	ctx, release := r.owned(ctx)
	defer release()
	defer r.done()
	r.started(true)
	err := r.ownership(r.recover(ctx))
	r.finished()
	return r.rep, err
}

// Standby makes this Migrator a standby controller on a SharedJournal:
// until ctx ends, it claims every migration whose owner is gone (its
// lease expired) and finishes it as Recover does (roll back before the
// target resumed, forward after), calling done with each report (which
// may be nil) and error (nil when it completed or rolled back, as
// Recover's). It returns ctx's error; an error wrapping ErrNotOwner once
// this controller's own ownership ends (its lease: a standby that cannot
// own cannot take anything over; make a new journal and Migrator); or at
// once an error if the journal is not shared.
func (m *Migrator) Standby(ctx context.Context, done func(*Report, error)) error {
	sj, ok := m.cfg.Journal.(SharedJournal)
	if !ok {
		return fmt.Errorf("%w: Standby needs a SharedJournal (Config.Journal is %T)", ErrInvalidPlan, m.cfg.Journal)
	}
	own := sj.Owning()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := context.AfterFunc(own, func() { cancel(fmt.Errorf("%w: %w", ErrNotOwner, context.Cause(own))) })
	defer stop()
	ids, err := sj.Orphans(ctx)
	if err != nil {
		return fmt.Errorf("watch the journal for orphans: %w", err)
	}
	for id := range ids {
		rec, _, err := m.cfg.Journal.Load(ctx, id)
		if err != nil || rec.Done() {
			continue // gone or ended meanwhile
		}
		rep, err := m.recoverOne(ctx, rec)
		if errors.Is(err, errSkipped) {
			continue
		}
		if errors.Is(err, ErrRolledBack) {
			err = nil // an end Recover reports without error too
		} else if err != nil {
			err = fmt.Errorf("migration %s: %w", id, err)
		}
		m.log.Info("standby took over a migration", "id", id, "vm", rec.Plan.VM, "from_owner", rec.Owner, "err", err)
		if done != nil {
			done(rep, err)
		}
	}
	if own.Err() != nil {
		return fmt.Errorf("%w: %w", ErrNotOwner, context.Cause(own))
	}
	return context.Cause(ctx)
}

func (r *run) recover(ctx context.Context) error {
	p := r.plan
	links, err := r.linker.List(ctx)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		switch l.ID {
		case r.linkID:
			r.link = l
		case r.redirID:
			red := l
			r.redirect = &red
			r.subnetMoved = true
		}
	}
	r.rep.Link, r.rep.Redirect = r.link, r.redirect
	src, srcErr := r.src.Hypervisor.Lookup(ctx, p.VM)
	dst, dstErr := r.dst.Hypervisor.Lookup(ctx, p.VM)
	for _, e := range []error{srcErr, dstErr} {
		if e != nil && !errors.Is(e, hypervisor.ErrNotFound) {
			return fmt.Errorf("look up VM %q: %w", p.VM, e) // cannot tell: touch nothing
		}
	}
	atSrc := srcErr == nil && src.State.Active()
	atDst := dstErr == nil && dst.State.Active()
	switch {
	case atSrc && atDst && dst.State == hypervisor.Running:
		reason := fmt.Sprintf("VM %q is active at %q (%s) and running at %q", p.VM, p.From, src.State, p.To)
		return r.abandon(ctx, ErrRollbackFailed, reason+r.fenceBoth(ctx, src, dst))
	case atSrc:
		cause := fmt.Errorf("controller stopped before the target resumed (VM %s at %q)", src.State, p.From)
		return r.rollback(ctx, cause)
	case atDst:
		r.migrated = true
		if r.dstSpec, err = specFor(p.VM, dst, p.TargetPort, "TargetPort", p.Addrs); err != nil {
			return r.abandon(ctx, ErrRollbackFailed, err.Error())
		}
		if r.link.ID == "" {
			return r.stayFenced(ctx, fmt.Errorf("secure link %s missing after the VM reached %q", r.linkID, p.To))
		}
		if err := r.linker.Activate(ctx, r.linkID); err != nil {
			return r.stayFenced(ctx, fmt.Errorf("activate secure link: %w", err))
		}
		if r.subnetMoved {
			for _, pfx := range p.Subnet.subnetPrefixes() {
				err := r.src.Core.Routing.AddRedirect(ctx, routing.Redirect{
					Prefix: pfx, Device: r.redirect.SecureDevice, Via: redirectVia(r)})
				if err != nil {
					return r.stayFenced(ctx, fmt.Errorf("redirect: %w", err))
				}
			}
			r.rep.SubnetMoved = true
		}
		if dst.State == hypervisor.Running {
			r.resumed = true
			var err error
			if r.rep.Proof, err = r.linker.Verify(ctx, r.linkID); err != nil {
				return r.stayFenced(ctx, fmt.Errorf("secure link not proven: %w", err))
			}
			return r.finishForward(ctx)
		}
		return r.afterMigrate(ctx)
	default:
		return r.abandon(ctx, ErrVMLost, fmt.Sprintf("VM %q found in neither %q nor %q", p.VM, p.From, p.To))
	}
}

// fenceBoth fences both copies of a VM found active in two places (full
// block): neither may talk until a human has chosen which one is the VM.
// It touches no hypervisor, and returns what to add to the reason.
func (r *run) fenceBoth(ctx context.Context, src, dst hypervisor.VM) string {
	cctx, cancel := r.cleanupCtx(ctx)
	defer cancel()
	p := r.plan
	var errs []error
	for _, c := range []struct {
		env        Environment
		vm         hypervisor.VM
		port, name string
	}{{r.src, src, p.SourcePort, p.From}, {r.dst, dst, p.TargetPort, p.To}} {
		spec, err := specFor(p.VM, c.vm, c.port, "port", p.Addrs)
		if err == nil {
			err = c.env.Fencer.Fence(cctx, spec)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("fence at %q: %w", c.name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Sprintf("; fencing both copies failed: %v", err)
	}
	return "; both copies are fenced"
}

// abandon ends a migration that needs a human: the journal records it as
// Abandoned (Recover leaves it alone from then on).
func (r *run) abandon(ctx context.Context, sentinel error, reason string) error {
	if err := r.finish(ctx, Abandoned, reason); err != nil {
		return errors.Join(fmt.Errorf("%w: %s", sentinel, reason), err)
	}
	return fmt.Errorf("%w: %s", sentinel, reason)
}
