package qemu_test

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

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
)

// tlsMarker is written into a guest's memory (through its echo service)
// before it migrates; a capture on the wan looks for it in clear.
var tlsMarker = []byte("SEALIFT-QEMU-TLS-MARKER-c41d9e")

// hostAddrs are the migration addresses of hosts A and B in the lab.
var hostAddrs = []netip.Addr{lab.AUplink, lab.BUnderlay}

func newTLSDir(t testing.TB, addrs []netip.Addr) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	if err := migtls.NewDir(dir, addrs); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestWithTLS: a bad credentials directory (package migtls tests each
// kind) is refused by WithTLS and Launch, naming the file, before
// anything starts.
func TestWithTLS(t *testing.T) {
	dir := newTLSDir(t, hostAddrs)
	h, err := qemu.New(qemu.WithTLS(dir))
	require.NoError(t, err)
	assert.Equal(t, dir, h.TLSDir())

	_, err = qemu.New(qemu.WithTLS(""))
	assert.ErrorIs(t, err, hypervisor.ErrInvalid, `WithTLS("")`)
	noCA := t.TempDir()
	for _, f := range []string{migtls.ServerCert, migtls.ServerKey, migtls.ClientCert, migtls.ClientKey} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(noCA, f), b, 0o600))
	}
	_, err = qemu.New(qemu.WithTLS(noCA))
	assert.ErrorIs(t, err, hypervisor.ErrInvalid)
	assert.ErrorContains(t, err, "missing "+migtls.CACert)

	// Launch refuses too, before creating anything in its state dir.
	state := t.TempDir()
	_, err = qemu.Launch(context.Background(), qemu.Config{Name: "x", Kernel: "/boot/vmlinuz"},
		qemu.LaunchOptions{StateDir: state, TLSDir: t.TempDir()})
	assert.ErrorIs(t, err, hypervisor.ErrInvalid, "Launch with an empty TLS dir")
	assert.ErrorContains(t, err, "missing "+migtls.CACert)
	ents, err := os.ReadDir(state)
	require.NoError(t, err)
	assert.Empty(t, ents, "Launch with a bad TLS dir left files in its state dir")
}

// fillMarker puts many copies of the marker into the guest's memory: it
// echoes 1 MiB of them once, then leaves 8 connections from namespace
// from with up to 256 KiB each unread, so the echoes sit in the guest's
// socket queues while it migrates (from is the peer on A's bridge: this
// traffic never crosses the wan). The connections close when the test
// ends.
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
				break // the windows are full: the guest holds what it can
			}
			held += len(payload)
		}
	}
	if held < 256<<10 {
		t.Fatalf("the guest took only %d bytes of marker on its held connections", held)
	}
}

