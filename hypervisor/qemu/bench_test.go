package qemu_test

import (
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
)

// hop migrates w's guest from one Hypervisor to the other through the
// contract (PrepareIncoming, Migrate with a no-op switchover hook, Resume)
// and returns the time from PrepareIncoming to a running target.
func (w *world) hop(b testing.TB, from, to *qemu.Hypervisor) (time.Duration, hypervisor.Stats) {
	t0 := time.Now()
	vm, err := from.Lookup(w.ctx, w.name)
	if err != nil {
		b.Fatal(err)
	}
	ep, err := to.PrepareIncoming(w.ctx, vm)
	if err != nil {
		b.Fatal(err)
	}
	st, err := from.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{
		AtSwitchover: func(context.Context) error { return nil },
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := to.Resume(w.ctx, w.name); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0), st
}

// BenchmarkMigrate moves a 128 MiB guest between hosts A and B (across
// the underlay) once per iteration and reports QEMU's total time and
// downtime and sealift's end-to-end time (prepare → resumed).
func BenchmarkMigrate(b *testing.B) {
	benchHops(b, newWorld(b, "bm", netip.MustParseAddr("10.1.0.41")))
}

// benchHops boots w's guest at A and moves it A<->B once per iteration,
// reporting QEMU's total time and downtime, the end-to-end time and the
// bytes sent; the guest must survive every hop.
func benchHops(b *testing.B, w *world) {
	w.boot(b)
	if err := w.a.Define(w.cfgA); err != nil {
		b.Fatal(err)
	}
	hs := [2]*qemu.Hypervisor{w.a, w.b}
	var total, down, e2e time.Duration
	var bytes uint64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, st := w.hop(b, hs[i%2], hs[(i+1)%2])
		e2e += d
		total += st.Total
		down += st.Downtime
		bytes += st.Bytes
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(total.Milliseconds())/n, "total-ms")
	b.ReportMetric(float64(down.Milliseconds())/n, "downtime-ms")
	b.ReportMetric(float64(e2e.Milliseconds())/n, "e2e-ms")
	b.ReportMetric(float64(bytes)/n/(1<<20), "MiB-sent")
	if _, err := guest.WaitReady(w.ctx, []string{w.lab.A, w.lab.B}[b.N%2], w.addr); err != nil {
		b.Fatal(err)
	}
}

// rawGuest is a second guest moved with plain QMP commands only: the
// baseline sealift's overhead is measured against.
type rawGuest struct {
	cur      *qemu.Process
	hosts    [2]string
	addrs    [2]netip.Addr
	dirs     [2]string
	cfg      qemu.Config
	at       int
	ctx      context.Context
	addr     netip.Addr
	bytes    uint64
	downtime time.Duration
}

