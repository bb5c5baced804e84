package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/libvirt"
	"github.com/sealift/sealift/hypervisor/qemu"
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
}

// baselineHypervisors are QEMU handles at A and B on the baselines'
// network, one pair with a TLS migration stream and one without, each
// with its guest booted at A (and defined at B).
func (w *world) baselineHypervisors(ctx context.Context, t lab.TB) error {
	var err error
	pairs := []struct {
		a, b   **qemu.Hypervisor
		v      vmSpec
		tlsDir string
		sub    string
	}{{&w.btA, &w.btB, baseTLS, w.tlsDir, "bt"}, {&w.bpA, &w.bpB, basePlain, "", "bp"}}
	for _, p := range pairs {
		if *p.a, err = w.qemuHandle(t, w.l.A, p.sub+"a", baseUnderA, p.tlsDir); err != nil {
			return err
		}
		if *p.b, err = w.qemuHandle(t, w.l.B, p.sub+"b", baseUnderB, p.tlsDir); err != nil {
			return err
		}
		if err := (*p.b).Define(w.img.Config(p.v.name, p.v.net("tap"+p.sub+"2"))); err != nil {
			return err
		}
		if _, err := (*p.a).Start(ctx, w.img.Config(p.v.name, p.v.net("tap"+p.sub+"1"))); err != nil {
			return err
		}
	}
	return nil
}

func (w *world) qemuHandle(t lab.TB, host, sub string, mig netip.Addr, tlsDir string) (*qemu.Hypervisor, error) {
	opts := []qemu.Option{qemu.WithHost(host), qemu.WithStateDir(filepath.Join(w.dir, sub)),
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
	a, err := w.qemuHandle(t, w.l.A, "a", lab.AUplink, w.tlsDir)
	if err != nil {
		return nil, err
	}
	b, err := w.qemuHandle(t, w.l.B, "b", lab.BUnderlay, w.tlsDir)
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
	return &hypervisors{a: a, b: b, boot: boot, targetTap: func(i int) string { return fmt.Sprintf("tapb%d", i+1) }}, nil
}

// libvirtHypervisors: three real libvirt daemons (two in A's namespace,
// one in B's), driven through libvirt.org/go/libvirt.
func (w *world) libvirtHypervisors(ctx context.Context, t lab.TB) (*hypervisors, error) {
	cache, _ := os.UserCacheDir()
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
	return &hypervisors{a: a, b: b, boot: boot, targetTap: func(i int) string { return fmt.Sprintf("tapl%d", i+1) }}, nil
}

// watchResume reports when the incoming guest name at B resumed, from
// QEMU's own RESUME event (its timestamp is QEMU's clock); nothing for
// libvirt (whose lifecycle events the lab does not watch). Call it once
// the incoming instance exists (after block 315).
func (w *world) watchResume(name string) <-chan time.Time {
	qh, ok := w.hv.b.(*qemu.Hypervisor)
	if !ok {
		return nil
	}
	p := qh.Process(name)
	if p == nil {
		return nil
	}
	events, unsub := p.QMP.Subscribe()
	ch := make(chan time.Time, 1)
	go func() {
		defer unsub()
		timeout := time.After(2 * time.Minute)
		for {
			select {
			case e, ok := <-events:
				if !ok {
					return
				}
				if e.Name == "RESUME" {
					ch <- e.Time
					return
				}
			case <-timeout:
				return
			}
		}
	}()
	return ch
}
