package libvirt

// The job loop's rare paths on a source domain played by fakeDomain: no
// daemon, no root, no guest (the package still needs cgo and libvirt's
// headers to build).

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	golibvirt "libvirt.org/go/libvirt"

	"github.com/sealift/sealift/hypervisor"
)

// fakeDomain plays a source domain whose migration job is job: it runs
// when runJob calls MigrateToURI3 and returns what the call returns.
type fakeDomain struct {
	job func(*fakeDomain) error

	mu      sync.Mutex
	state   golibvirt.DomainState
	reason  int
	jobType golibvirt.DomainJobType
	calls   []string
	abort   chan struct{} // closed by the first AbortJob
	once    sync.Once

	suspended chan time.Time // buffered 1, fed like Migrate's event callbacks
	completed chan golibvirt.DomainJobInfo
}

func newFakeDomain(job func(*fakeDomain) error) *fakeDomain {
	return &fakeDomain{job: job, state: golibvirt.DOMAIN_RUNNING, abort: make(chan struct{}),
		suspended: make(chan time.Time, 1), completed: make(chan golibvirt.DomainJobInfo, 1)}
}

func (f *fakeDomain) record(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

func (f *fakeDomain) count(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == call {
			n++
		}
	}
	return n
}

func (f *fakeDomain) set(st golibvirt.DomainState, reason int, job golibvirt.DomainJobType) {
	f.mu.Lock()
	f.state, f.reason, f.jobType = st, reason, job
	f.mu.Unlock()
}

func (f *fakeDomain) MigrateToURI3(string, *golibvirt.DomainMigrateParameters, golibvirt.DomainMigrateFlags) error {
	f.record("MigrateToURI3")
	return f.job(f)
}

func (f *fakeDomain) GetJobInfo() (*golibvirt.DomainJobInfo, error) {
	f.record("GetJobInfo")
	f.mu.Lock()
	defer f.mu.Unlock()
	return &golibvirt.DomainJobInfo{Type: f.jobType, DataProcessed: 1 << 20, DataRemaining: 127 << 20, MemTotal: 128 << 20}, nil
}

func (f *fakeDomain) AbortJob() error {
	f.record("AbortJob")
	f.once.Do(func() { close(f.abort) })
	return nil
}

func (f *fakeDomain) GetState() (golibvirt.DomainState, int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.reason, nil
}

func (f *fakeDomain) Resume() error {
	f.record("Resume")
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.state != golibvirt.DOMAIN_PAUSED {
		return golibvirt.Error{Code: golibvirt.ERR_OPERATION_INVALID, Message: "domain is not paused"}
	}
	f.state, f.reason = golibvirt.DOMAIN_RUNNING, int(golibvirt.DOMAIN_RUNNING_UNPAUSED)
	return nil
}

// pauseForSwitchover stops the source for the last pass and sends the
// lifecycle event, as libvirt does.
func (f *fakeDomain) pauseForSwitchover() {
	f.set(golibvirt.DOMAIN_PAUSED, int(golibvirt.DOMAIN_PAUSED_MIGRATION), golibvirt.DOMAIN_JOB_UNBOUNDED)
	select {
	case f.suspended <- time.Now():
	default:
	}
}

// gone is the source after a completed migration.
func (f *fakeDomain) gone() {
	f.set(golibvirt.DOMAIN_SHUTOFF, int(golibvirt.DOMAIN_SHUTOFF_MIGRATED), golibvirt.DOMAIN_JOB_NONE)
}

// waitAbort waits for AbortJob; the job then ends as libvirt reports it,
// leaving the source paused (libvirt's own resume is not relied upon).
func (f *fakeDomain) waitAbort() error {
	select {
	case <-f.abort:
		f.mu.Lock()
		f.jobType = golibvirt.DOMAIN_JOB_NONE
		f.mu.Unlock()
		return errAborted
	case <-time.After(10 * time.Second):
		return errors.New("fake: no AbortJob within 10s")
	}
}

var errAborted = golibvirt.Error{Code: golibvirt.ERR_OPERATION_ABORTED, Domain: golibvirt.FROM_QEMU,
	Message: "operation aborted: migration out job: canceled by client"}

func (f *fakeDomain) isGone() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state == golibvirt.DOMAIN_SHUTOFF
}

func (f *fakeDomain) running() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state == golibvirt.DOMAIN_RUNNING
}

const fakeVM = "vm1"

func fakeHypervisor() *Hypervisor {
	return &Hypervisor{host: "fake", log: slog.New(slog.DiscardHandler), prepared: map[string]bool{}, aborted: map[string]bool{}}
}