// migrateCaptured migrates name from one Hypervisor to the other while
// counting frames on the wan (its interface towards B), and resumes it.
func migrateCaptured(t testing.TB, ctx context.Context, l *lab.Lab, from, to *qemu.Hypervisor, name string) (hypervisor.Stats, lab.CaptureStats) {
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

// TestMigrateTLS migrates one guest A→B with TLS and proves the stream
// was encrypted (no frame on the wan carries the marker the guest holds),
// and migrates a second guest holding the same marker without TLS, where
// the capture must find it (the control). On the way: a target of
// another CA is refused by the source, a target whose certificate does
// not name its address is refused before it starts, and a plain source
// cannot feed a TLS target; the guest runs on at A each time. Finally the
// credentials are renewed and the guest migrates back B→A with TLS.
func TestMigrateTLS(t *testing.T) {
	dir := newTLSDir(t, hostAddrs)
	w := newWorld(t, "tls", netip.MustParseAddr("10.1.0.34"), qemu.WithTLS(dir))
	before := w.boot(t)
	vm, err := w.a.Lookup(w.ctx, w.name)
	if err != nil {
		t.Fatal(err)
	}

	// A target with credentials of another CA: the source rejects its
	// certificate, the guest stays at A.
	rogue := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(t.TempDir()), qemu.WithTLS(newTLSDir(t, hostAddrs)))
	if err := rogue.Define(w.cfgB); err != nil {
		t.Fatal(err)
	}
	ep, err := rogue.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	_, err = w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error {
		t.Error("switchover hook ran for a target of another CA")
		return nil
	}})
	if !errors.Is(err, hypervisor.ErrMigration) || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("Migrate to a target of another CA: %v, want ErrMigration about its certificate", err)
	}
	t.Logf("target of another CA: %v", err)
	if err := rogue.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if got, err := w.a.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("lookup at A after the refused target: %+v %v, want running", got, err)
	}

	// A target whose server certificate does not name B's address is
	// refused by PrepareIncoming before any QEMU starts.
	wrongSAN := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(t.TempDir()),
		qemu.WithTLS(newTLSDir(t, []netip.Addr{netip.MustParseAddr("192.0.2.99")})))
	if err := wrongSAN.Define(w.cfgB); err != nil {
		t.Fatal(err)
	}
	if _, err := wrongSAN.PrepareIncoming(w.ctx, vm); !errors.Is(err, hypervisor.ErrInvalid) ||
		!strings.Contains(err.Error(), migtls.ServerCert) || !strings.Contains(err.Error(), lab.BUnderlay.String()) {
		t.Fatalf("PrepareIncoming with a certificate not naming %s: %v, want ErrInvalid naming the file and address", lab.BUnderlay, err)
	}
	if wrongSAN.Process(w.name) != nil {
		t.Fatal("PrepareIncoming started a QEMU for a certificate that cannot work")
	}

	// The control guest, on plain Hypervisors at the same hosts.
	paddr := netip.MustParseAddr("10.1.0.35")
	pcfg := w.img.Config("plain", guest.Net{Addr: netip.PrefixFrom(paddr, 24), Gateway: lab.Gateway,
		MAC: guest.MAC(paddr), Tap: "tapplain", Bridge: "br0"})
	pa := mustNew(t, qemu.WithHost(w.lab.A), qemu.WithStateDir(t.TempDir()))
	pb := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(t.TempDir()))
	if err := pb.Define(pcfg); err != nil {
		t.Fatal(err)
	}
	if _, err := pa.Start(w.ctx, pcfg); err != nil {
		t.Fatal(err)
	}
	pbefore, err := guest.WaitReady(w.ctx, w.lab.A, paddr)
	if err != nil {
		t.Fatal(err)
	}
	// A plain source cannot feed a TLS target: the migration fails and
	// the guest runs on at A.
	if err := w.b.Define(pcfg); err != nil {
		t.Fatal(err)
	}
	pvm, err := pa.Lookup(w.ctx, "plain")
	if err != nil {
		t.Fatal(err)
	}
	ep, err = w.b.PrepareIncoming(w.ctx, pvm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pa.Migrate(w.ctx, "plain", ep, hypervisor.MigrateOptions{}); !errors.Is(err, hypervisor.ErrMigration) && !errors.Is(err, hypervisor.ErrUnreachable) {
		t.Fatalf("plain source to a TLS target: %v, want a failed migration", err)
	} else {
		t.Logf("plain source to a TLS target: %v", err)
	}
	if err := w.b.Abort(w.ctx, "plain"); err != nil {
		t.Fatal(err)
	}
	if got, err := pa.Lookup(w.ctx, "plain"); err != nil || got.State != hypervisor.Running {
		t.Fatalf("control guest at A after the failed plain→TLS attempt: %+v %v, want running", got, err)
	}

	// With TLS: the marker is in the guest, not on the wan.
	fillMarker(t, w.ctx, w.lab.Peer, w.addr)
	stats, cs := migrateCaptured(t, w.ctx, w.lab, w.a, w.b, w.name)
	t.Logf("TLS: total %v, downtime %v, %d bytes; wan %d frames (%d TCP), %d with the marker, %d dropped",
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
	if err := guest.Echo(w.ctx, w.lab.B, w.addr, []byte("at B over TLS")); err != nil {
		t.Fatal(err)
	}

	// Without TLS (the control): the same kind of guest memory shows the
	// marker on the wan.
	fillMarker(t, w.ctx, w.lab.Peer, paddr)
	pstats, pcs := migrateCaptured(t, w.ctx, w.lab, pa, pb, "plain")
	t.Logf("plain: total %v, downtime %v, %d bytes; wan %d frames (%d TCP), %d with the marker, %d dropped",
		pstats.Total, pstats.Downtime, pstats.Bytes, pcs.Frames, pcs.ByProto[6], pcs.Marker, pcs.Dropped)
	if pcs.Marker == 0 {
		t.Fatal("no frame on the wan carries the marker during a plain migration: the check cannot fail")
	}
	pafter, err := guest.WaitReady(w.ctx, w.lab.B, paddr)
	if err != nil {
		t.Fatal(err)
	}
	if pafter.BootID != pbefore.BootID || pafter.Counter <= pbefore.Counter {
		t.Fatalf("control guest before %+v, after %+v", pbefore, pafter)
	}

	// And back B→A with TLS after the credentials were renewed (a new CA):
	// the instance at B, started with the old ones, reloads its client
	// credentials (old and new CA do not trust each other).
	if err := migtls.NewDir(dir, hostAddrs); err != nil {
		t.Fatal(err)
	}
	stats, cs = migrateCaptured(t, w.ctx, w.lab, w.b, w.a, w.name)
	if cs.Marker != 0 || cs.Dropped != 0 || cs.ByProto[6] < 100 {
		t.Fatalf("TLS B→A: wan %d TCP frames, %d with the marker, %d dropped", cs.ByProto[6], cs.Marker, cs.Dropped)
	}
	back, err := guest.WaitReady(w.ctx, w.lab.A, w.addr)
	if err != nil || back.BootID != before.BootID || back.Counter <= after.Counter {
		t.Fatalf("guest back at A: %+v %v (at B %+v)", back, err, after)
	}
	t.Logf("TLS B→A: total %v, downtime %v", stats.Total, stats.Downtime)
}

// BenchmarkMigrateTLS moves a 128 MiB guest between A and B once per
// iteration, without and with TLS, and reports QEMU's total time and
// downtime and sealift's end-to-end time (prepare → resumed).
func BenchmarkMigrateTLS(b *testing.B) {
	for _, tc := range []struct {
		name string
		addr string
		tls  bool
	}{{"plain", "10.1.0.44", false}, {"tls", "10.1.0.45", true}} {
		b.Run(tc.name, func(b *testing.B) {
			var opts []qemu.Option
			if tc.tls {
				opts = append(opts, qemu.WithTLS(newTLSDir(b, hostAddrs)))
			}
			benchHops(b, newWorld(b, "b"+tc.name[:1], netip.MustParseAddr(tc.addr), opts...))
		})
	}
}

// TestMigrateTLSAuthz: hosts with credentials of their own (one CA,
// migtls.CA.HostDir): Lookup at A reports A's identity, a target
// prepared for it accepts A's stream, and a target prepared for another
// source identity (the plan named another host) refuses A's certificate
// although the CA signed it: the guest runs on at A.
func TestMigrateTLSAuthz(t *testing.T) {
	ca, err := migtls.NewCA()
	require.NoError(t, err)
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	require.NoError(t, ca.HostDir(dirA, "host-a", hostAddrs))
	require.NoError(t, ca.HostDir(dirB, "host-b", hostAddrs))
	w := newWorld(t, "authz", netip.MustParseAddr("10.1.0.36"), qemu.WithTLS(dirA))
	b := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(t.TempDir()), qemu.WithTLS(dirB))
	require.NoError(t, b.Define(w.cfgB))
	before := w.boot(t)
	vm, err := w.a.Lookup(w.ctx, w.name)
	require.NoError(t, err)
	assert.Equal(t, "CN=host-a", vm.Identity)

	other := vm
	other.Identity = "CN=host-x"
	ep, err := b.PrepareIncoming(w.ctx, other)
	require.NoError(t, err)
	_, err = w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error {
		t.Error("switchover hook ran for a target that authorizes another source")
		return nil
	}})
	require.ErrorIs(t, err, hypervisor.ErrMigration)
	t.Logf("target authorizing CN=host-x: %v", err)
	require.NoError(t, b.Abort(w.ctx, w.name))
	got, err := w.a.Lookup(w.ctx, w.name)
	require.NoError(t, err)
	require.Equal(t, hypervisor.Running, got.State)

	ep, err = b.PrepareIncoming(w.ctx, vm)
	require.NoError(t, err)
	_, err = w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{})
	require.NoError(t, err)
	require.NoError(t, b.Resume(w.ctx, w.name))
	after, err := guest.WaitReady(w.ctx, w.lab.B, w.addr)
	require.NoError(t, err)
	assert.Equal(t, before.BootID, after.BootID, "the same guest, moved")
	vb, err := b.Lookup(w.ctx, w.name)
	require.NoError(t, err)
	assert.Equal(t, "CN=host-b", vb.Identity)
}
