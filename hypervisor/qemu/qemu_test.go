package qemu_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
)

// world is a lab with one QEMU Hypervisor on host A and one on host B.
// Migration streams go across the underlay: each Hypervisor's default
// migration address is its uplink (A 10.255.1.1, B 203.0.113.1).
type world struct {
	lab    *lab.Lab
	a, b   *qemu.Hypervisor
	img    guest.Image
	name   string
	addr   netip.Addr
	cfgA   qemu.Config
	cfgB   qemu.Config
	ctx    context.Context
	cancel context.CancelFunc
}

// newWorld builds the lab and a Hypervisor on A and on B (opts apply to
// both) and defines the guest name (address addr) at B.
func newWorld(t testing.TB, name string, addr netip.Addr, opts ...qemu.Option) *world {
	t.Helper()
	if os.Geteuid() != 0 {
		lab.Missing(t, "root (network namespaces)")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt package qemu-system-x86)")
	}
	w := &world{name: name, addr: addr}
	w.ctx, w.cancel = context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(w.cancel)
	img, err := guest.Build(w.ctx)
	if err != nil {
		lab.Missing(t, err.Error())
	}
	w.img = img
	w.lab = lab.New(t)
	w.a = mustNew(t, append([]qemu.Option{qemu.WithHost(w.lab.A), qemu.WithStateDir(t.TempDir())}, opts...)...)
	w.b = mustNew(t, append([]qemu.Option{qemu.WithHost(w.lab.B), qemu.WithStateDir(t.TempDir())}, opts...)...)
	n := guest.Net{Addr: netip.PrefixFrom(addr, 24), Gateway: lab.Gateway, MAC: guest.MAC(addr), Tap: "tap" + name, Bridge: "br0"}
	w.cfgA = img.Config(name, n)
	w.cfgB = img.Config(name, n) // same tap name and bridge, on host B
	if err := w.b.Define(w.cfgB); err != nil {
		t.Fatal(err)
	}
	return w
}

