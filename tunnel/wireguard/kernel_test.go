package wireguard

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// TestKernelBackendForced: WithBackend(Kernel) gives a kernel device where
// the kernel has WireGuard, and ErrKernelUnsupported (leaving nothing
// behind) where it does not.
func TestKernelBackendForced(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil, WithBackend(Kernel))
	ctx := context.Background()
	spec := w.spec()
	link, err := lk.Prepare(ctx, spec)
	if kernelHasWireGuard(t) {
		if err != nil {
			t.Fatalf("Prepare: %v", err)
		}
		closeOnCleanup(t, lk, spec.ID)
		if link.Backend != BackendKernel {
			t.Fatalf("Backend %q", link.Backend)
		}
		return
	}
	if !errors.Is(err, tunnel.ErrKernelUnsupported) {
		t.Fatalf("Prepare on a kernel without WireGuard: %v, want ErrKernelUnsupported", err)
	}
	t.Logf("as expected: %v", err)
	link = tunnel.Link{Spec: spec, SecureDevice: deviceName(spec.ID, roleSecure), RemoteDevice: deviceName(spec.ID, roleRemote)}
	assertClean(t, lk, link, nil, w)
}

// TestKernelInGuest runs the kernel-device tests in a QEMU guest with
// Debian's kernel (which has WireGuard).
func TestKernelInGuest(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest")
	}
	res := klab.Run(t, klab.Options{Run: "^(TestGuest|TestAutoPicks|TestKernelBackendForced|TestCloseAfterRestart|TestPlainPath|TestTwo|TestNoSecureRoutes)"})
	// The guest must have run the kernel path, not skipped it.
	want := []string{"TestGuestKernelLink", "TestAutoPicksAvailableBackend", "TestKernelBackendForced",
		"TestCloseAfterRestart", "TestTwoLinksShareHosts", "TestTwoMovedVMsShareThePeer", "TestNoSecureRoutes"}
	for _, name := range want {
		if !containsPrefix(res.Output, "--- PASS: "+name+" ") {
			t.Errorf("guest did not pass %s", name)
		}
	}
	for _, l := range res.Output {
		if strings.Contains(l, "Backend = ") || strings.Contains(l, "wireguard-userspace") {
			t.Errorf("guest used wireguard-go: %s", l)
		}
	}
}

func containsPrefix(lines []string, prefix string) bool {
	for _, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), prefix) {
			return true
		}
	}
	return false
}

// TestGuestKernelLink is the full life cycle on the kernel device.
func TestGuestKernelLink(t *testing.T) {
	klab.RequireGuest(t)
	testLinkLifecycle(t, Kernel, BackendKernel)
}

// kernelHasWireGuard probes link type "wireguard" in a scratch netns.
func kernelHasWireGuard(t *testing.T) bool {
	t.Helper()
	lab.RequireRoot(t)
	ns := lab.NewPrefix() + "-probe"
	if err := lab.AddNS(ns); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = delNS(ns) }()
	err := addKernelDevice(ns, "slwprobe", 1420)
	switch {
	case err == nil:
		return true
	case errors.Is(err, tunnel.ErrKernelUnsupported):
		return false
	}
	t.Fatal(err)
	return false
}
