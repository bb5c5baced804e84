// Package klab runs a package's Go tests inside a QEMU guest booted with
// Debian's full kernel (ESP, kernel WireGuard and the other modules this
// machine's kernel lacks) and reports their result to the host `go test`.
//
// A host-side test calls Run; it builds the package's test binary
// statically, appends it to a cached busybox initramfs that loads
// DefaultModules, boots it under TCG and streams the guest's console into
// t.Log. Inside the guest InGuest is true; guest-only tests start with
// RequireGuest, which skips on the host (where the Run wrapper is what
// executes them, so the skip hides nothing).
//
//	func TestInGuest(t *testing.T) {
//		klab.Run(t, klab.Options{Run: "^TestGuest"})
//	}
//	func TestGuestESP(t *testing.T) {
//		klab.RequireGuest(t)
//		...
//	}
package klab

import (
	"os"
	"testing"
	"time"
)

// EnvGuest is set to "1" in the guest's environment.
const EnvGuest = "SEALIFT_GUEST"

// InGuest reports whether the code runs inside a klab guest.
func InGuest() bool { return os.Getenv(EnvGuest) == "1" }

// RequireGuest skips t unless it runs inside a klab guest. Use it only in
// tests a host-side Run wrapper executes in the guest.
func RequireGuest(t testing.TB) {
	t.Helper()
	if !InGuest() {
		t.Skip("runs in the full-kernel guest (via klab.Run from the host test)")
	}
}

// DefaultModules are loaded with insmod, dependencies first, in this order.
// Built-in ones are skipped.
var DefaultModules = []string{
	"xfrm_algo", "xfrm_user", "esp4", "esp6", "tunnel6", "tunnel4", "xfrm6_tunnel", "xfrm_interface",
	"gcm", "gf128mul", "ghash-generic", "ctr", "seqiv", "echainiv", "authenc", "sha512_generic",
	"drbg", "libcurve25519-generic", "udp_tunnel", "ip6_udp_tunnel", "poly1305-x86_64", "libchacha",
	"chacha-x86_64", "libchacha20poly1305", "curve25519-x86_64", "wireguard", "veth", "tun", "dummy",
	"nfnetlink", "bridge",
}

// OptionalModules are loaded after DefaultModules; a failure to load them
// (e.g. no CPU support) is not an error.
var OptionalModules = []string{"aesni-intel", "ghash-clmulni-intel"}

// Options says what to run in the guest.
type Options struct {
	// Package is the import path or directory of the package whose tests
	// run in the guest; "" means the calling test's package (".").
	Package string
	// Run and Bench are passed as -test.run and -test.bench.
	Run, Bench string
	// Args are extra test binary flags (e.g. "-test.benchtime=3x").
	Args []string
	// Env are extra "KEY=value" entries for the guest test binary. CI is
	// passed through from the host.
	Env []string
	// Modules are loaded in addition to DefaultModules.
	Modules []string
	// MemoryMiB is the guest's RAM (default 256); CPUs its vCPUs (default 2).
	MemoryMiB, CPUs int
	// Timeout bounds the whole run (default: the test's deadline, or 10m).
	Timeout time.Duration
	// Tags are passed to `go test -c -tags`.
	Tags string
}
