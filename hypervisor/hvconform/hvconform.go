// Package hvconform is the conformance suite of the hypervisor.Hypervisor
// contract: every promise of package hypervisor, checked on a real VM
// migrated between two hosts, with where the guest really is (its
// network attachment, observed by the harness's own means) judged
// beside what the hypervisors say. The suite cannot make VMs: its
// harness builds a world (a VM running at a source host, a target host
// without it) per check. internal/nshv's namespace VM runs it locally
// and behind agents; a backend of real guests runs it the same way:
//
//	func TestConformance(t *testing.T) {
//		hvconform.Run(t, hvconform.Harness{New: func(t testing.TB) hvconform.World {
//			src, dst := startTwoHosts(t) // and a VM running at src
//			return hvconform.World{Source: src, Target: dst, VM: "vm1", Where: guestSeenAt}
//		}})
//	}
//
// Migrations must report progress (MigrateOptions.OnProgress) at least
// once before their switchover: the suite cancels and aborts
// migrations in pre-copy from it. Each check builds a world of its own,
// so checks run in parallel.
package hvconform

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/conform"
)

// Place is where a guest is.
type Place string

const (
	AtSource Place = "source"
	AtTarget Place = "target"
	Nowhere  Place = ""
)

// World is one check's VM and the hypervisors of its two hosts.
type World struct {
	Source, Target hypervisor.Hypervisor
	// VM is the name of a VM running at Source; Target holds no
	// instance of it.
	VM string
	// Where reports the host the guest is attached to (where it runs,
	// or would run once resumed), by the test's own observation (its
	// network port, its answers), never by asking the hypervisors. It
	// may wait a few seconds for a guest that just moved to settle.
	Where func(t testing.TB) Place
}

// Harness is what the suite needs of a backend.
type Harness struct {
	// New builds a fresh World (and tears it down in t's cleanup).
	New func(t testing.TB) World
}

// Run runs every check of the suite as a parallel subtest of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	conform.Run(t, checks, h)
}

var checks = []conform.Check[Harness]{
	{Name: "Lookup", Run: lookup},
	{Name: "PrepareIncomingAndAbort", Run: prepareIncomingAndAbort},
	{Name: "MigrateSwitchoverResume", Run: migrateSwitchoverResume},
	{Name: "HookFailureKeepsTheSource", Run: hookFailureKeepsTheSource},
	{Name: "AbortRollsBackAnUnresumedMigration", Run: abortRollsBack},
	{Name: "CancelAndAbortInPreCopy", Run: cancelAndAbortInPreCopy},
	{Name: "MigrateRefusesBadInput", Run: migrateRefusesBadInput},
}

// invalidNames are names ValidName refuses.
var invalidNames = []string{"", "../x", ".hidden", "a b", strings.Repeat("v", 65)}

func lookupState(t testing.TB, h hypervisor.Hypervisor, name string) (hypervisor.State, error) {
	t.Helper()
	v, err := h.Lookup(t.Context(), name)
	if err == nil {
		assert.Equal(t, name, v.Name, "Lookup's Name")
	}
	return v.State, err
}

// runningAt fails t unless the VM runs at h (by its word) and the guest
// is there (by Where).
func (w World) runningAt(t testing.TB, what string, h hypervisor.Hypervisor, place Place) {
	t.Helper()
	st, err := lookupState(t, h, w.VM)
	if assert.NoError(t, err, "%s: Lookup at the %s", what, place) {
		assert.Equal(t, hypervisor.Running, st, "%s: state at the %s", what, place)
	}
	assert.Equal(t, place, w.Where(t), "%s: where the guest is", what)
}

// inactive fails t unless h holds no active instance of the VM.
func (w World) inactive(t testing.TB, what string, h hypervisor.Hypervisor) {
	t.Helper()
	st, err := lookupState(t, h, w.VM)
	if err != nil {
		assert.ErrorIs(t, err, hypervisor.ErrNotFound, "%s", what)
		return
	}
	assert.False(t, st.Active(), "%s: state %s", what, st)
}

// gone fails t unless h finds no instance of the VM at all.
func (w World) gone(t testing.TB, what string, h hypervisor.Hypervisor) {
	t.Helper()
	st, err := lookupState(t, h, w.VM)
	assert.ErrorIs(t, err, hypervisor.ErrNotFound, "%s (state %q)", what, st)
}

