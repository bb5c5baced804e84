package libvirt_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	golibvirt "libvirt.org/go/libvirt"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/libvirt"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/libvirtd"
)

// hop moves the guest through the contract and returns prepare → resumed.
func (w *world) hop(b *testing.B, from, to *libvirt.Hypervisor) (time.Duration, hypervisor.Stats) {
	t0 := time.Now()
	vm, err := from.Lookup(w.ctx, w.name)
	if err != nil {
		b.Fatal(err)
	}
	ep, err := to.PrepareIncoming(w.ctx, vm)
	if err != nil {
		b.Fatal(err)
	}
	st, err := from.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	if err := to.Resume(w.ctx, w.name); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0), st
}

// rawHop moves the guest with the bare binding: one MigrateToURI3 with
// the same flags and URIs, then Resume at the target.
func (w *world) rawHop(b *testing.B, from, to *libvirt.Hypervisor, dst *libvirtd.Daemon) time.Duration {
	t0 := time.Now()
	d, err := from.Conn().LookupDomainByName(w.name)
	if err != nil {
		b.Fatal(err)
	}
	defer d.Free()
	p := &golibvirt.DomainMigrateParameters{URISet: true, URI: dst.MigrateURI, ListenAddressSet: true, ListenAddress: dst.MigrateURI[len("tcp://"):]}
	if err := d.MigrateToURI3(dst.TCPURI, p, golibvirt.MIGRATE_LIVE|golibvirt.MIGRATE_PEER2PEER|golibvirt.MIGRATE_PAUSED); err != nil {
		b.Fatal(err)
	}
	t, err := to.Conn().LookupDomainByName(w.name)
	if err != nil {
		b.Fatal(err)
	}
	defer t.Free()
	if err := t.Resume(); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// BenchmarkMigrate moves a 128 MiB guest between the daemons of hosts A
// and B once per iteration (sealift's contract calls, no-op hook).
func BenchmarkMigrate(b *testing.B) {
	w := newWorld(b, "lvbm", netip.MustParseAddr("10.1.0.54"))
	w.boot(b)
	hs := [2]*libvirt.Hypervisor{w.a, w.b}
	var total, down, e2e time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, st := w.hop(b, hs[i%2], hs[(i+1)%2])
		e2e += d
		total += st.Total
		down += st.Downtime
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(total.Milliseconds())/n, "total-ms")
	b.ReportMetric(float64(down.Milliseconds())/n, "downtime-ms")
	b.ReportMetric(float64(e2e.Milliseconds())/n, "e2e-ms")
	if _, err := guest.WaitReady(w.ctx, []string{w.lab.A, w.lab.B}[b.N%2], w.addr); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkOverhead alternates sealift hops and bare-binding hops of the
// same guest (directions swapped every iteration) and reports the ratio.
func BenchmarkOverhead(b *testing.B) {
	w := newWorld(b, "lvov", netip.MustParseAddr("10.1.0.55"))
	w.boot(b)
	hs := [2]*libvirt.Hypervisor{w.a, w.b}
	ds := [2]*libvirtd.Daemon{w.da, w.db}
	var sl, raw time.Duration
	at := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for k := 0; k < 2; k++ {
			if (i+k)%2 == 0 {
				d, _ := w.hop(b, hs[at], hs[1-at])
				sl += d
			} else {
				raw += w.rawHop(b, hs[at], hs[1-at], ds[1-at])
			}
			at = 1 - at
		}
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(sl.Milliseconds())/n, "sealift-ms")
	b.ReportMetric(float64(raw.Milliseconds())/n, "raw-ms")
	b.ReportMetric(float64(sl)/float64(raw), "overhead-ratio")
	if _, err := guest.WaitReady(w.ctx, []string{w.lab.A, w.lab.B}[at], w.addr); err != nil {
		b.Fatal(err)
	}
}