func runFake(t *testing.T, ctx context.Context, h *Hypervisor, f *fakeDomain, opts hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	t.Helper()
	return h.runJob(ctx, migrationJob{name: fakeVM, to: hypervisor.Endpoint{VM: fakeVM, URI: "qemu+tcp://203.0.113.1:16512/system"},
		opts: opts, d: f, params: &golibvirt.DomainMigrateParameters{}, suspended: f.suspended, completed: f.completed})
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFakeJobRepeatedSuspendedEvent(t *testing.T) {
	// "suspended: migrated" arrives again while the hook runs (libvirt
	// re-announces the state): the hook still runs once.
	hookStarted := make(chan struct{})
	f := newFakeDomain(func(f *fakeDomain) error {
		f.pauseForSwitchover()
		<-hookStarted
		f.pauseForSwitchover() // the repeat, queued while the hook runs
		f.gone()
		f.completed <- golibvirt.DomainJobInfo{Downtime: 42, DataProcessed: 130 << 20, MemTotal: 128 << 20}
		return nil
	})
	var hooks atomic.Int32
	stats, err := runFake(t, testCtx(t), fakeHypervisor(), f, hypervisor.MigrateOptions{
		AtSwitchover: func(context.Context) error {
			if hooks.Add(1) == 1 {
				close(hookStarted)
			}
			// Return once the repeated event was taken (by runJob, after
			// MigrateToURI3 returned).
			if !assert.Eventually(t, func() bool { return len(f.suspended) == 0 && f.count("MigrateToURI3") == 1 && f.isGone() },
				10*time.Second, time.Millisecond, "the repeated event was not taken") {
				return errors.New("test: repeated event not taken")
			}
			return nil
		},
	})
	require.NoError(t, err)
	assert.EqualValues(t, 1, hooks.Load(), "hook runs")
	assert.Equal(t, 42*time.Millisecond, stats.Downtime)
	assert.EqualValues(t, 130<<20, stats.Bytes)
	assert.False(t, stats.Switchover.IsZero() || stats.SwitchoverDone.Before(stats.Switchover))
	assert.Zero(t, f.count("AbortJob"))
}

func TestFakeJobHookFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		hook func(context.Context) error
		want string
	}{
		{"error", func(context.Context) error { return errors.New("secure link not ready") }, "secure link not ready"},
		{"panic", func(context.Context) error { panic("boom") }, "hook panicked: boom"},
	} {
		t.Run(tc.name+" while copying", func(t *testing.T) {
			f := newFakeDomain(func(f *fakeDomain) error {
				f.pauseForSwitchover()
				return f.waitAbort()
			})
			_, err := runFake(t, testCtx(t), fakeHypervisor(), f, hypervisor.MigrateOptions{AtSwitchover: tc.hook})
			require.ErrorIs(t, err, hypervisor.ErrSwitchoverHook)
			assert.ErrorContains(t, err, tc.want)
			assert.NotContains(t, err.Error(), "stream had completed")
			assert.Equal(t, 1, f.count("AbortJob"))
			assert.Equal(t, 1, f.count("Resume"))
			assert.True(t, f.running(), "the VM runs at the source")
		})
	}
	t.Run("error after the stream completed", func(t *testing.T) {
		// libvirt keeps copying while the hook runs: when the hook fails
		// too late the VM is paused at the target, gone from the source.
		f := newFakeDomain(func(f *fakeDomain) error {
			f.pauseForSwitchover()
			f.gone()
			return nil
		})
		_, err := runFake(t, testCtx(t), fakeHypervisor(), f, hypervisor.MigrateOptions{
			AtSwitchover: func(context.Context) error {
				assert.Eventually(t, func() bool { return f.count("MigrateToURI3") == 1 && f.isGone() },
					10*time.Second, time.Millisecond, "the stream did not complete")
				return errors.New("secure link not ready")
			},
		})
		require.ErrorIs(t, err, hypervisor.ErrSwitchoverHook)
		assert.ErrorContains(t, err, "the stream had completed: the VM is paused at the target")
		assert.Zero(t, f.count("Resume"), "nothing to resume at the source")
	})
}

func TestFakeJobAborted(t *testing.T) {
	t.Run("context cancelled while copying", func(t *testing.T) {
		f := newFakeDomain(func(f *fakeDomain) error {
			f.set(golibvirt.DOMAIN_RUNNING, 0, golibvirt.DOMAIN_JOB_UNBOUNDED)
			return f.waitAbort()
		})
		ctx, cancel := context.WithCancel(testCtx(t))
		_, err := runFake(t, ctx, fakeHypervisor(), f, hypervisor.MigrateOptions{
			OnProgress:   func(hypervisor.Progress) { cancel() },
			AtSwitchover: func(context.Context) error { t.Error("hook ran"); return nil },
		})
		require.ErrorIs(t, err, hypervisor.ErrAborted)
		assert.Equal(t, 1, f.count("AbortJob"))
		assert.True(t, f.running())
	})
	t.Run("Abort during the hook", func(t *testing.T) {
		h := fakeHypervisor()
		f := newFakeDomain(func(f *fakeDomain) error {
			f.pauseForSwitchover()
			return f.waitAbort()
		})
		_, err := runFake(t, testCtx(t), h, f, hypervisor.MigrateOptions{
			AtSwitchover: func(context.Context) error {
				// What Abort does at a source (it needs the daemon to find
				// the domain): mark the migration aborted, abort the job.
				h.mu.Lock()
				h.aborted[fakeVM] = true
				h.mu.Unlock()
				return f.AbortJob()
			},
		})
		require.ErrorIs(t, err, hypervisor.ErrAborted)
		assert.Equal(t, 1, f.count("Resume"))
		assert.True(t, f.running())
		assert.Empty(t, h.aborted, "the abort mark outlived the migration")
	})
}