// Lookup finds the VM running at the source with its NICs, nowhere
// else; an unknown name is ErrNotFound, a bad one ErrInvalid quoting it.
func lookup(t testing.TB, h Harness) {
	w := h.New(t)
	ctx := t.Context()
	v, err := w.Source.Lookup(ctx, w.VM)
	require.NoError(t, err)
	assert.Equal(t, w.VM, v.Name)
	assert.Equal(t, hypervisor.Running, v.State)
	if assert.NotEmpty(t, v.NICs, "the VM's NICs") {
		for _, n := range v.NICs {
			_, err := net.ParseMAC(n.MAC)
			assert.NoError(t, err, "NIC MAC %q", n.MAC)
		}
	}
	assert.Equal(t, AtSource, w.Where(t), "where the guest is")
	w.gone(t, "Lookup at the target", w.Target)
	for _, hv := range []hypervisor.Hypervisor{w.Source, w.Target} {
		_, err := hv.Lookup(ctx, "no-such-vm")
		assert.ErrorIs(t, err, hypervisor.ErrNotFound, "Lookup of an unknown VM")
		for _, name := range invalidNames {
			_, err := hv.Lookup(ctx, name)
			if assert.ErrorIs(t, err, hypervisor.ErrInvalid, "Lookup(%q)", name) && name != "" {
				assert.ErrorContains(t, err, name[:min(len(name), 10)], "the error must quote the name")
			}
		}
	}
}

// PrepareIncoming starts an instance at the target that is not active
// (the guest stays at the source) and says where to send it; a host
// with the VM active refuses with ErrExists; Abort at the target
// discards the instance, and again is a no-op.
func prepareIncomingAndAbort(t testing.TB, h Harness) {
	w := h.New(t)
	ctx := t.Context()
	v, err := w.Source.Lookup(ctx, w.VM)
	require.NoError(t, err)
	ep, err := w.Target.PrepareIncoming(ctx, v)
	require.NoError(t, err)
	assert.Equal(t, w.VM, ep.VM, "Endpoint.VM")
	assert.NotEmpty(t, ep.URI, "Endpoint.URI")
	st, err := lookupState(t, w.Target, w.VM)
	if assert.NoError(t, err, "Lookup of the incoming instance") {
		assert.Equal(t, hypervisor.Incoming, st, "the incoming instance's state")
	}
	w.runningAt(t, "with an incoming instance at the target", w.Source, AtSource)
	_, err = w.Source.PrepareIncoming(ctx, v)
	assert.ErrorIs(t, err, hypervisor.ErrExists, "PrepareIncoming where the VM is active")
	for _, name := range invalidNames {
		bad := v
		bad.Name = name
		_, err := w.Target.PrepareIncoming(ctx, bad)
		assert.ErrorIs(t, err, hypervisor.ErrInvalid, "PrepareIncoming(%q)", name)
	}
	require.NoError(t, w.Target.Abort(ctx, w.VM))
	w.gone(t, "Lookup at the target after Abort", w.Target)
	assert.NoError(t, w.Target.Abort(ctx, w.VM), "Abort with nothing to abort")
	assert.NoError(t, w.Source.Abort(ctx, "no-such-vm"), "Abort of an unknown VM")
	w.runningAt(t, "after the target's Abort", w.Source, AtSource)
}

// migrate prepares the target and migrates the VM with opts.
func (w World) migrate(t testing.TB, ctx context.Context, opts hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	t.Helper()
	v, err := w.Source.Lookup(t.Context(), w.VM)
	require.NoError(t, err)
	ep, err := w.Target.PrepareIncoming(t.Context(), v)
	require.NoError(t, err)
	return w.Source.Migrate(ctx, w.VM, ep, opts)
}

