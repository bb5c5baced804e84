package libvirt_test

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/libvirt"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/libvirtd"
)

// world: a lab with a libvirt daemon on host A and one on host B. The
// daemons talk peer to peer over TCP across the underlay (A 10.255.1.1 →
// B 203.0.113.1:16512) and the migration data goes to tcp://203.0.113.1.
// This process reaches each daemon over its unix socket.
type world struct {
	lab    *lab.Lab
	a, b   *libvirt.Hypervisor
	da, db *libvirtd.Daemon
	spec   libvirt.DomainSpec
	name   string
	addr   netip.Addr
	ctx    context.Context
}

func newWorld(t testing.TB, name string, addr netip.Addr) *world {
	t.Helper()
	return newWorldTLS(t, name, addr, "", "")
}

// newWorldTLS is newWorld with the daemons' migrate_tls_x509_cert_dir set
// to tlsA (host A) and tlsB (host B) and both Hypervisors migrating
// WithTLS (if tlsA is set).
func newWorldTLS(t testing.TB, name string, addr netip.Addr, tlsA, tlsB string) *world {
	t.Helper()
	if os.Geteuid() != 0 {
		lab.Missing(t, "root (network namespaces)")
	}
	for _, bin := range []string{"qemu-system-x86_64", "/usr/sbin/libvirtd"} {
		if _, err := exec.LookPath(bin); err != nil {
			lab.Missing(t, bin+" (apt packages qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu)")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	w := &world{name: name, addr: addr, ctx: ctx}
	img, err := guest.Build(ctx)
	if err != nil {
		lab.Missing(t, err.Error())
	}
	w.lab = lab.New(t)
	cache, _ := os.UserCacheDir()
	start := func(host, listen, cacheName string, port, mig int, tlsDir string) *libvirtd.Daemon {
		d, err := libvirtd.Start(ctx, libvirtd.Options{Host: host, Dir: t.TempDir(), ListenAddr: listen,
			TCPPort: port, MigrationPortMin: mig, MigrationPortMax: mig + 31, MigrateTLSDir: tlsDir,
			CacheDir: filepath.Join(cache, "sealift-libvirtd", cacheName)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
			defer c()
			_ = d.Stop(sctx)
		})
		return d
	}
	w.da = start(w.lab.A, lab.AUplink.String(), "a", 16511, 49200, tlsA)
	w.db = start(w.lab.B, lab.BUnderlay.String(), "b", 16512, 49300, tlsB)
	connect := func(d *libvirtd.Daemon, host string) *libvirt.Hypervisor {
		opts := []libvirt.Option{libvirt.WithURI(d.URI), libvirt.WithPeerURI(d.TCPURI),
			libvirt.WithMigrateURI(d.MigrateURI), libvirt.WithHost(host)}
		if tlsA != "" {
			opts = append(opts, libvirt.WithTLS())
		}
		h, err := libvirt.New(opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	w.a = connect(w.da, w.lab.A)
	w.b = connect(w.db, w.lab.B)
	n := guest.Net{Addr: netip.PrefixFrom(addr, 24), Gateway: lab.Gateway}
	w.spec = libvirt.DomainSpec{Name: name, Kernel: img.Kernel, Initrd: img.Initrd, Cmdline: guest.Cmdline(n),
		Serial: filepath.Join(t.TempDir(), name+".serial"),
		NICs:   []libvirt.DomainNIC{{MAC: guest.MAC(addr), Bridge: "br0", Tap: "tap" + name}}}
	return w
}

func (w *world) boot(t testing.TB) guest.Status {
	t.Helper()
	if _, err := w.a.Start(w.ctx, w.spec); err != nil {
		t.Fatal(err)
	}
	s, err := guest.WaitReady(w.ctx, w.lab.A, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// qemuPids lists the QEMU processes running guest name.
func qemuPids(name string) []string {
	var pids []string
	ms, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range ms {
		b, err := os.ReadFile(m)
		if err != nil {
			continue
		}
		if strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), "guest="+name+",") {
			pids = append(pids, filepath.Base(filepath.Dir(m)))
		}
	}
	return pids
}

func TestMigrateAtoB(t *testing.T) {
	w := newWorld(t, "lvmig", netip.MustParseAddr("10.1.0.51"))
	before := w.boot(t)
	srcPids := qemuPids(w.name)
	if len(srcPids) != 1 {
		t.Fatalf("QEMU processes for %s before migration: %v", w.name, srcPids)
	}
	vm, err := w.a.Lookup(w.ctx, w.name)
	if err != nil || vm.State != hypervisor.Running || vm.MemoryBytes != 128<<20 || len(vm.NICs) != 1 || vm.NICs[0].MAC != guest.MAC(w.addr) {
		t.Fatalf("lookup at A: %+v %v", vm, err)
	}
	ep, err := w.b.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
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
			if err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
				return err
			}
			hookSrc = s.State // "" if the source is already gone
			d, err := w.b.Lookup(ctx, w.name)
			if err != nil {
				return err
			}
			hookDst = d.State
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if progress.Load() == 0 {
		t.Fatal("no progress report with the guest's memory size and bytes sent")
	}
	if hookSrc == hypervisor.Running || hookDst == hypervisor.Running || hookDst == "" {
		t.Fatalf("inside the hook: source %q, target %q; want neither running", hookSrc, hookDst)
	}
	if stats.Total <= 0 || stats.Downtime <= 0 || stats.Bytes == 0 || stats.Switchover.IsZero() || hookAt.Before(stats.Switchover) || stats.SwitchoverDone.Before(hookAt) {
		t.Fatalf("stats %+v (hook at %v)", stats, hookAt)
	}
	if _, err := w.a.Lookup(w.ctx, w.name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("lookup at A after migration: %v, want ErrNotFound", err)
	}
	for _, p := range srcPids {
		if _, err := os.Stat("/proc/" + p); !os.IsNotExist(err) {
			t.Fatalf("source QEMU pid %s still exists", p)
		}
	}
	if got, err := w.b.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Paused {
		t.Fatalf("lookup at B after migration: %+v %v, want paused", got, err)
	}
	resumedAt := time.Now()
	if err := w.b.Resume(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if !stats.SwitchoverDone.Before(resumedAt) {
		t.Fatal("hook finished after the target resumed")
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
	if err := guest.Echo(w.ctx, w.lab.B, w.addr, []byte("at B via libvirt")); err != nil {
		t.Fatal(err)
	}
	// One serial log, appended by A then B: the count never restarts.
	first, last, err := guest.SerialCounters(w.spec.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if first.BootID != last.BootID || last.Counter < after.Counter-1 {
		t.Fatalf("serial log: first %+v, last %+v, agent %+v", first, last, after)
	}
	t.Logf("migrated: total %v, downtime %v, %d bytes, hook %v (src %s, dst %s), %d progress reports; counter %d -> %d",
		stats.Total, stats.Downtime, stats.Bytes, stats.SwitchoverDone.Sub(stats.Switchover), hookSrc, hookDst,
		progress.Load(), before.Counter, after.Counter)
}

func TestAbortMidMigration(t *testing.T) {
	w := newWorld(t, "lvabt", netip.MustParseAddr("10.1.0.52"))
	before := w.boot(t)
	vm, err := w.a.Lookup(w.ctx, w.name)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := w.b.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	var once atomic.Bool
	res := make(chan error, 1)
	go func() {
		_, err := w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{
			MaxBandwidth: 1 << 20,
			OnProgress: func(p hypervisor.Progress) {
				if p.Transferred > 0 && once.CompareAndSwap(false, true) {
					close(started)
				}
			},
			AtSwitchover: func(context.Context) error { t.Error("hook ran for an aborted migration"); return nil },
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
	if got, err := w.a.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at A after abort: %+v %v, want running", got, err)
	}
	s, err := guest.WaitCounter(w.ctx, w.lab.A, w.addr, before.Counter)
	if err != nil || s.BootID != before.BootID {
		t.Fatalf("guest at A after abort: %+v %v (before %+v)", s, err, before)
	}
	if err := guest.Echo(w.ctx, w.lab.A, w.addr, []byte("still at A")); err != nil {
		t.Fatal(err)
	}
	if err := w.b.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if _, err := w.b.Lookup(w.ctx, w.name); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Fatalf("lookup at B after abort: %v, want ErrNotFound", err)
	}
	if err := w.a.Abort(w.ctx, w.name); err != nil {
		t.Fatalf("no-op abort: %v", err)
	}
	if got, err := w.a.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at A after no-op abort: %+v %v", got, err)
	}
}

func TestBadInput(t *testing.T) {
	w := newWorld(t, "lvbad", netip.MustParseAddr("10.1.0.53"))
	before := w.boot(t)
	ctx := w.ctx
	if _, err := w.a.Lookup(ctx, "nosuchvm"); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("Lookup(unknown): %v, want ErrNotFound", err)
	}
	if _, err := w.a.Migrate(ctx, "nosuchvm", hypervisor.Endpoint{URI: w.db.TCPURI}, hypervisor.MigrateOptions{}); !errors.Is(err, hypervisor.ErrNotFound) {
		t.Errorf("Migrate(unknown): %v, want ErrNotFound", err)
	}
	for _, uri := range []string{"", "tcp:1.2.3.4:5", "http://x/system", "qemu+tcp://203.0.113.1/nothing"} {
		if _, err := w.a.Migrate(ctx, w.name, hypervisor.Endpoint{URI: uri}, hypervisor.MigrateOptions{}); !errors.Is(err, hypervisor.ErrInvalid) {
			t.Errorf("Migrate to %q: %v, want ErrInvalid", uri, err)
		}
	}
	if _, err := w.a.Migrate(ctx, w.name, hypervisor.Endpoint{URI: w.db.TCPURI, MigrateURI: "udp://x"}, hypervisor.MigrateOptions{}); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("Migrate with MigrateURI udp://x: %v, want ErrInvalid", err)
	}
	// Unreachable target daemon: B's underlay address, a port with no daemon.
	_, err := w.a.Migrate(ctx, w.name, hypervisor.Endpoint{URI: "qemu+tcp://203.0.113.1:1/system"}, hypervisor.MigrateOptions{
		AtSwitchover: func(context.Context) error { t.Error("hook ran"); return nil },
	})
	if !errors.Is(err, hypervisor.ErrUnreachable) {
		t.Errorf("Migrate to a closed port: %v, want ErrUnreachable", err)
	} else {
		t.Logf("unreachable: %v", err)
	}
	// Target already holds a VM of that name.
	specB := w.spec
	specB.Serial = filepath.Join(t.TempDir(), "b.serial")
	if _, err := w.b.Start(ctx, specB); err != nil {
		t.Fatal(err)
	}
	vm, err := w.a.Lookup(ctx, w.name)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.b.PrepareIncoming(ctx, vm); !errors.Is(err, hypervisor.ErrExists) {
		t.Errorf("PrepareIncoming with the VM already on B: %v, want ErrExists", err)
	}
	// Migrating anyway (an endpoint obtained elsewhere) fails at the
	// target daemon and changes nothing.
	_, err = w.a.Migrate(ctx, w.name, hypervisor.Endpoint{URI: w.db.TCPURI, MigrateURI: w.db.MigrateURI}, hypervisor.MigrateOptions{})
	if !errors.Is(err, hypervisor.ErrExists) {
		t.Errorf("Migrate onto a host holding the name: %v, want ErrExists", err)
	}
	if got, err := w.b.Lookup(ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Errorf("VM at B: %+v %v, want running", got, err)
	}
	if got, err := w.a.Lookup(ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Errorf("VM at A: %+v %v, want running", got, err)
	}
	s, err := guest.WaitCounter(ctx, w.lab.A, w.addr, before.Counter)
	if err != nil || s.BootID != before.BootID {
		t.Errorf("guest at A: %+v %v (before %+v)", s, err, before)
	}
	if _, err := libvirt.New(); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("New without URI: %v, want ErrInvalid", err)
	}
	if _, err := (libvirt.DomainSpec{Name: "x"}).XML(); !errors.Is(err, hypervisor.ErrInvalid) {
		t.Errorf("DomainSpec without kernel: %v, want ErrInvalid", err)
	}
}
