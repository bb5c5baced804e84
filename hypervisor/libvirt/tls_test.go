package libvirt_test

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/libvirt"
	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
)

// tlsMarker is written into the guest's memory before it migrates; a
// capture on the wan looks for it in clear.
var tlsMarker = []byte("SEALIFT-LIBVIRT-TLS-MARKER-9a07")

// copyTLS copies the credentials files of dir from into dir to (0600).
func copyTLS(t testing.TB, from, to string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{migtls.CACert, migtls.ServerCert, migtls.ServerKey, migtls.ClientCert, migtls.ClientKey} {
		b, err := os.ReadFile(filepath.Join(from, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, f), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// fillMarker puts many copies of the marker into the guest's memory: 1 MiB
// echoed once, then 8 connections from namespace from with up to 256 KiB
// each left unread (the echoes sit in the guest's socket queues). from
// must reach the guest without crossing the wan.
func fillMarker(t testing.TB, ctx context.Context, from string, addr netip.Addr) {
	t.Helper()
	payload := bytes.Repeat(tlsMarker, 4096/len(tlsMarker))
	n, err := lab.SendTCP(from, netip.AddrPortFrom(addr, guest.EchoPort).String(), payload, 256)
	if err != nil || n != 256 {
		t.Fatalf("marker through the guest's echo: %d of 256 replies: %v", n, err)
	}
	held := 0
	for i := 0; i < 8; i++ {
		c, err := guest.Dial(ctx, from, addr, guest.EchoPort)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		_ = c.SetWriteDeadline(time.Now().Add(300 * time.Millisecond))
		for sent := 0; sent < 256<<10; sent += len(payload) {
			if _, err := c.Write(payload); err != nil {
				break
			}
			held += len(payload)
		}
	}
	if held < 256<<10 {
		t.Fatalf("the guest took only %d bytes of marker on its held connections", held)
	}
}

// migrateCaptured migrates name between the Hypervisors while counting
// frames on the wan (its interface towards B), then resumes it.
func migrateCaptured(t testing.TB, ctx context.Context, l *lab.Lab, from, to *libvirt.Hypervisor, name string) (hypervisor.Stats, lab.CaptureStats) {
	t.Helper()
	vm, err := from.Lookup(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := to.PrepareIncoming(ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	capture, err := lab.StartCapture(l.WAN, "b0", tlsMarker)
	if err != nil {
		t.Fatal(err)
	}
	stats, err := from.Migrate(ctx, name, ep, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error { return nil }})
	cs := capture.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if err := to.Resume(ctx, name); err != nil {
		t.Fatal(err)
	}
	return stats, cs
}

// TestMigrateTLS: with VIR_MIGRATE_TLS (each daemon's qemu.conf naming a
// credentials directory), a target holding another CA's credentials is
// refused and the guest runs on at A; with matching credentials the guest
// migrates A→B and no frame on the wan carries the marker it holds. Then
// it migrates back B→A without the flag (the control): the capture must
// find the marker.
func TestMigrateTLS(t *testing.T) {
	addrs := []netip.Addr{lab.AUplink, lab.BUnderlay}
	dirA, dirB := filepath.Join(t.TempDir(), "tls"), filepath.Join(t.TempDir(), "tls")
	if err := migtls.NewDir(dirA, addrs); err != nil {
		t.Fatal(err)
	}
	copyTLS(t, dirA, dirB)
	w := newWorldTLS(t, "lvtls", netip.MustParseAddr("10.1.0.55"), dirA, dirB)
	if !w.a.TLS() || !w.b.TLS() {
		t.Fatal("WithTLS not reported by TLS()")
	}
	before := w.boot(t)

	// B's credentials replaced by another CA's (QEMU loads them per
	// migration): the peers reject each other, the guest stays at A.
	if err := migtls.NewDir(dirB, addrs); err != nil {
		t.Fatal(err)
	}
	vm, err := w.a.Lookup(w.ctx, w.name)
	if err != nil {
		t.Fatal(err)
	}
	ep, err := w.b.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error {
		t.Error("switchover hook ran for a target of another CA")
		return nil
	}})
	if !errors.Is(err, hypervisor.ErrMigration) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("TLS migration to a daemon with another CA's credentials: %v, want ErrMigration about the certificate", err)
	}
	t.Logf("target of another CA: %v", err)
	if err := w.b.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if got, err := w.a.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at A after the refused target: %+v %v, want running", got, err)
	}
	if s, err := guest.WaitCounter(w.ctx, w.lab.A, w.addr, before.Counter); err != nil || s.BootID != before.BootID {
		t.Fatalf("guest at A after the refused target: %+v %v", s, err)
	}
	copyTLS(t, dirA, dirB)

	fillMarker(t, w.ctx, w.lab.Peer, w.addr)
	stats, cs := migrateCaptured(t, w.ctx, w.lab, w.a, w.b, w.name)
	t.Logf("TLS A→B: total %v, downtime %v, %d bytes; wan %d frames (%d TCP), %d with the marker, %d dropped",
		stats.Total, stats.Downtime, stats.Bytes, cs.Frames, cs.ByProto[6], cs.Marker, cs.Dropped)
	if cs.Dropped != 0 {
		t.Fatalf("capture dropped %d frames: cannot judge", cs.Dropped)
	}
	if cs.ByProto[6] < 100 {
		t.Fatalf("only %d TCP frames on the wan: the stream did not cross it", cs.ByProto[6])
	}
	if cs.Marker != 0 {
		t.Fatalf("%d frames on the wan carry the marker in clear during a TLS migration", cs.Marker)
	}
	after, err := guest.WaitReady(w.ctx, w.lab.B, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	if after.BootID != before.BootID || after.Counter <= before.Counter {
		t.Fatalf("guest before %+v, after %+v: want same boot id and a larger counter", before, after)
	}

	// The control: plain connections to the same daemons, B→A. Host B
	// reaches the guest on its own bridge (no wan hop).
	plain := func(uri, peer, mig, host string) *libvirt.Hypervisor {
		h, err := libvirt.New(libvirt.WithURI(uri), libvirt.WithPeerURI(peer), libvirt.WithMigrateURI(mig), libvirt.WithHost(host))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.Close() })
		return h
	}
	pa := plain(w.da.URI, w.da.TCPURI, w.da.MigrateURI, w.lab.A)
	pb := plain(w.db.URI, w.db.TCPURI, w.db.MigrateURI, w.lab.B)
	fillMarker(t, w.ctx, w.lab.B, w.addr)
	pstats, pcs := migrateCaptured(t, w.ctx, w.lab, pb, pa, w.name)
	t.Logf("plain B→A: total %v, downtime %v, %d bytes; wan %d frames (%d TCP), %d with the marker, %d dropped",
		pstats.Total, pstats.Downtime, pstats.Bytes, pcs.Frames, pcs.ByProto[6], pcs.Marker, pcs.Dropped)
	if pcs.Marker == 0 {
		t.Fatal("no frame on the wan carries the marker during a plain migration: the check cannot fail")
	}
	back, err := guest.WaitReady(w.ctx, w.lab.A, w.addr)
	if err != nil || back.BootID != before.BootID || back.Counter <= after.Counter {
		t.Fatalf("guest back at A: %+v %v (at B %+v)", back, err, after)
	}
}

// BenchmarkMigrateTLS moves a 128 MiB guest between the daemons of A and
// B once per iteration, without and with VIR_MIGRATE_TLS, and reports
// libvirt's total time and downtime and sealift's end-to-end time.
func BenchmarkMigrateTLS(b *testing.B) {
	for _, tc := range []struct {
		name, addr string
		tls        bool
	}{{"plain", "10.1.0.56", false}, {"tls", "10.1.0.57", true}} {
		b.Run(tc.name, func(b *testing.B) {
			dir := ""
			if tc.tls {
				dir = filepath.Join(b.TempDir(), "tls")
				if err := migtls.NewDir(dir, []netip.Addr{lab.AUplink, lab.BUnderlay}); err != nil {
					b.Fatal(err)
				}
			}
			w := newWorldTLS(b, "lvb"+tc.name[:1], netip.MustParseAddr(tc.addr), dir, dir)
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
		})
	}
}
