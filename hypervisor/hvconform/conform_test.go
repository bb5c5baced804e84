package hvconform_test

import (
	"context"
	"errors"
	"testing"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/hvconform"
	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/internal/nshv"
)

// broken is a Hypervisor with some methods replaced (nil: the real one's).
type broken struct {
	hypervisor.Hypervisor
	lookup  func(h hypervisor.Hypervisor, ctx context.Context, name string) (hypervisor.VM, error)
	prepare func(h hypervisor.Hypervisor, ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error)
	migrate func(h hypervisor.Hypervisor, ctx context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error)
	resume  func(h hypervisor.Hypervisor, ctx context.Context, name string) error
	abort   func(h hypervisor.Hypervisor, ctx context.Context, name string) error
}

func (b *broken) Lookup(ctx context.Context, name string) (hypervisor.VM, error) {
	if b.lookup != nil {
		return b.lookup(b.Hypervisor, ctx, name)
	}
	return b.Hypervisor.Lookup(ctx, name)
}

func (b *broken) PrepareIncoming(ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
	if b.prepare != nil {
		return b.prepare(b.Hypervisor, ctx, vm)
	}
	return b.Hypervisor.PrepareIncoming(ctx, vm)
}

func (b *broken) Migrate(ctx context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	if b.migrate != nil {
		return b.migrate(b.Hypervisor, ctx, name, to, o)
	}
	return b.Hypervisor.Migrate(ctx, name, to, o)
}

func (b *broken) Resume(ctx context.Context, name string) error {
	if b.resume != nil {
		return b.resume(b.Hypervisor, ctx, name)
	}
	return b.Hypervisor.Resume(ctx, name)
}

func (b *broken) Abort(ctx context.Context, name string) error {
	if b.abort != nil {
		return b.abort(b.Hypervisor, ctx, name)
	}
	return b.Hypervisor.Abort(ctx, name)
}

// both breaks the source's and the target's hypervisor alike.
func both(mk func(h hypervisor.Hypervisor) *broken) func(hvconform.World) hvconform.World {
	return func(w hvconform.World) hvconform.World {
		w.Source, w.Target = mk(w.Source), mk(w.Target)
		return w
	}
}

func mapErr(fn func(error) error) func(hvconform.World) hvconform.World {
	return both(func(h hypervisor.Hypervisor) *broken {
		return &broken{Hypervisor: h,
			lookup: func(h hypervisor.Hypervisor, ctx context.Context, name string) (hypervisor.VM, error) {
				v, err := h.Lookup(ctx, name)
				return v, fn(err)
			},
			prepare: func(h hypervisor.Hypervisor, ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
				e, err := h.PrepareIncoming(ctx, vm)
				return e, fn(err)
			},
			migrate: func(h hypervisor.Hypervisor, ctx context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error) {
				st, err := h.Migrate(ctx, name, to, o)
				return st, fn(err)
			},
			resume: func(h hypervisor.Hypervisor, ctx context.Context, name string) error { return fn(h.Resume(ctx, name)) },
			abort:  func(h hypervisor.Hypervisor, ctx context.Context, name string) error { return fn(h.Abort(ctx, name)) },
		}
	})
}

// sentinelLost maps errors wrapping target to a plain error.
func sentinelLost(target error) func(hvconform.World) hvconform.World {
	return mapErr(func(err error) error {
		if errors.Is(err, target) {
			return errors.New(err.Error())
		}
		return err
	})
}

