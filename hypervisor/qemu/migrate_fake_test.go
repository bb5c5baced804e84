package qemu

// Migrate's rare paths, on a source QEMU played by qmptest monitors: no
// QEMU binary, no root, no guest.

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/qemu/qmp"
	"github.com/sealift/sealift/hypervisor/qemu/qmp/qmptest"
)

// step is one migration status the fake QEMU reports (as a MIGRATION
// event) after "migrate", with the run state it has then ("" = as before).
type step struct{ mig, run string }

// fakeQEMU plays a source QEMU: its run state (query-status) and migration
// status (query-migrate) change as QEMU's do on the commands Migrate
// sends, and every monitor connection to it (the first one, and any
// Reconnect) sees the same state. Like an older QEMU it leaves the VM
// paused when a migration is cancelled after the source stopped: only a
// cont makes it run again.
type fakeQEMU struct {
	plan      []step // reported right after "migrate"
	errorDesc string // query-migrate's error-desc once failed
	sent      uint64 // query-migrate's ram.transferred

	mu   sync.Mutex
	run  string // query-status
	mig  string // query-migrate status
	mons []*qmptest.Monitor
	exit chan struct{} // closed when the process exits (quit)
	quit sync.Once
}

func newFakeQEMU(plan ...step) *fakeQEMU {
	return &fakeQEMU{plan: plan, run: "running", mig: "none", exit: make(chan struct{})}
}

// connect opens a new monitor connection to the fake.
func (q *fakeQEMU) connect() *qmptest.Monitor {
	m := qmptest.NewMonitor()
	q.mu.Lock()
	q.mons = append(q.mons, m)
	q.mu.Unlock()
	m.Reply("migrate-set-capabilities")
	m.Reply("migrate-set-parameters")
	m.Handle("query-status", func(json.RawMessage) (any, error) {
		q.mu.Lock()
		defer q.mu.Unlock()
		return map[string]any{"status": q.run, "running": q.run == "running"}, nil
	})
	m.Handle("query-migrate", func(json.RawMessage) (any, error) {
		q.mu.Lock()
		defer q.mu.Unlock()
		mi := map[string]any{"status": q.mig, "ram": map[string]any{"transferred": q.sent, "remaining": 1 << 20, "total": 128 << 20, "dirty-sync-count": 1}}
		switch q.mig {
		case "completed":
			mi["total-time"], mi["downtime"] = 1234, 42
		case "failed":
			mi["error-desc"] = q.errorDesc
		}
		return mi, nil
	})
	m.Handle("migrate", func(json.RawMessage) (any, error) {
		for _, s := range q.plan {
			q.to(m, s)
		}
		return struct{}{}, nil
	})
	m.Handle("migrate-continue", func(json.RawMessage) (any, error) {
		if q.status() != "pre-switchover" {
			return nil, &qmp.Error{Command: "migrate-continue", Class: "GenericError", Desc: "Migration not in expected state: " + q.status()}
		}
		q.to(m, step{"device", ""})
		q.to(m, step{"completed", "postmigrate"})
		return struct{}{}, nil
	})
	m.Handle("migrate_cancel", func(json.RawMessage) (any, error) {
		switch q.status() {
		case "setup", "active", "pre-switchover", "device":
			q.to(m, step{"cancelling", ""})
			q.to(m, step{"cancelled", ""})
		}
		return struct{}{}, nil
	})
	m.Handle("cont", func(json.RawMessage) (any, error) {
		q.mu.Lock()
		defer q.mu.Unlock()
		q.run = "running"
		return struct{}{}, nil
	})
	m.Handle("quit", func(json.RawMessage) (any, error) {
		q.exited()
		return struct{}{}, nil
	})
	return m
}

// to moves the fake to s and reports it on m.
func (q *fakeQEMU) to(m *qmptest.Monitor, s step) {
	q.mu.Lock()
	q.mig = s.mig
	if s.mig == "pre-switchover" {
		s.run = "finish-migrate" // pause-before-switchover: the source stopped
	}
	if s.run != "" {
		q.run = s.run
	}
	q.mu.Unlock()
	m.Emit("MIGRATION", map[string]any{"status": s.mig})
}

func (q *fakeQEMU) status() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.mig
}

func (q *fakeQEMU) runState() string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.run
}

// drop ends the newest monitor connection as a lost socket would.
func (q *fakeQEMU) drop() { q.monitors()[len(q.monitors())-1].Drop() }

// exited ends the process (and with it the connections).
func (q *fakeQEMU) exited() {
	q.quit.Do(func() {
		for _, m := range q.monitors() {
			m.Drop()
		}
		close(q.exit)
	})
}

func (q *fakeQEMU) monitors() []*qmptest.Monitor {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]*qmptest.Monitor(nil), q.mons...)
}