// Migrate runs the hook once, while the source is paused with the guest
// still there and the target not yet active; afterwards the VM is paused
// at the target, the guest there, nothing active at the source; only
// Resume runs it; Abort of a running VM is a no-op.
func migrateSwitchoverResume(t testing.TB, h Harness) {
	w := h.New(t)
	ctx := t.Context()
	var progress atomic.Int32
	var hooks atomic.Int32
	var mu sync.Mutex
	var inHook []string
	opts := hypervisor.MigrateOptions{
		OnProgress: func(hypervisor.Progress) { progress.Add(1) },
		AtSwitchover: func(context.Context) error {
			hooks.Add(1)
			src, serr := lookupState(t, w.Source, w.VM)
			dst, derr := lookupState(t, w.Target, w.VM)
			where := w.Where(t)
			mu.Lock()
			defer mu.Unlock()
			if serr != nil || src != hypervisor.Paused {
				inHook = append(inHook, "the source is "+string(src)+errText(serr)+", want paused")
			}
			if derr == nil && dst.Active() {
				inHook = append(inHook, "the target is already "+string(dst))
			}
			if where != AtSource {
				inHook = append(inHook, "the guest is at the "+string(where)+"; want still at the source")
			}
			return nil
		},
	}
	start := time.Now()
	st, err := w.migrate(t, ctx, opts)
	require.NoError(t, err, "Migrate")
	assert.Equal(t, int32(1), hooks.Load(), "the hook's calls")
	mu.Lock()
	assert.Empty(t, inHook, "during the hook")
	mu.Unlock()
	if progress.Load() == 0 {
		t.Log("no progress reported (allowed for a migration this short)")
	}
	assert.False(t, st.Switchover.IsZero(), "Stats.Switchover")
	assert.False(t, st.SwitchoverDone.Before(st.Switchover), "Stats.SwitchoverDone before Switchover")
	assert.False(t, st.Switchover.Before(start), "Stats.Switchover before Migrate was called")
	assert.Positive(t, st.Total, "Stats.Total")

	stt, err := lookupState(t, w.Target, w.VM)
	if assert.NoError(t, err, "Lookup at the target") {
		assert.Equal(t, hypervisor.Paused, stt, "the target after Migrate: paused until Resume")
	}
	w.inactive(t, "the source after Migrate", w.Source)
	assert.Equal(t, AtTarget, w.Where(t), "where the guest is after Migrate")
	for _, name := range invalidNames {
		assert.ErrorIs(t, w.Target.Resume(ctx, name), hypervisor.ErrInvalid, "Resume(%q)", name)
	}
	assert.ErrorIs(t, w.Target.Resume(ctx, "no-such-vm"), hypervisor.ErrNotFound, "Resume of an unknown VM")
	require.NoError(t, w.Target.Resume(ctx, w.VM))
	w.runningAt(t, "after Resume", w.Target, AtTarget)
	w.inactive(t, "the source after Resume", w.Source)
	require.NoError(t, w.Target.Abort(ctx, w.VM), "Abort of a resumed VM")
	w.runningAt(t, "after an Abort of the resumed VM", w.Target, AtTarget)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return " (" + err.Error() + ")"
}

var errHook = errors.New("the hook failed on purpose")

// A hook that fails or panics cancels the migration: ErrSwitchoverHook,
// the VM runs on at the source (the guest there), the target is not
// active.
func hookFailureKeepsTheSource(t testing.TB, h Harness) {
	w := h.New(t)
	ctx := t.Context()
	_, err := w.migrate(t, ctx, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error { return errHook }})
	assert.ErrorIs(t, err, hypervisor.ErrSwitchoverHook, "a failing hook")
	w.runningAt(t, "after a failing hook", w.Source, AtSource)
	w.inactive(t, "the target after a failing hook", w.Target)
	require.NoError(t, w.Target.Abort(ctx, w.VM))

	_, err = w.migrate(t, ctx, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error { panic("the hook's bug") }})
	assert.ErrorIs(t, err, hypervisor.ErrSwitchoverHook, "a panicking hook")
	w.runningAt(t, "after a panicking hook", w.Source, AtSource)
	w.inactive(t, "the target after a panicking hook", w.Target)
}

// A migrated VM that was never resumed is rolled back by Abort at the
// target and at the source (the Migrator's rollback): it runs at the
// source, the guest there, and is active nowhere else.
func abortRollsBack(t testing.TB, h Harness) {
	w := h.New(t)
	ctx := t.Context()
	_, err := w.migrate(t, ctx, hypervisor.MigrateOptions{})
	require.NoError(t, err)
	require.NoError(t, w.Target.Abort(ctx, w.VM), "Abort at the target")
	require.NoError(t, w.Source.Abort(ctx, w.VM), "Abort at the source")
	w.runningAt(t, "after the rollback", w.Source, AtSource)
	w.inactive(t, "the target after the rollback", w.Target)
}

