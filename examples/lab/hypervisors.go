package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	golibvirt "libvirt.org/go/libvirt"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/libvirt"
	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/hypervisor/qemu/qmp"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/libvirtd"
)

// hypervisors are the lab's hypervisor handles: the secure migration's
// source (A) and target (B), both with a TLS-encrypted migration stream,
// and two plain QEMU handles in A for the insecure baseline.
type hypervisors struct {
	a, b hypervisor.Hypervisor
	// boot starts guest v (the i-th) at A.
	boot func(ctx context.Context, i int, v vmSpec) error
	// targetTap is the i-th guest's port at B.
	targetTap func(i int) string
	// baseline makes a pair of handles (A, B) of the same backend on the
	// baselines' network, with a TLS stream or not, and boots v at A.
	// tap is v's port at B.
	baseline func(ctx context.Context, t lab.TB, v vmSpec, tls bool) (a, b hypervisor.Hypervisor, tap string, err error)
	// watch reports when the incoming guest name on target handle h
	// resumes (nil if it cannot tell). Call it once the incoming instance
	// exists (after PrepareIncoming, block 315).
	watch func(h hypervisor.Hypervisor, name string) <-chan time.Time
	// stop stops guest name at B (its QEMU gone), nil if the backend
	// cannot (libvirt).
	stop func(ctx context.Context, name string) error
}

// qemuBaseline: QEMU handles at A and B whose migration stream goes over
// the baselines' network.
func (w *world) qemuBaseline(ctx context.Context, t lab.TB, v vmSpec, tls bool) (hypervisor.Hypervisor, hypervisor.Hypervisor, string, error) {
	sub, dirA, dirB := "bp", "", ""
	if tls {
		sub, dirA, dirB = "bt", w.tlsDirA, w.tlsDirB
	}
	a, err := w.qemuHandle(t, w.l.A, sub+"a", baseUnderA, dirA)
	if err != nil {
		return nil, nil, "", err
	}
	b, err := w.qemuHandle(t, w.l.B, sub+"b", baseUnderB, dirB)
	if err != nil {
		return nil, nil, "", err
	}
	tap := "tap" + sub + "2"
	if err := b.Define(w.img.Config(v.name, v.net(tap))); err != nil {
		return nil, nil, "", err
	}
	_, err = a.Start(ctx, w.img.Config(v.name, v.net("tap"+sub+"1")))
	return a, b, tap, err
}

func (w *world) qemuHandle(t lab.TB, host, sub string, mig netip.Addr, tlsDir string) (*qemu.Hypervisor, error) {
	return w.qemuHandleIn(t, host, filepath.Join(w.dir, sub), mig, tlsDir)
}

// qemuHandleIn is a QEMU handle on host with its state in dir.
func (w *world) qemuHandleIn(t lab.TB, host, dir string, mig netip.Addr, tlsDir string) (*qemu.Hypervisor, error) {
	opts := []qemu.Option{qemu.WithHost(host), qemu.WithStateDir(dir),
		qemu.WithMigrationAddr(mig), qemu.WithLogger(w.log)}
	if tlsDir != "" {
		opts = append(opts, qemu.WithTLS(tlsDir))
	}
	h, err := qemu.New(opts...)
	if err == nil {
		t.Cleanup(func() { h.Close() })
	}
	return h, err
}

// qemuHypervisors: QEMU processes driven over QMP (hypervisor/qemu).
func (w *world) qemuHypervisors(t lab.TB) (*hypervisors, error) {
	a, err := w.qemuHandle(t, w.l.A, "a", w.underA(), w.tlsDirA)
	if err != nil {
		return nil, err
	}
	b, err := w.qemuHandle(t, w.l.B, "b", w.underB(), w.tlsDirB)
	if err != nil {
		return nil, err
	}
	boot := func(ctx context.Context, i int, v vmSpec) error {
		// The target needs the device model, with its own tap.
		if err := b.Define(w.img.Config(v.name, v.net(fmt.Sprintf("tapb%d", i+1)))); err != nil {
			return err
		}
		_, err := a.Start(ctx, w.img.Config(v.name, v.net(fmt.Sprintf("tapa%d", i+1))))
		return err
	}
	return &hypervisors{a: a, b: b, boot: boot, targetTap: func(i int) string { return fmt.Sprintf("tapb%d", i+1) },
		baseline: w.qemuBaseline, watch: w.watchResume, stop: b.Stop}, nil
}