func mustNew(t testing.TB, opts ...qemu.Option) *qemu.Hypervisor {
	t.Helper()
	h, err := qemu.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// boot starts the guest on A and waits for its agent.
func (w *world) boot(t testing.TB) guest.Status {
	t.Helper()
	if _, err := w.a.Start(w.ctx, w.cfgA); err != nil {
		t.Fatal(err)
	}
	s, err := guest.WaitReady(w.ctx, w.lab.A, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestMigrateAtoB(t *testing.T) {
	w := newWorld(t, "mig", netip.MustParseAddr("10.1.0.31"))
	before := w.boot(t)
	srcPid := w.a.Process(w.name).Pid()
	vm, err := w.a.Lookup(w.ctx, w.name)
	if err != nil || vm.State != hypervisor.Running || vm.MemoryBytes != 128<<20 || len(vm.NICs) != 1 {
		t.Fatalf("lookup at A: %+v %v", vm, err)
	}
	ep, err := w.b.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(ep.URI, "tcp:"+lab.BUnderlay.String()+":") {
		t.Fatalf("endpoint %q is not on B's underlay address", ep.URI)
	}
	if got, err := w.b.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Incoming {
		t.Fatalf("lookup at B after prepare: %+v %v", got, err)
	}

	var progress atomic.Int32
	var hookSrc, hookDst hypervisor.State
	var hookAt time.Time
	stats, err := w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{
		OnProgress: func(p hypervisor.Progress) {
			if p.Total >= 128<<20 && p.Transferred > 0 {
				progress.Add(1)
			}
		},
		AtSwitchover: func(ctx context.Context) error {
			hookAt = time.Now()
			s, err := w.a.Lookup(ctx, w.name)
			if err != nil {
				return err
			}
			d, err := w.b.Lookup(ctx, w.name)
			if err != nil {
				return err
			}
			hookSrc, hookDst = s.State, d.State
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if progress.Load() == 0 {
		t.Fatal("no progress report with the guest's memory size and bytes sent")
	}
	if hookSrc != hypervisor.Paused || hookDst != hypervisor.Incoming {
		t.Fatalf("inside the hook: source %q, target %q; want paused and incoming", hookSrc, hookDst)
	}
	if stats.Total <= 0 || stats.Downtime <= 0 || stats.Bytes == 0 || stats.Switchover.IsZero() ||
		stats.SwitchoverDone.Before(hookAt) || hookAt.Before(stats.Switchover) {
		t.Fatalf("stats %+v (hook ran at %v)", stats, hookAt)
	}
	// The source QEMU is unknown to A at once, and gone (reaped) shortly
	// after: it quits in the background, off the target's resume path.
	if _, err := w.a.Lookup(w.ctx, w.name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("lookup at A after migration: %v, want ErrNotFound", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, err := os.Stat("/proc/" + strconv.Itoa(srcPid))
		if os.IsNotExist(err) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("source QEMU pid %d still exists 10 s after the migration: %v", srcPid, err)
		}
	}
	// The target holds the guest, paused until Resume.
	if got, err := w.b.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Paused {
		t.Fatalf("lookup at B after migration: %+v %v, want paused", got, err)
	}
	resumedAt := time.Now()
	if err := w.b.Resume(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if !stats.SwitchoverDone.Before(resumedAt) {
		t.Fatalf("hook finished %v, target resumed %v", stats.SwitchoverDone, resumedAt)
	}
	if got, err := w.b.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at B after resume: %+v %v", got, err)
	}
	after, err := guest.WaitReady(w.ctx, w.lab.B, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	if after.BootID != before.BootID || after.Counter <= before.Counter {
		t.Fatalf("guest before %+v, after %+v: want same boot id and a larger counter", before, after)
	}
	if err := guest.Ping(w.ctx, w.lab.B, w.addr, 3); err != nil {
		t.Fatal(err)
	}
	if err := guest.Echo(w.ctx, w.lab.B, w.addr, []byte("at B")); err != nil {
		t.Fatal(err)
	}
	// The console at B continues the count from A: no reboot.
	ca, _ := w.a.Config(w.name)
	_, lastA, err := guest.SerialCounters(ca.Serial)
	if err != nil {
		t.Fatal(err)
	}
	cb, _ := w.b.Config(w.name)
	firstB, _, err := guest.SerialCounters(cb.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if firstB.BootID != lastA.BootID || firstB.Counter != lastA.Counter+1 {
		t.Fatalf("console: last at A %+v, first at B %+v; want the next count", lastA, firstB)
	}
	t.Logf("migrated: total %v, downtime %v, %d bytes, hook %v, %d progress reports; counter %d -> %d (console %d | %d)",
		stats.Total, stats.Downtime, stats.Bytes, stats.SwitchoverDone.Sub(stats.Switchover), progress.Load(),
		before.Counter, after.Counter, lastA.Counter, firstB.Counter)
}

func TestAbortMidMigration(t *testing.T) {
	w := newWorld(t, "abt", netip.MustParseAddr("10.1.0.32"))
	before := w.boot(t)
	vm, err := w.a.Lookup(w.ctx, w.name)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := w.b.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	pB := w.b.Process(w.name)
	if pB == nil {
		t.Fatal("no incoming instance at B after PrepareIncoming")
	}
	started := make(chan struct{})
	var once atomic.Bool
	res := make(chan error, 1)
	hookRan := atomic.Bool{}
	go func() {
		_, err := w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{
			MaxBandwidth: 1 << 20, // 1 MiB/s: the copy takes tens of seconds
			OnProgress: func(p hypervisor.Progress) {
				if p.Transferred > 0 && once.CompareAndSwap(false, true) {
					close(started)
				}
			},
			AtSwitchover: func(context.Context) error { hookRan.Store(true); return nil },
		})
		res <- err
	}()
	select {
	case <-started:
	case err := <-res:
		t.Fatalf("migration ended before it could be aborted: %v", err)
	}
	if err := w.a.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if err := <-res; !errors.Is(err, hypervisor.ErrAborted) {
		t.Fatalf("Migrate returned %v, want ErrAborted", err)
	}
	if hookRan.Load() {
		t.Fatal("switchover hook ran for an aborted migration")
	}
	if got, err := w.a.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at A after abort: %+v %v, want running", got, err)
	}
	s1, err := guest.Query(w.ctx, w.lab.A, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := guest.Echo(w.ctx, w.lab.Peer, w.addr, []byte("still at A")); err != nil {
		t.Fatal(err)
	}
	s2, err := guest.WaitCounter(w.ctx, w.lab.A, w.addr, s1.Counter)
	if err != nil {
		t.Fatal(err)
	}
	if s1.BootID != before.BootID || s2.BootID != before.BootID || !(before.Counter < s1.Counter && s1.Counter < s2.Counter) {
		t.Fatalf("guest at A: %+v, %+v, %+v: want one boot id and a growing counter", before, s1, s2)
	}
	// The target discards its unresumed instance (QEMU may have quit on
	// its own when the stream broke).
	if err := w.b.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if !pB.Exited() {
		t.Fatal("incoming QEMU at B still runs after Abort")
	}
	if _, err := w.b.Lookup(w.ctx, w.name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("lookup at B after abort: %v, want ErrNotFound", err)
	}
	// Nothing to abort: no-op.
	if err := w.b.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if err := w.a.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if got, err := w.a.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at A after no-op abort: %+v %v", got, err)
	}

	// A failing switchover hook cancels the migration at the last moment:
	// the VM runs on at A, the target never ran.
	ep, err = w.b.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	var hookSrc hypervisor.State
	_, err = w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{
		AtSwitchover: func(ctx context.Context) error {
			s, err := w.a.Lookup(ctx, w.name)
			hookSrc = s.State
			return errors.Join(err, errors.New("secure link not ready"))
		},
	})
	if !errors.Is(err, hypervisor.ErrSwitchoverHook) || !strings.Contains(err.Error(), "secure link not ready") {
		t.Fatalf("Migrate with a failing hook: %v, want ErrSwitchoverHook with the hook's error", err)
	}
	if hookSrc != hypervisor.Paused {
		t.Fatalf("source was %q inside the hook, want paused", hookSrc)
	}
	if got, err := w.a.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at A after hook failure: %+v %v, want running", got, err)
	}
	s3, err := guest.WaitCounter(w.ctx, w.lab.A, w.addr, s2.Counter)
	if err != nil || s3.BootID != before.BootID {
		t.Fatalf("guest at A after hook failure: %+v %v", s3, err)
	}
	if err := w.b.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if _, err := w.b.Lookup(w.ctx, w.name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("lookup at B after hook failure and abort: %v, want ErrNotFound", err)
	}
}

func TestBadInput(t *testing.T) {
	w := newWorld(t, "bad", netip.MustParseAddr("10.1.0.33"))
	before := w.boot(t)
	ctx := w.ctx

	if _, err := w.a.Lookup(ctx, "nosuchvm"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("Lookup(unknown): %v, want ErrNotFound", err)
	}
	if _, err := w.a.Lookup(ctx, "bad/name"); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("Lookup(bad/name): %v, want ErrInvalid", err)
	}
	if _, err := w.a.Migrate(ctx, "nosuchvm", hypervisor.Endpoint{URI: "tcp:203.0.113.1:4444"}, hypervisor.MigrateOptions{}); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("Migrate(unknown): %v, want ErrNotFound", err)
	}
	if err := w.a.Resume(ctx, "nosuchvm"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("Resume(unknown): %v, want ErrNotFound", err)
	}
	for _, uri := range []string{"", "tcp:", "tcp:203.0.113.1", "tcp:203.0.113.1:0", "tcp:203.0.113.1:99999", "exec:cat", "unix:/tmp/x"} {
		_, err := w.a.Migrate(ctx, w.name, hypervisor.Endpoint{URI: uri}, hypervisor.MigrateOptions{})
		if !errors.Is(err, hypervisor.ErrInvalid) || !strings.Contains(err.Error(), "URI") {
			t.Errorf("Migrate to %q: %v, want ErrInvalid naming the URI", uri, err)
		}
	}
	if _, err := w.a.Migrate(ctx, w.name, hypervisor.Endpoint{VM: "other", URI: "tcp:203.0.113.1:4444"}, hypervisor.MigrateOptions{}); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("Migrate with an endpoint for another VM: %v, want ErrInvalid", err)
	}
	// Unreachable target: B's underlay address, a port nobody listens on.
	_, err := w.a.Migrate(ctx, w.name, hypervisor.Endpoint{VM: w.name, URI: "tcp:203.0.113.1:9"}, hypervisor.MigrateOptions{
		AtSwitchover: func(context.Context) error { t.Error("hook ran"); return nil },
	})
	if !errors.Is(err, hypervisor.ErrUnreachable) {
		t.Errorf("Migrate to a closed port: %v, want ErrUnreachable", err)
	} else {
		t.Logf("unreachable: %v", err)
	}
	// A target that never answers (no host has 10.1.0.99 on A's bridge):
	// the caller's deadline ends the attempt, still ErrUnreachable.
	sctx, scancel := context.WithTimeout(ctx, time.Second)
	_, err = w.a.Migrate(sctx, w.name, hypervisor.Endpoint{URI: "tcp:10.1.0.99:4444"}, hypervisor.MigrateOptions{})
	scancel()
	if !errors.Is(err, hypervisor.ErrUnreachable) {
		t.Errorf("Migrate to a silent address: %v, want ErrUnreachable", err)
	}
	// PrepareIncoming: no device model defined, or one that does not match.
	vm, err := w.a.Lookup(ctx, w.name)
	if err != nil {
		t.Fatal(err)
	}
	other := vm
	other.Name = "undefined"
	if _, err := w.b.PrepareIncoming(ctx, other); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("PrepareIncoming(undefined): %v, want ErrInvalid", err)
	}
	big := vm
	big.MemoryBytes = 256 << 20
	if _, err := w.b.PrepareIncoming(ctx, big); !errors.Is(err, hypervisor.ErrInvalid) || !strings.Contains(err.Error(), "MemoryBytes") {
		t.Errorf("PrepareIncoming(256 MiB): %v, want ErrInvalid naming MemoryBytes", err)
	}
	if err := w.b.Define(qemu.Config{Name: "x"}); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("Define without kernel: %v, want ErrInvalid", err)
	}
	// Target already holds a VM of that name (started there directly).
	if _, err := w.b.Start(ctx, w.cfgB); err != nil {
		t.Fatal(err)
	}
	pB := w.b.Process(w.name)
	if _, err := w.b.PrepareIncoming(ctx, vm); !errors.Is(err, hypervisor.ErrExists) {
		t.Errorf("PrepareIncoming with the VM already on B: %v, want ErrExists", err)
	}
	// A second Hypervisor on the same state dir sees the live QEMU too.
	b2 := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(w.b.StateDir()))
	if err := b2.Define(w.cfgB); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.PrepareIncoming(ctx, vm); !errors.Is(err, hypervisor.ErrExists) {
		t.Errorf("PrepareIncoming on a second Hypervisor sharing B's state dir: %v, want ErrExists", err)
	}
	// Nothing changed: the VM at B is the same process, running; the one at A still runs the same boot.
	if got := w.b.Process(w.name); got != pB || got.Exited() {
		t.Error("the VM at B was replaced or stopped")
	}
	if got, err := w.a.Lookup(ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Errorf("lookup at A: %+v %v, want running", got, err)
	}
	s, err := guest.Query(ctx, w.lab.A, w.addr)
	if err != nil || s.BootID != before.BootID || s.Counter <= before.Counter {
		t.Errorf("guest at A: %+v %v (before %+v)", s, err, before)
	}
	if _, err := qemu.New(qemu.WithHost("sl-no-such-netns")); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("New(unknown host): %v, want ErrInvalid", err)
	}
}