// count is how often command reached the fake, over all connections.
func (q *fakeQEMU) count(command string) int {
	n := 0
	for _, m := range q.monitors() {
		n += m.Count(command)
	}
	return n
}

// commands are the commands that reached the fake, connection by connection.
func (q *fakeQEMU) commands() [][]string {
	var c [][]string
	for _, m := range q.monitors() {
		c = append(c, m.Names())
	}
	return c
}

const fakeVM = "vm1"

// fakeSource is a Hypervisor holding VM fakeVM, running, played by q.
func fakeSource(t *testing.T, q *fakeQEMU) *Hypervisor {
	t.Helper()
	h, err := New(WithStateDir(t.TempDir()))
	require.NoError(t, err)
	p := &Process{Config: Config{Name: fakeVM, MemoryMiB: 128, CPUs: 1, Kernel: "/fake/vmlinuz"}, QMPPath: "/fake/vm1.qmp",
		log: h.log, done: q.exit, mon: q.connect()}
	p.dial = func(context.Context) (qmp.Monitor, error) {
		select {
		case <-q.exit:
			return nil, errors.New("dial unix /fake/vm1.qmp: connect: connection refused")
		default:
			return q.connect(), nil
		}
	}
	h.mu.Lock()
	h.vms[fakeVM] = &vmEntry{p: p}
	h.mu.Unlock()
	t.Cleanup(func() {
		q.exited()
		h.Close()
	})
	return h
}

var fakeEndpoint = hypervisor.Endpoint{VM: fakeVM, URI: "tcp:192.0.2.2:4444"}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// requireRunsAtSource checks the contract of a failed Migrate: the VM runs
// at the source, whose Hypervisor still manages it (a new Migrate is not
// refused as "already migrating").
func requireRunsAtSource(t *testing.T, h *Hypervisor, q *fakeQEMU) {
	t.Helper()
	assert.Equal(t, "running", q.runState(), "QEMU's run state (commands: %v)", q.commands())
	vm, err := h.Lookup(context.Background(), fakeVM)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Running, vm.State)
	h.mu.Lock()
	defer h.mu.Unlock()
	assert.False(t, h.vms[fakeVM].migrating, "the VM is still marked as migrating")
}

var copying = []step{{"setup", ""}, {"active", ""}}

func TestFakeMigrateRepeatedPreSwitchover(t *testing.T) {
	// QEMU reports pre-switchover twice (an event and a late query-migrate
	// say the same): the hook runs once, migrate-continue is sent once.
	q := newFakeQEMU(append(copying, step{"pre-switchover", ""}, step{"pre-switchover", ""})...)
	h := fakeSource(t, q)
	var hooks atomic.Int32
	var srcInHook hypervisor.State
	stats, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{
		AtSwitchover: func(ctx context.Context) error {
			hooks.Add(1)
			vm, err := h.Lookup(ctx, fakeVM)
			srcInHook = vm.State
			return err
		},
	})
	require.NoError(t, err, "commands: %v", q.commands())
	assert.EqualValues(t, 1, hooks.Load(), "hook runs")
	assert.Equal(t, hypervisor.Paused, srcInHook, "source state inside the hook")
	assert.Equal(t, 1, q.count("migrate-continue"))
	assert.Zero(t, q.count("migrate_cancel"))
	assert.Zero(t, q.count("cont"))
	assert.Equal(t, 42*time.Millisecond, stats.Downtime)
	assert.False(t, stats.Switchover.IsZero() || stats.SwitchoverDone.Before(stats.Switchover), "switchover times %v %v", stats.Switchover, stats.SwitchoverDone)
	caps := q.monitors()[0].Commands()[1] // after query-status
	require.Equal(t, "migrate-set-capabilities", caps.Name)
	assert.Contains(t, string(caps.Args), `{"capability":"pause-before-switchover","state":true}`)
	_, err = h.Lookup(context.Background(), fakeVM)
	assert.ErrorIs(t, err, hypervisor.ErrNotFound, "the source is forgotten at once")
	require.Eventually(t, func() bool { return q.count("quit") == 1 }, 10*time.Second, 5*time.Millisecond, "the source QEMU is quit")
	assert.Equal(t, "postmigrate", q.runState())
}

func TestFakeMigrateHookFails(t *testing.T) {
	for _, tc := range []struct {
		name string
		hook func(context.Context) error
		want string
	}{
		{"error", func(context.Context) error { return errors.New("secure link not ready") }, "secure link not ready"},
		{"panic", func(context.Context) error { panic("boom") }, "hook panicked: boom"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newFakeQEMU(append(copying, step{"pre-switchover", ""})...)
			h := fakeSource(t, q)
			_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{AtSwitchover: tc.hook})
			require.ErrorIs(t, err, hypervisor.ErrSwitchoverHook)
			assert.ErrorContains(t, err, tc.want)
			assert.Zero(t, q.count("migrate-continue"), "the last state was sent")
			assert.Equal(t, 1, q.count("migrate_cancel"))
			assert.Equal(t, 1, q.count("cont"))
			assert.Equal(t, "cancelled", q.status())
			requireRunsAtSource(t, h, q)
		})
	}
}

