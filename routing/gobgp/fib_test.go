package gobgp

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
)

// bgpRoutes lists the core's proto-bgp routes to the VM subnet.
func bgpRoutes(t testing.TB, ns string) []string {
	t.Helper()
	out, err := lab.Exec(ns, "ip", "-4", "route", "show", lab.VMSubnet.String(), "proto", "bgp")
	if err != nil {
		t.Fatal(err)
	}
	var rs []string
	for _, line := range strings.Split(string(out), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			rs = append(rs, line)
		}
	}
	return rs
}

// waitNoBGPRoute polls until the core has no BGP route to the subnet.
func waitNoBGPRoute(ctx context.Context, t testing.TB, ns string) {
	t.Helper()
	for len(bgpRoutes(t, ns)) != 0 {
		select {
		case <-ctx.Done():
			t.Fatalf("BGP route still installed: %v", bgpRoutes(t, ns))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// threadsIn returns this process's threads whose network namespace is
// ns, each as "tid state" (from /proc/self/task/<tid>/stat).
func threadsIn(t testing.TB, ns string) []string {
	t.Helper()
	var want unix.Stat_t
	if err := unix.Stat(filepath.Join("/run/netns", ns), &want); err != nil {
		t.Fatal(err)
	}
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	var in []string
	for _, task := range tasks {
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc/self/task", task.Name(), "ns/net"), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			state := "?"
			if b, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "stat")); err == nil {
				if i := strings.LastIndexByte(string(b), ')'); i > 0 && i+2 < len(b) {
					state = string(b[i+2])
				}
			}
			wchan, _ := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "wchan"))
			stack, _ := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "stack"))
			name := task.Name()
			if name == strconv.Itoa(os.Getpid()) {
				name += "(main thread)"
			}
			in = append(in, name+" "+state+" wchan="+string(wchan)+" stack="+strings.ReplaceAll(string(stack), "\n", " | "))
		}
	}
	return in
}

// SyncFIB installs, replaces and removes the kernel route as the best
// path comes and goes; the speakers' listeners live in their namespaces
// while no thread of the process stays there (nor in any other of the
// lab's).
func TestSyncFIBFollowsBestPath(t *testing.T) {
	l, vmb := movedSubnetLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	core, target := pairSpeakers(ctx, t, l)
	// Connect reached each listener from the other namespace only:
	// the listeners are inside. No thread of the process is: New and
	// Connect return after the threads they switched came back, and
	// nothing switches in the background, so this is judged at once, in
	// every namespace of the lab. (A thread found here is a leak, not one
	// on its way out: the main thread that the lab used to park, for
	// good, in a namespace it created failed this twice in CI.)
	for _, ns := range []string{l.A, l.Core, l.WAN, l.B, l.VM, l.Peer, l.Peer2, vmb} {
		if in := threadsIn(t, ns); len(in) != 0 {
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var locked []string
			for _, g := range strings.Split(string(buf), "\n\n") {
				if strings.Contains(g, "locked to thread") {
					locked = append(locked, g)
				}
			}
			t.Fatalf("threads of the test process (tid state) in %s: %v\ngoroutines locked to a thread:\n%s", ns, in, strings.Join(locked, "\n\n"))
		}
	}
	kernel := netlinkroute.New(netlinkroute.WithHost(l.Core))
	expect := routing.Expect{Prefix: lab.VMSubnet, Via: bSite, Device: "s0"}

	stop, err := core.SyncFIB(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := target.Announce(ctx, lab.VMSubnet, bSite); err != nil {
		t.Fatal(err)
	}
	c, err := kernel.Wait(ctx, expect)
	if err != nil {
		t.Fatal(err)
	}
	if c.Route.Protocol != "bgp" {
		t.Fatalf("kernel route %+v, want proto bgp", c.Route)
	}
	if rs := bgpRoutes(t, l.Core); len(rs) != 1 || !strings.Contains(rs[0], "metric 20") {
		t.Fatalf("core's BGP routes: %q, want one with metric %d", rs, DefaultFIBMetric)
	}

	// Withdrawn: the route goes.
	if err := target.Withdraw(ctx, lab.VMSubnet, bSite); err != nil {
		t.Fatal(err)
	}
	waitNoBGPRoute(ctx, t, l.Core)

	// Back, then the sync stops: it removes what it installed.
	if err := target.Announce(ctx, lab.VMSubnet, bSite); err != nil {
		t.Fatal(err)
	}
	if _, err := kernel.Wait(ctx, expect); err != nil {
		t.Fatal(err)
	}
	stop()
	if rs := bgpRoutes(t, l.Core); len(rs) != 0 {
		t.Fatalf("BGP routes after stop: %q", rs)
	}
	// The core's own origin is never installed: with B's path still
	// there, a local path (shorter AS path) becomes best, and the learned
	// route that this sync installed from its first event must go.
	stop, err = core.SyncFIB(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if _, err := kernel.Wait(ctx, expect); err != nil {
		t.Fatal(err)
	}
	if err := core.Announce(ctx, lab.VMSubnet, coreSite); err != nil {
		t.Fatal(err)
	}
	waitNoBGPRoute(ctx, t, l.Core)
}
