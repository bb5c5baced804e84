package libvirtd_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/libvirtd"
)

// TestTwoDaemons starts a daemon in host A and one in host B and checks
// that each answers on its unix socket with its own host UUID, and that
// B's TCP listener is reachable from A across the underlay (what
// peer-to-peer migration uses).
func TestTwoDaemons(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("virsh"); err != nil {
		lab.Missing(t, "virsh (apt package libvirt-clients)")
	}
	l := lab.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := func(host, addr string, port, mig int) *libvirtd.Daemon {
		d, err := libvirtd.Start(ctx, libvirtd.Options{Host: host, Dir: t.TempDir(), ListenAddr: addr,
			TCPPort: port, MigrationPortMin: mig, MigrationPortMax: mig + 15})
		if err != nil {
			lab.Missing(t, err.Error())
		}
		t.Cleanup(func() {
			sctx, c := context.WithTimeout(context.Background(), 30*time.Second)
			defer c()
			_ = d.Stop(sctx)
		})
		return d
	}
	a := start(l.A, lab.AUplink.String(), 16511, 49200)
	b := start(l.B, lab.BUnderlay.String(), 16512, 49300)
	if a.UUID == b.UUID {
		t.Fatal("both daemons got the same host UUID")
	}
	for _, d := range []*libvirtd.Daemon{a, b} {
		out, err := exec.CommandContext(ctx, "virsh", "-c", d.URI, "capabilities").CombinedOutput()
		if err != nil {
			t.Fatalf("virsh -c %s capabilities: %v: %s", d.URI, err, out)
		}
		if !strings.Contains(string(out), "<uuid>"+d.UUID+"</uuid>") {
			t.Fatalf("daemon %s does not report its host UUID %s", d.URI, d.UUID)
		}
	}
	out, err := lab.Exec(l.A, "virsh", "-c", b.TCPURI, "uri")
	if err != nil {
		t.Fatalf("B over TCP from A: %v", err)
	}
	if !strings.Contains(string(out), b.TCPURI) {
		t.Fatalf("virsh uri from A: %s", out)
	}
	if _, err := libvirtd.Start(ctx, libvirtd.Options{Dir: "relative"}); !errors.Is(err, libvirtd.ErrInvalid) {
		t.Fatalf("relative Dir: %v, want ErrInvalid", err)
	}
}

// TestMigrateTLSDirChecked: a bad MigrateTLSDir is refused before anything
// starts, naming what is wrong.
func TestMigrateTLSDirChecked(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct{ tls, want string }{
		{"relative/tls", "absolute"},
		{t.TempDir(), "missing ca-cert.pem"},
		{"/tmp/with\"quote", "quotes"},
	} {
		_, err := libvirtd.Start(ctx, libvirtd.Options{Dir: dir, MigrateTLSDir: tc.tls})
		if !errors.Is(err, libvirtd.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("MigrateTLSDir %q: %v, want ErrInvalid mentioning %q", tc.tls, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("a refused Start left %d entries in Dir", len(ents))
	}
}