// libvirtHypervisors: three real libvirt daemons (two in A's namespace,
// one in B's), driven through libvirt.org/go/libvirt.
func (w *world) libvirtHypervisors(ctx context.Context, t lab.TB) (*hypervisors, error) {
	cache, _ := os.UserCacheDir()
	daemons := map[string]*libvirtd.Daemon{}
	start := func(host, listen, name string, port, mig int) (*libvirt.Hypervisor, error) {
		d, err := libvirtd.Start(ctx, libvirtd.Options{Host: host, Dir: filepath.Join(w.dir, "lv-"+name), ListenAddr: listen,
			TCPPort: port, MigrationPortMin: mig, MigrationPortMax: mig + 31, Logger: w.log,
			CacheDir: filepath.Join(cache, "sealift-libvirtd", "lab-"+name), MigrateTLSDir: w.tlsDir})
		if err != nil {
			return nil, fmt.Errorf("libvirtd %s: %w", name, err)
		}
		t.Cleanup(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 30e9)
			defer cancel()
			_ = d.Stop(sctx)
		})
		daemons[name] = d
		h, err := libvirt.New(libvirt.WithURI(d.URI), libvirt.WithPeerURI(d.TCPURI),
			libvirt.WithMigrateURI(d.MigrateURI), libvirt.WithHost(host), libvirt.WithLogger(w.log), libvirt.WithTLS())
		if err != nil {
			return nil, err
		}
		t.Cleanup(func() { h.Close() })
		return h, nil
	}
	a, err := start(w.l.A, lab.AUplink.String(), "a", 16521, 49500)
	if err != nil {
		return nil, err
	}
	b, err := start(w.l.B, lab.BUnderlay.String(), "b", 16523, 49700)
	if err != nil {
		return nil, err
	}
	boot := func(ctx context.Context, i int, v vmSpec) error {
		n := v.net(fmt.Sprintf("tapl%d", i+1))
		_, err := a.Start(ctx, libvirt.DomainSpec{Name: v.name, Kernel: w.img.Kernel, Initrd: w.img.Initrd,
			Cmdline: guest.Cmdline(n), Serial: filepath.Join(w.dir, v.name+".serial"),
			NICs: []libvirt.DomainNIC{{MAC: n.MAC, Bridge: "br0", Tap: n.Tap}}})
		return err
	}
	// The baselines: handles on the same daemons whose data stream goes
	// to B's address on the baselines' network (the daemons' own control
	// connection stays on the wan).
	baseline := func(ctx context.Context, t lab.TB, v vmSpec, tls bool) (hypervisor.Hypervisor, hypervisor.Hypervisor, string, error) {
		handle := func(host, name, migrate string) (*libvirt.Hypervisor, error) {
			d := daemons[name]
			opts := []libvirt.Option{libvirt.WithURI(d.URI), libvirt.WithPeerURI(d.TCPURI),
				libvirt.WithMigrateURI(migrate), libvirt.WithHost(host), libvirt.WithLogger(w.log)}
			if tls {
				opts = append(opts, libvirt.WithTLS())
			}
			h, err := libvirt.New(opts...)
			if err == nil {
				t.Cleanup(func() { h.Close() })
			}
			return h, err
		}
		ba, err := handle(w.l.A, "a", "tcp://"+baseUnderA.String())
		if err != nil {
			return nil, nil, "", err
		}
		bb, err := handle(w.l.B, "b", "tcp://"+baseUnderB.String())
		if err != nil {
			return nil, nil, "", err
		}
		n := v.net("tapl" + v.name[len(v.name)-3:])
		_, err = ba.Start(ctx, libvirt.DomainSpec{Name: v.name, Kernel: w.img.Kernel, Initrd: w.img.Initrd,
			Cmdline: guest.Cmdline(n), Serial: filepath.Join(w.dir, v.name+".serial"),
			NICs: []libvirt.DomainNIC{{MAC: n.MAC, Bridge: v.bridge, Tap: n.Tap}}})
		return ba, bb, n.Tap, err
	}
	rw, err := watchLifecycle(daemons["b"].URI)
	if err != nil {
		return nil, err
	}
	t.Cleanup(rw.close)
	return &hypervisors{a: a, b: b, boot: boot, targetTap: func(i int) string { return fmt.Sprintf("tapl%d", i+1) },
		baseline: baseline, watch: func(_ hypervisor.Hypervisor, name string) <-chan time.Time { return rw.wait(name) }}, nil
}

