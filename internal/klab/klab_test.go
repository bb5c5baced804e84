package klab

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
)

// TestInGuest runs this package's guest tests in the full kernel.
func TestInGuest(t *testing.T) {
	res := Run(t, Options{Run: "^TestGuest"})
	var passed int
	for _, l := range res.Output {
		if strings.HasPrefix(strings.TrimSpace(l), "--- PASS: TestGuest") {
			passed++
		}
	}
	if passed < 2 {
		t.Fatalf("guest reported %d passing TestGuest* tests, want 2", passed)
	}
}

// TestGuestModules proves the guest has what this machine's kernel lacks.
func TestGuestModules(t *testing.T) {
	RequireGuest(t)
	data, err := os.ReadFile("/proc/modules")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"esp4", "xfrm_user", "wireguard", "drbg", "veth", "bridge"} {
		if !strings.Contains(string(data), m+" ") {
			t.Errorf("module %s not loaded", m)
		}
	}
	for _, m := range OptionalModules {
		m = strings.ReplaceAll(m, "-", "_")
		t.Logf("optional module %s loaded: %v", m, strings.Contains(string(data), m+" "))
	}
}

// TestGuestDevices creates a kernel WireGuard device and a veth pair.
func TestGuestDevices(t *testing.T) {
	RequireGuest(t)
	wg := &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "klabwg0"}}
	if err := netlink.LinkAdd(wg); err != nil {
		t.Fatalf("wireguard: %v", err)
	}
	defer netlink.LinkDel(wg)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "klabv0"}, PeerName: "klabv1"}
	if err := netlink.LinkAdd(v); err != nil {
		t.Fatalf("veth: %v", err)
	}
	defer netlink.LinkDel(v)
}

// TestGuestMustFail fails on purpose when the host asks for it; it proves
// that a failing guest test fails the host test.
func TestGuestMustFail(t *testing.T) {
	RequireGuest(t)
	if os.Getenv("KLAB_SELFTEST_FAIL") == "1" {
		t.Fatal("failing on purpose")
	}
}

// recorder is a testing.TB whose Fatal/Error/Skip are recorded.
type recorder struct {
	*testing.T
	mu     sync.Mutex
	failed []string
}

func (r *recorder) Errorf(f string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = append(r.failed, fmt.Sprintf(f, a...))
}
func (r *recorder) Fatalf(f string, a ...any) { r.Errorf(f, a...); runtime.Goexit() }
func (r *recorder) Fatal(a ...any)            { r.Errorf("%s", fmt.Sprint(a...)); runtime.Goexit() }
func (r *recorder) Skipf(f string, a ...any)  { r.T.Skipf(f, a...) }

func TestHostSeesGuestFailure(t *testing.T) {
	if InGuest() {
		t.Skip("host-side check")
	}
	r := &recorder{T: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		Run(r, Options{Run: "^TestGuestMustFail$", Env: []string{"KLAB_SELFTEST_FAIL=1"}})
	}()
	<-done
	if len(r.failed) == 0 || !strings.Contains(strings.Join(r.failed, "\n"), "TestGuestMustFail") {
		t.Fatalf("host did not fail on a failing guest test: %q", r.failed)
	}
	t.Logf("host failure as expected: %s", r.failed[0])
}