func TestFakeMigrateQMPConnectionLost(t *testing.T) {
	t.Run("while copying", func(t *testing.T) {
		q := newFakeQEMU(copying...)
		h := fakeSource(t, q)
		var once sync.Once
		_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{
			OnProgress: func(hypervisor.Progress) { once.Do(q.drop) },
		})
		require.ErrorIs(t, err, hypervisor.ErrMigration)
		assert.ErrorContains(t, err, "QMP connection lost")
		mons := q.monitors()
		require.Len(t, mons, 2, "Migrate reconnects to cancel")
		assert.True(t, mons[0].Closed(), "the lost connection is closed")
		assert.Equal(t, 1, mons[1].Count("migrate_cancel"), "cancelled through the new connection")
		assert.Equal(t, "cancelled", q.status())
		requireRunsAtSource(t, h, q) // Lookup works through the new connection
	})
	t.Run("at switchover", func(t *testing.T) {
		// The connection drops while the source is paused: migrate-continue
		// cannot be sent; the new connection cancels and resumes.
		q := newFakeQEMU(append(copying, step{"pre-switchover", ""})...)
		h := fakeSource(t, q)
		_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{
			AtSwitchover: func(context.Context) error { q.drop(); return nil },
		})
		require.ErrorIs(t, err, hypervisor.ErrMigration)
		assert.ErrorContains(t, err, "migrate-continue: qmp migrate-continue: qmp: connection closed")
		mons := q.monitors()
		require.Len(t, mons, 2, "Migrate reconnects to cancel")
		assert.Zero(t, q.count("migrate-continue"))
		assert.Equal(t, 1, mons[1].Count("migrate_cancel"))
		assert.Equal(t, 1, mons[1].Count("cont"))
		requireRunsAtSource(t, h, q)
	})
}

func TestFakeMigrateCancelledByQEMU(t *testing.T) {
	// QEMU cancels on its own after it stopped the source for the last
	// pass: ErrMigration (not ErrAborted: nobody asked), and a cont.
	q := newFakeQEMU(append(copying, step{"cancelling", "finish-migrate"}, step{"cancelled", ""})...)
	h := fakeSource(t, q)
	_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{
		AtSwitchover: func(context.Context) error { t.Error("hook ran"); return nil },
	})
	require.ErrorIs(t, err, hypervisor.ErrMigration)
	assert.NotErrorIs(t, err, hypervisor.ErrAborted)
	assert.ErrorContains(t, err, "cancelled by QEMU")
	assert.Zero(t, q.count("migrate_cancel"), "nothing left to cancel")
	assert.Equal(t, 1, q.count("cont"))
	requireRunsAtSource(t, h, q)
}

func TestFakeMigrateAborted(t *testing.T) {
	t.Run("Abort in the hook", func(t *testing.T) {
		q := newFakeQEMU(append(copying, step{"pre-switchover", ""})...)
		h := fakeSource(t, q)
		_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{
			AtSwitchover: func(ctx context.Context) error { return h.Abort(ctx, fakeVM) },
		})
		require.ErrorIs(t, err, hypervisor.ErrAborted)
		assert.Zero(t, q.count("migrate-continue"))
		assert.Equal(t, 1, q.count("migrate_cancel"))
		assert.Equal(t, 1, q.count("cont"))
		requireRunsAtSource(t, h, q)
	})
	t.Run("context cancelled while copying", func(t *testing.T) {
		q := newFakeQEMU(copying...)
		h := fakeSource(t, q)
		ctx, cancel := context.WithCancel(testCtx(t))
		_, err := h.Migrate(ctx, fakeVM, fakeEndpoint, hypervisor.MigrateOptions{
			OnProgress: func(hypervisor.Progress) { cancel() },
		})
		require.ErrorIs(t, err, hypervisor.ErrAborted)
		assert.ErrorContains(t, err, context.Canceled.Error())
		assert.Equal(t, 1, q.count("migrate_cancel"))
		requireRunsAtSource(t, h, q)
	})
}