func (r *rawGuest) hop(b *testing.B) time.Duration {
	ctx := r.ctx
	to := 1 - r.at
	t0 := time.Now()
	dst, err := qemu.Launch(ctx, r.cfg, qemu.LaunchOptions{Host: r.hosts[to], StateDir: r.dirs[to], Incoming: true})
	if err != nil {
		b.Fatal(err)
	}
	must(b, dst.QMP().Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": []any{map[string]any{"capability": "events", "state": true}}}, nil))
	must(b, dst.QMP().Execute(ctx, "migrate-incoming", map[string]any{"uri": "tcp:" + net.JoinHostPort(r.addrs[to].String(), "0")}, nil))
	var mi struct {
		Status        string `json:"status"`
		Downtime      int64  `json:"downtime"`
		SocketAddress []struct {
			Host, Port string
		} `json:"socket-address"`
		RAM struct {
			Transferred uint64 `json:"transferred"`
		} `json:"ram"`
	}
	must(b, dst.QMP().Execute(ctx, "query-migrate", nil, &mi))
	uri := "tcp:" + net.JoinHostPort(mi.SocketAddress[0].Host, mi.SocketAddress[0].Port)
	src := r.cur
	events, unsub := src.QMP().Subscribe()
	must(b, src.QMP().Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": []any{map[string]any{"capability": "events", "state": true}}}, nil))
	must(b, src.QMP().Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": uint64(100 << 30)}, nil))
	must(b, src.QMP().Execute(ctx, "migrate", map[string]any{"uri": uri}, nil))
	for done := false; !done; {
		ev := <-events
		if ev.Name != "MIGRATION" {
			continue
		}
		var d struct{ Status string }
		_ = json.Unmarshal(ev.Data, &d)
		switch d.Status {
		case "completed":
			done = true
		case "failed", "cancelled":
			b.Fatalf("raw migration %s", d.Status)
		}
	}
	unsub()
	dstEvents, dunsub := dst.QMP().Subscribe()
	for {
		st, err := dst.Status(ctx)
		must(b, err)
		if st != "inmigrate" {
			break
		}
		select {
		case <-dstEvents:
		case <-time.After(20 * time.Millisecond):
		}
	}
	dunsub()
	must(b, dst.QMP().Execute(ctx, "cont", nil, nil))
	d := time.Since(t0) // the target runs: what sealift's hop measures too
	for i := 0; i < 100 && mi.Downtime == 0; i++ {
		must(b, src.QMP().Execute(ctx, "query-migrate", nil, &mi))
		time.Sleep(10 * time.Millisecond)
	}
	r.downtime += time.Duration(mi.Downtime) * time.Millisecond
	r.bytes += mi.RAM.Transferred
	must(b, src.Quit(ctx))
	r.cur, r.at = dst, to
	return d
}

func must(b *testing.B, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}

// BenchmarkOverhead interleaves, in one run, a sealift hop of one 128 MiB
// guest (PrepareIncoming, Migrate with a switchover hook, Resume) and a
// raw QMP hop of an identical guest (launch -incoming defer,
// migrate-incoming, migrate, wait, cont) and reports the ratio of their
// end-to-end times (prepare → target running).
func BenchmarkOverhead(b *testing.B) {
	w := newWorld(b, "ov", netip.MustParseAddr("10.1.0.42"))
	w.boot(b)
	if err := w.a.Define(w.cfgA); err != nil {
		b.Fatal(err)
	}
	raddr := netip.MustParseAddr("10.1.0.43")
	r := &rawGuest{hosts: [2]string{w.lab.A, w.lab.B}, addrs: [2]netip.Addr{lab.AUplink, lab.BUnderlay},
		dirs: [2]string{b.TempDir(), b.TempDir()}, ctx: w.ctx, addr: raddr,
		cfg: w.img.Config("raw", guest.Net{Addr: netip.PrefixFrom(raddr, 24), Gateway: lab.Gateway,
			MAC: guest.MAC(raddr), Tap: "tapraw", Bridge: "br0"})}
	p, err := qemu.Launch(w.ctx, r.cfg, qemu.LaunchOptions{Host: w.lab.A, StateDir: r.dirs[0]})
	if err != nil {
		b.Fatal(err)
	}
	r.cur = p
	b.Cleanup(func() { r.cur.Kill() })
	if _, err := guest.WaitReady(w.ctx, w.lab.A, raddr); err != nil {
		b.Fatal(err)
	}
	hs := [2]*qemu.Hypervisor{w.a, w.b}
	var sl, raw, slDown time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, st := w.hop(b, hs[i%2], hs[(i+1)%2])
		sl += d
		slDown += st.Downtime
		raw += r.hop(b)
	}
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(sl.Milliseconds())/n, "sealift-ms")
	b.ReportMetric(float64(raw.Milliseconds())/n, "raw-ms")
	b.ReportMetric(float64(sl)/float64(raw), "overhead-ratio")
	b.ReportMetric(float64(slDown.Milliseconds())/n, "sealift-downtime-ms")
	b.ReportMetric(float64(r.downtime.Milliseconds())/n, "raw-downtime-ms")
	if _, err := guest.WaitReady(w.ctx, r.hosts[r.at], raddr); err != nil {
		b.Fatal(err)
	}
}