var mutants = []conform.Mutant[func(hvconform.World) hvconform.World]{
	{Name: "Lookup finds every name", Caught: []string{"Lookup"},
		Break: both(func(h hypervisor.Hypervisor) *broken {
			return &broken{Hypervisor: h, lookup: func(h hypervisor.Hypervisor, ctx context.Context, name string) (hypervisor.VM, error) {
				v, err := h.Lookup(ctx, name)
				if errors.Is(err, hypervisor.ErrNotFound) {
					return hypervisor.VM{Name: name, State: hypervisor.Shutoff}, nil
				}
				return v, err
			}}
		})},
	{Name: "bad names are not found rather than invalid", Caught: []string{"Lookup", "MigrateSwitchoverResume"},
		Break: mapErr(func(err error) error {
			if errors.Is(err, hypervisor.ErrInvalid) {
				return hypervisor.ErrNotFound
			}
			return err
		})},
	{Name: "PrepareIncoming where the VM is active succeeds", Caught: []string{"PrepareIncomingAndAbort"},
		Break: mapErr(func(err error) error {
			if errors.Is(err, hypervisor.ErrExists) {
				return nil
			}
			return err
		})},
	{Name: "Abort at the target keeps the instance", Caught: []string{"PrepareIncomingAndAbort", "AbortRollsBackAnUnresumedMigration"},
		Break: func(w hvconform.World) hvconform.World {
			w.Target = &broken{Hypervisor: w.Target, abort: func(hypervisor.Hypervisor, context.Context, string) error { return nil }}
			return w
		}},
	{Name: "the hook runs after the switchover", Caught: []string{"MigrateSwitchoverResume"},
		Break: both(func(h hypervisor.Hypervisor) *broken {
			return &broken{Hypervisor: h, migrate: func(h hypervisor.Hypervisor, ctx context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error) {
				hook := o.AtSwitchover
				o.AtSwitchover = nil
				st, err := h.Migrate(ctx, name, to, o)
				if err == nil && hook != nil {
					err = hook(ctx)
				}
				return st, err
			}}
		})},
	{Name: "Migrate resumes the target", Caught: []string{"MigrateSwitchoverResume"},
		Break: func(w hvconform.World) hvconform.World {
			target := w.Target
			w.Source = &broken{Hypervisor: w.Source, migrate: func(h hypervisor.Hypervisor, ctx context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error) {
				st, err := h.Migrate(ctx, name, to, o)
				if err == nil {
					err = target.Resume(ctx, name)
				}
				return st, err
			}}
			return w
		}},
	{Name: "Resume does nothing", Caught: []string{"MigrateSwitchoverResume"},
		Break: both(func(h hypervisor.Hypervisor) *broken {
			return &broken{Hypervisor: h, resume: func(hypervisor.Hypervisor, context.Context, string) error { return nil }}
		})},
	{Name: "a failing hook is ignored", Caught: []string{"HookFailureKeepsTheSource"},
		Break: both(func(h hypervisor.Hypervisor) *broken {
			return &broken{Hypervisor: h, migrate: func(h hypervisor.Hypervisor, ctx context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error) {
				if hook := o.AtSwitchover; hook != nil {
					o.AtSwitchover = func(ctx context.Context) error { _ = hypervisor.RunHook(ctx, hook); return nil }
				}
				return h.Migrate(ctx, name, to, o)
			}}
		})},
	{Name: "Abort at the source is ignored", Caught: []string{"CancelAndAbortInPreCopy"},
		Break: func(w hvconform.World) hvconform.World {
			w.Source = &broken{Hypervisor: w.Source, abort: func(hypervisor.Hypervisor, context.Context, string) error { return nil }}
			return w
		}},
	{Name: "a cancelled migration is not ErrAborted", Caught: []string{"CancelAndAbortInPreCopy"},
		Break: sentinelLost(hypervisor.ErrAborted)},
	{Name: "an unreachable target is a plain failure", Caught: []string{"MigrateRefusesBadInput"},
		Break: sentinelLost(hypervisor.ErrUnreachable)},
	{Name: "Migrate does not check its options", Caught: []string{"MigrateRefusesBadInput"},
		Break: both(func(h hypervisor.Hypervisor) *broken {
			return &broken{Hypervisor: h, migrate: func(h hypervisor.Hypervisor, ctx context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error) {
				o.MaxDowntime = 0
				return h.Migrate(ctx, name, to, o)
			}}
		})},
}

// TestSuiteCatchesBrokenHypervisors: each check fails against a
// Hypervisor (internal/nshv, broken on purpose) that breaks the promise
// it checks.
func TestSuiteCatchesBrokenHypervisors(t *testing.T) {
	conform.Mutants(t, hvconform.Checks(), mutants, func(m conform.Mutant[func(hvconform.World) hvconform.World]) hvconform.Harness {
		return hvconform.Harness{New: func(t testing.TB) hvconform.World { return m.Break(nshv.ConformWorld(t, nil)) }}
	})
}
