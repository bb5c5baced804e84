package qemu_test

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/internal/guest"
)

// TestAdoptAfterRestart: a Hypervisor that lets go of its QEMUs (as an
// agent that crashed would) leaves them running, and a new Hypervisor on
// the same state dirs finds them — a running source, an incoming target
// defined by the first one — and migrates between them; the guest never
// reboots. An adopted, unresumed target is discarded by Abort, never
// resumed.
func TestAdoptAfterRestart(t *testing.T) {
	w := newWorld(t, "adopt", netip.MustParseAddr("10.1.0.33"))
	before := w.boot(t)
	pid := w.a.Process(w.name).Pid()
	if b, err := os.ReadFile(filepath.Join(w.a.StateDir(), w.name+".pid")); err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(pid) {
		t.Fatalf("pid file: %q %v, want %d", b, err, pid)
	}
	if err := w.a.Detach(w.name); err != nil {
		t.Fatal(err)
	}
	a2 := mustNew(t, qemu.WithHost(w.lab.A), qemu.WithStateDir(w.a.StateDir()))
	vm, err := a2.Lookup(w.ctx, w.name)
	if err != nil || vm.State != hypervisor.Running || vm.MemoryBytes != 128<<20 {
		t.Fatalf("adopted at A: %+v %v", vm, err)
	}
	if got := a2.Process(w.name).Pid(); got != pid {
		t.Fatalf("adopted pid %d, want %d", got, pid)
	}

	// B: the definition made by w.b is on disk; a new handle prepares
	// the incoming instance from it, then lets go of it too.
	b2 := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(w.b.StateDir()))
	ep, err := b2.PrepareIncoming(w.ctx, vm)
	if err != nil {
		t.Fatal(err)
	}
	if err := b2.Detach(w.name); err != nil {
		t.Fatal(err)
	}
	b3 := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(w.b.StateDir()))
	if got, err := b3.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Incoming {
		t.Fatalf("adopted at B: %+v %v, want incoming", got, err)
	}
	if _, err := a2.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{}); err != nil {
		t.Fatal(err)
	}
	// Received, not resumed: paused, for a handle that adopts it now.
	b4 := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(w.b.StateDir()))
	if err := b3.Detach(w.name); err != nil {
		t.Fatal(err)
	}
	if got, err := b4.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Paused {
		t.Fatalf("received target adopted: %+v %v, want paused", got, err)
	}
	if err := b4.Resume(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	after, err := guest.WaitReady(w.ctx, w.lab.B, w.addr)
	if err != nil {
		t.Fatal(err)
	}
	if after.BootID != before.BootID || after.Counter <= before.Counter {
		t.Fatalf("guest before %+v, after %+v: want same boot id and a larger counter", before, after)
	}
	// Resumed: a later adopter sees a running VM.
	if err := b4.Detach(w.name); err != nil {
		t.Fatal(err)
	}
	b5 := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(w.b.StateDir()))
	if got, err := b5.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("resumed VM adopted: %+v %v, want running", got, err)
	}
	if err := b5.Abort(w.ctx, w.name); err != nil {
		t.Fatal(err)
	}
	if got, err := b5.Lookup(w.ctx, w.name); err != nil || got.State != hypervisor.Running {
		t.Fatalf("after Abort without a migration: %+v %v, want running", got, err)
	}
}

// TestAdoptedIncomingAborted: Abort discards an adopted target that was
// never resumed — waiting for the stream, or holding the whole VM after
// it — and kills its QEMU; it never resumes it.
func TestAdoptedIncomingAborted(t *testing.T) {
	w := newWorld(t, "adab", netip.MustParseAddr("10.1.0.34"))
	w.boot(t)
	vm, err := w.a.Lookup(w.ctx, w.name)
	if err != nil {
		t.Fatal(err)
	}
	for _, received := range []bool{false, true} {
		ep, err := w.b.PrepareIncoming(w.ctx, vm)
		if err != nil {
			t.Fatal(err)
		}
		pid := w.b.Process(w.name).Pid()
		if received {
			if _, err := w.a.Migrate(w.ctx, w.name, ep, hypervisor.MigrateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.b.Detach(w.name); err != nil {
			t.Fatal(err)
		}
		b2 := mustNew(t, qemu.WithHost(w.lab.B), qemu.WithStateDir(w.b.StateDir()))
		if err := b2.Abort(w.ctx, w.name); err != nil {
			t.Fatal(err)
		}
		if _, err := b2.Lookup(w.ctx, w.name); !errors.Is(err, hypervisor.ErrNotFound) {
			t.Fatalf("received %v: after Abort: %v, want ErrNotFound", received, err)
		}
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && !strings.Contains(string(b), ") Z ") {
			t.Fatalf("received %v: incoming QEMU pid %d still runs after Abort", received, pid)
		}
	}
}

// TestBadDefinition: a definition file that is not one fails New, naming
// the file.
func TestBadDefinition(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "vm1.json"), []byte(`{"Name":"vm2","Kernel":"/k"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := qemu.New(qemu.WithStateDir(dir))
	if !errors.Is(err, hypervisor.ErrInvalid) || !strings.Contains(err.Error(), "vm1.json") || !strings.Contains(err.Error(), `"vm2"`) {
		t.Fatalf("New with a mismatched definition: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "vm1.json"), []byte(`{"Name":`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := qemu.New(qemu.WithStateDir(dir)); !errors.Is(err, hypervisor.ErrInvalid) || !strings.Contains(err.Error(), "vm1.json") {
		t.Fatalf("New with a truncated definition: %v", err)
	}
}