func TestFakeMigrateUnreachable(t *testing.T) {
	t.Run("refused", func(t *testing.T) {
		q := newFakeQEMU(step{"setup", ""}, step{"failed", ""})
		q.errorDesc = "Failed to connect to '192.0.2.2:4444': Connection refused"
		h := fakeSource(t, q)
		_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{})
		require.ErrorIs(t, err, hypervisor.ErrUnreachable)
		assert.ErrorContains(t, err, "Connection refused")
		assert.Zero(t, q.count("migrate_cancel"), "a failed migration needs no cancel")
		requireRunsAtSource(t, h, q)
	})
	t.Run("no answer before the deadline", func(t *testing.T) {
		q := newFakeQEMU(step{"setup", ""}) // the target never answers
		h := fakeSource(t, q)
		ctx, cancel := context.WithTimeout(testCtx(t), 300*time.Millisecond)
		defer cancel()
		_, err := h.Migrate(ctx, fakeVM, fakeEndpoint, hypervisor.MigrateOptions{})
		require.ErrorIs(t, err, hypervisor.ErrUnreachable)
		assert.ErrorContains(t, err, "no connection before")
		assert.Equal(t, 1, q.count("migrate_cancel"))
		requireRunsAtSource(t, h, q)
	})
	t.Run("failed after sending", func(t *testing.T) {
		q := newFakeQEMU(append(copying, step{"failed", ""})...)
		q.errorDesc, q.sent = "Unable to write to socket: Broken pipe", 64<<20
		h := fakeSource(t, q)
		_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{})
		require.ErrorIs(t, err, hypervisor.ErrMigration)
		assert.NotErrorIs(t, err, hypervisor.ErrUnreachable)
		assert.ErrorContains(t, err, "Broken pipe")
		requireRunsAtSource(t, h, q)
	})
}

func TestFakeMigrateSourceExits(t *testing.T) {
	// QEMU dies mid-copy: ErrMigration; nothing runs at the source any
	// more, and the Hypervisor forgets the VM.
	q := newFakeQEMU(copying...)
	h := fakeSource(t, q)
	var once sync.Once
	_, err := h.Migrate(testCtx(t), fakeVM, fakeEndpoint, hypervisor.MigrateOptions{
		OnProgress: func(hypervisor.Progress) { once.Do(q.exited) },
	})
	// Which Migrate notices first, the exit or the closed monitor, is up
	// to the scheduler, as with a real QEMU; no reconnection succeeds.
	require.ErrorIs(t, err, hypervisor.ErrMigration)
	assert.Len(t, q.monitors(), 1)
	_, err = h.Lookup(context.Background(), fakeVM)
	assert.ErrorIs(t, err, hypervisor.ErrNotFound)
}

func TestFakeAbortReconnects(t *testing.T) {
	// A migration left running by a Migrate that is gone (a crashed
	// caller, as Recover finds it) on a monitor connection that ended:
	// Abort reconnects, cancels and resumes.
	q := newFakeQEMU()
	h := fakeSource(t, q)
	q.to(q.monitors()[0], step{"device", "finish-migrate"})
	q.drop()
	require.NoError(t, h.Abort(testCtx(t), fakeVM))
	mons := q.monitors()
	require.Len(t, mons, 2)
	assert.Equal(t, 1, mons[1].Count("migrate_cancel"))
	assert.Equal(t, 1, mons[1].Count("cont"))
	assert.Equal(t, "cancelled", q.status())
	requireRunsAtSource(t, h, q)
}

func TestFakeMigrateInvalid(t *testing.T) {
	// Refused before QEMU is asked anything.
	for _, tc := range []struct {
		name string
		vm   string
		to   hypervisor.Endpoint
		opts hypervisor.MigrateOptions
		want string
	}{
		{"bad name", "bad/name", fakeEndpoint, hypervisor.MigrateOptions{}, `vm name "bad/name"`},
		{"negative downtime", fakeVM, fakeEndpoint, hypervisor.MigrateOptions{MaxDowntime: -time.Second}, "MaxDowntime -1s"},
		{"downtime too long", fakeVM, fakeEndpoint, hypervisor.MigrateOptions{MaxDowntime: time.Hour}, "MaxDowntime 1h0m0s"},
		{"endpoint of another vm", fakeVM, hypervisor.Endpoint{VM: "vm2", URI: fakeEndpoint.URI}, hypervisor.MigrateOptions{}, `endpoint is for vm "vm2"`},
		{"bad URI", fakeVM, hypervisor.Endpoint{URI: "unix:/tmp/x"}, hypervisor.MigrateOptions{}, `URI "unix:/tmp/x"`},
		{"data URI", fakeVM, hypervisor.Endpoint{URI: fakeEndpoint.URI, MigrateURI: "tcp://192.0.2.3"}, hypervisor.MigrateOptions{}, "MigrateURI"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			q := newFakeQEMU(copying...)
			h := fakeSource(t, q)
			_, err := h.Migrate(testCtx(t), tc.vm, tc.to, tc.opts)
			require.ErrorIs(t, err, hypervisor.ErrInvalid)
			assert.ErrorContains(t, err, tc.want)
			assert.Empty(t, q.monitors()[0].Names(), "QEMU was asked")
		})
	}
}