// TestMigrateBackAtOnce: a guest that comes straight back to the host it
// just left gets a working port, although the old source QEMU (which
// quits in the background) may still be exiting with the same tap.
// Without the wait for it this fails in about one run of three.
func TestMigrateBackAtOnce(t *testing.T) {
	w := newWorld(t, "back", netip.MustParseAddr("10.1.0.42"))
	before := w.boot(t)
	if err := w.a.Define(w.cfgA); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ { // the race is timing-bound: several round trips
		w.hop(t, w.a, w.b)
		w.hop(t, w.b, w.a)
	}
	after, err := guest.WaitCounter(w.ctx, w.lab.A, w.addr, before.Counter)
	if err != nil {
		t.Fatalf("guest back at A after four hops: %v", err)
	}
	if after.BootID != before.BootID {
		t.Fatalf("guest rebooted: boot %s -> %s", before.BootID, after.BootID)
	}
}

// TestMonitorLostMidMigration: the source's QMP connection ends while the
// stream is copying. QEMU would go on migrating; Migrate reconnects to
// the monitor socket, cancels, and the VM runs on at A, managed as before.
func TestMonitorLostMidMigration(t *testing.T) {
	w := newWorld(t, "mon", netip.MustParseAddr("10.1.0.36"))
	before := w.boot(t)
	vm, err := w.a.Lookup(w.ctx, w.name)
	require.NoError(t, err)
	ep, err := w.b.PrepareIncoming(w.ctx, vm)
	require.NoError(t, err)
	p := w.a.Process(w.name)
	require.NotNil(t, p)
	lost := p.QMP()
	var once sync.Once
	_, err = w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{
		MaxBandwidth: 1 << 20, // 1 MiB/s: still copying when the connection goes
		OnProgress: func(pr hypervisor.Progress) {
			if pr.Transferred > 0 {
				once.Do(func() { lost.Close() })
			}
		},
		AtSwitchover: func(context.Context) error { t.Error("hook ran"); return nil },
	})
	require.ErrorIs(t, err, hypervisor.ErrMigration)
	assert.ErrorContains(t, err, "QMP connection lost")
	assert.NotSame(t, lost, p.QMP(), "the monitor was not replaced")
	var mi struct {
		Status string `json:"status"`
	}
	require.NoError(t, p.QMP().Execute(w.ctx, "query-migrate", nil, &mi))
	assert.Equal(t, "cancelled", mi.Status)
	got, err := w.a.Lookup(w.ctx, w.name)
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Running, got.State)
	s, err := guest.WaitCounter(w.ctx, w.lab.A, w.addr, before.Counter)
	require.NoError(t, err)
	assert.Equal(t, before.BootID, s.BootID)
	require.NoError(t, w.b.Abort(w.ctx, w.name))
}