// A migration whose context ends, or that the source's Abort cancels,
// in pre-copy ends with ErrAborted once the VM runs on at the source.
func cancelAndAbortInPreCopy(t testing.TB, h Harness) {
	w := h.New(t)
	ctx := t.Context()
	for _, how := range []string{"context", "Abort"} {
		mctx, cancel := context.WithCancel(ctx)
		var once sync.Once
		hooked := false
		_, err := w.migrate(t, mctx, hypervisor.MigrateOptions{
			OnProgress: func(hypervisor.Progress) {
				once.Do(func() {
					if how == "context" {
						cancel()
						return
					}
					go func() { _ = w.Source.Abort(ctx, w.VM) }() // OnProgress must not block
				})
			},
			AtSwitchover: func(context.Context) error { hooked = true; return nil },
		})
		cancel()
		if !assert.ErrorIs(t, err, hypervisor.ErrAborted, "Migrate cancelled by its %s in pre-copy", how) {
			continue
		}
		assert.False(t, hooked, "%s: the switchover came after the cancel", how)
		w.runningAt(t, "after a migration cancelled by its "+how, w.Source, AtSource)
		w.inactive(t, how+": the target", w.Target)
		require.NoError(t, w.Target.Abort(ctx, w.VM))
	}
}

// Migrate refuses bad input before it touches anything (ErrInvalid for a
// bad name, endpoint or options; ErrNotFound for a VM it does not have),
// and a target that was never reached (its instance discarded) is
// ErrUnreachable; the VM runs on at the source all along.
func migrateRefusesBadInput(t testing.TB, h Harness) {
	w := h.New(t)
	ctx := t.Context()
	v, err := w.Source.Lookup(ctx, w.VM)
	require.NoError(t, err)
	ep, err := w.Target.PrepareIncoming(ctx, v)
	require.NoError(t, err)
	for _, name := range invalidNames {
		_, err := w.Source.Migrate(ctx, name, ep, hypervisor.MigrateOptions{})
		assert.ErrorIs(t, err, hypervisor.ErrInvalid, "Migrate(%q)", name)
	}
	for _, c := range []struct {
		what string
		to   hypervisor.Endpoint
		opts hypervisor.MigrateOptions
		want error
	}{
		{"an empty endpoint", hypervisor.Endpoint{VM: w.VM}, hypervisor.MigrateOptions{}, hypervisor.ErrInvalid},
		{"a negative MaxDowntime", ep, hypervisor.MigrateOptions{MaxDowntime: -time.Millisecond}, hypervisor.ErrInvalid},
		{"a MaxDowntime below 1ms", ep, hypervisor.MigrateOptions{MaxDowntime: time.Microsecond}, hypervisor.ErrInvalid},
		{"a MaxDowntime above the limit", ep, hypervisor.MigrateOptions{MaxDowntime: hypervisor.MaxDowntimeLimit + time.Second}, hypervisor.ErrInvalid},
	} {
		_, err := w.Source.Migrate(ctx, w.VM, c.to, c.opts)
		assert.ErrorIs(t, err, c.want, "Migrate with %s", c.what)
	}
	_, err = w.Source.Migrate(ctx, "no-such-vm", ep, hypervisor.MigrateOptions{})
	assert.ErrorIs(t, err, hypervisor.ErrNotFound, "Migrate of an unknown VM")
	w.runningAt(t, "after refused migrations", w.Source, AtSource)
	st, err := lookupState(t, w.Target, w.VM)
	if assert.NoError(t, err, "the incoming instance after refused migrations") {
		assert.Equal(t, hypervisor.Incoming, st, "the incoming instance after refused migrations")
	}

	require.NoError(t, w.Target.Abort(ctx, w.VM))
	_, err = w.Source.Migrate(ctx, w.VM, ep, hypervisor.MigrateOptions{})
	assert.ErrorIs(t, err, hypervisor.ErrUnreachable, "Migrate to a target whose instance was discarded")
	w.runningAt(t, "after a migration to an unreachable target", w.Source, AtSource)
}