func TestFakeJobFails(t *testing.T) {
	for _, tc := range []struct {
		name    string
		paused  bool // the source was stopped for the last pass when the job ended
		err     golibvirt.Error
		want    error
		notWant error
	}{
		// The source daemon cannot reach the target's.
		{"target unreachable", false, golibvirt.Error{Code: golibvirt.ERR_SYSTEM_ERROR, Domain: golibvirt.FROM_RPC,
			Message: "unable to connect to server at '203.0.113.1:16512': Connection refused"}, hypervisor.ErrUnreachable, nil},
		// QEMU fails the job on its own.
		{"QEMU fails", true, golibvirt.Error{Code: golibvirt.ERR_OPERATION_FAILED, Domain: golibvirt.FROM_QEMU,
			Message: "operation failed: migration out job: unexpectedly failed"}, hypervisor.ErrMigration, hypervisor.ErrUnreachable},
		// QEMU's migration is cancelled outside sealift (QEMU itself, or
		// virsh domjobabort): libvirt reports "canceled by client", which
		// this backend maps to ErrAborted (the qemu backend says
		// ErrMigration when QEMU cancels by itself).
		{"cancelled outside sealift", true, errAborted, hypervisor.ErrAborted, nil},
		// This process's connection to the source daemon drops mid-job: an
		// RPC error, classified like an unreachable peer.
		{"daemon connection lost", false, golibvirt.Error{Code: golibvirt.ERR_INTERNAL_ERROR, Domain: golibvirt.FROM_RPC,
			Message: "End of file while reading data: Input/output error"}, hypervisor.ErrUnreachable, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeDomain(func(f *fakeDomain) error {
				if tc.paused {
					f.set(golibvirt.DOMAIN_PAUSED, int(golibvirt.DOMAIN_PAUSED_MIGRATION), golibvirt.DOMAIN_JOB_NONE)
				}
				return tc.err
			})
			_, err := runFake(t, testCtx(t), fakeHypervisor(), f, hypervisor.MigrateOptions{
				AtSwitchover: func(context.Context) error { t.Error("hook ran"); return nil },
			})
			require.ErrorIs(t, err, tc.want)
			if tc.notWant != nil {
				assert.NotErrorIs(t, err, tc.notWant)
			}
			assert.ErrorContains(t, err, tc.err.Message)
			assert.Equal(t, map[bool]int{true: 1, false: 0}[tc.paused], f.count("Resume"))
			assert.True(t, f.running(), "the VM runs at the source")
		})
	}
}

func TestFakeMigrateInvalid(t *testing.T) {
	// Refused before the daemon is asked anything: this Hypervisor has no
	// connection, any call on it would panic.
	to := hypervisor.Endpoint{VM: fakeVM, URI: "qemu+tcp://203.0.113.1:16512/system"}
	for _, tc := range []struct {
		name string
		vm   string
		to   hypervisor.Endpoint
		opts hypervisor.MigrateOptions
		want string
	}{
		{"bad name", "bad/name", to, hypervisor.MigrateOptions{}, `vm name "bad/name"`},
		{"negative downtime", fakeVM, to, hypervisor.MigrateOptions{MaxDowntime: -time.Second}, "MaxDowntime -1s"},
		{"endpoint of another vm", fakeVM, hypervisor.Endpoint{VM: "vm2", URI: to.URI}, hypervisor.MigrateOptions{}, `endpoint is for vm "vm2"`},
		{"bad URI", fakeVM, hypervisor.Endpoint{URI: "tcp:203.0.113.1:4444"}, hypervisor.MigrateOptions{}, `URI "tcp:203.0.113.1:4444"`},
		{"bad data URI", fakeVM, hypervisor.Endpoint{URI: to.URI, MigrateURI: "unix:/x"}, hypervisor.MigrateOptions{}, `MigrateURI "unix:/x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := fakeHypervisor().Migrate(testCtx(t), tc.vm, tc.to, tc.opts)
			require.ErrorIs(t, err, hypervisor.ErrInvalid)
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