// watchResume reports when the incoming guest name on QEMU handle h
// resumed, from QEMU's own RESUME event (its timestamp is QEMU's clock).
func (w *world) watchResume(h hypervisor.Hypervisor, name string) <-chan time.Time {
	qh, ok := h.(*qemu.Hypervisor)
	if !ok {
		return nil
	}
	p := qh.Process(name)
	if p == nil {
		return nil
	}
	events, unsub := p.QMP().Subscribe()
	ch := make(chan time.Time, 1)
	go func() {
		defer unsub()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		w.awaitResume(ctx, events, ch)
	}()
	return ch
}

// awaitResume sends on ch the time of QEMU's RESUME event among events
// (noting the target's load on the way), unless ctx ends first.
func (w *world) awaitResume(ctx context.Context, events <-chan qmp.Event, ch chan<- time.Time) {
	for {
		select {
		case e, ok := <-events:
			if !ok {
				return
			}
			w.noteLoaded(e)
			if e.Name == "RESUME" {
				ch <- e.Time
				return
			}
		case <-ctx.Done():
			return
		}
	}
}

// lifecycleWatcher hears a libvirt daemon's "resumed" lifecycle events
// (timed when the event arrives: libvirt's events carry no timestamp).
type lifecycleWatcher struct {
	conn    *golibvirt.Connect
	id      int
	mu      sync.Mutex
	waiters map[string]chan time.Time
}

func watchLifecycle(uri string) (*lifecycleWatcher, error) {
	c, err := golibvirt.NewConnect(uri)
	if err != nil {
		return nil, fmt.Errorf("libvirt %s: %w", uri, err)
	}
	w := &lifecycleWatcher{conn: c, waiters: map[string]chan time.Time{}}
	w.id, err = c.DomainEventLifecycleRegister(nil, func(_ *golibvirt.Connect, d *golibvirt.Domain, ev *golibvirt.DomainEventLifecycle) {
		at := time.Now()
		if ev.Event != golibvirt.DOMAIN_EVENT_RESUMED {
			return
		}
		name, err := d.GetName()
		if err != nil {
			return
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if ch, ok := w.waiters[name]; ok {
			delete(w.waiters, name)
			ch <- at
		}
	})
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("libvirt %s: lifecycle events: %w", uri, err)
	}
	return w, nil
}

func (w *lifecycleWatcher) wait(name string) <-chan time.Time {
	ch := make(chan time.Time, 1)
	w.mu.Lock()
	w.waiters[name] = ch
	w.mu.Unlock()
	return ch
}

func (w *lifecycleWatcher) close() {
	_ = w.conn.DomainEventDeregister(w.id)
	w.conn.Close()
}

// noteLoaded records when the incoming QEMU at B said its migration had
// completed (its MIGRATION event: the whole VM loaded, ready to resume).
func (w *world) noteLoaded(e qmp.Event) {
	if e.Name != "MIGRATION" {
		return
	}
	var d struct {
		Status string `json:"status"`
	}
	if json.Unmarshal(e.Data, &d) == nil && d.Status == "completed" {
		w.loaded.Store(e.Time)
	}
}
