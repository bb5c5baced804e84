package nsutil_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

func newNS(tb testing.TB) string {
	tb.Helper()
	lab.RequireRoot(tb)
	name := "slnsbench"
	if err := nsutil.Create(name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { netns.DeleteNamed(name) })
	return name
}

// BenchmarkDo: the cost of running a trivial function in another netns.
func BenchmarkDo(b *testing.B) {
	ns := newNS(b)
	for b.Loop() {
		if err := nsutil.Do(ns, func() error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDoInterfaceByIndex: Do plus what arp.Announce does first.
func BenchmarkDoInterfaceByIndex(b *testing.B) {
	ns := newNS(b)
	for b.Loop() {
		if err := nsutil.Do(ns, func() error { _, err := net.InterfaceByIndex(1); return err }); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMissingHost: every entry point reports a namespace that does not
// exist as host.ErrNotFound naming it.
func TestMissingHost(t *testing.T) {
	const gone = "sl-no-such-ns"
	cases := map[string]func() error{
		"Open": func() error {
			ns, err := nsutil.Open(gone)
			if err == nil {
				ns.Close()
			}
			return err
		},
		"Check":  func() error { return nsutil.Check(gone) },
		"Do":     func() error { return nsutil.Do(gone, func() error { return nil }) },
		"Handle": func() error { return handleErr(nsutil.Handle(gone)) },
		"Handle route+xfrm": func() error {
			return handleErr(nsutil.Handle(gone, unix.NETLINK_ROUTE, unix.NETLINK_XFRM))
		},
	}
	for name, call := range cases {
		t.Run(name, func(t *testing.T) {
			err := call()
			require.Error(t, err)
			assert.ErrorIs(t, err, host.ErrNotFound)
			assert.Contains(t, err.Error(), gone)
		})
	}
}

func handleErr(h *netlink.Handle, err error) error {
	if h != nil {
		h.Close()
	}
	return err
}

// TestHandle: a handle acts in the named namespace (its own lo, index 1,
// down), "" is the current one, and Check accepts both.
func TestHandle(t *testing.T) {
	ns := newNS(t)
	require.NoError(t, nsutil.Check(ns))
	require.NoError(t, nsutil.Check(""))
	for _, fams := range [][]int{nil, {unix.NETLINK_ROUTE}, {unix.NETLINK_ROUTE, unix.NETLINK_XFRM}} {
		h, err := nsutil.Handle(ns, fams...)
		require.NoError(t, err, "families %v", fams)
		links, err := h.LinkList()
		h.Close()
		require.NoError(t, err)
		if assert.Len(t, links, 1, "a fresh namespace has only lo") {
			assert.Equal(t, "lo", links[0].Attrs().Name)
		}
	}
	h, err := nsutil.Handle("")
	require.NoError(t, err)
	defer h.Close()
	_, err = h.LinkByName("lo")
	assert.NoError(t, err)
}

// TestCreateLeavesNoThread: after Create, no thread of the process is in
// the new namespace, the main thread included. (The old way, a locked
// goroutine that exits in it, left the main thread parked in one of a
// few namespaces in nearly every process: Go never ends the main thread.)
func TestCreateLeavesNoThread(t *testing.T) {
	lab.RequireRoot(t)
	p := lab.NewPrefix()
	var names []string
	for i := range 12 {
		name := fmt.Sprintf("%s-%d", p, i)
		require.NoError(t, nsutil.Create(name))
		t.Cleanup(func() { netns.DeleteNamed(name) })
		names = append(names, name)
	}
	for _, name := range names {
		assert.Empty(t, threadsIn(t, name), "threads of the test process in %s", name)
		h, err := nsutil.Handle(name)
		require.NoError(t, err)
		lo, err := h.LinkByName("lo")
		h.Close()
		require.NoError(t, err)
		assert.NotZero(t, lo.Attrs().Flags&net.FlagUp, "%s: lo is down", name)
	}
	assert.Error(t, nsutil.Create(names[0]), "a name that is taken")
	assert.Empty(t, threadsIn(t, names[0]), "threads left in %s by the failed Create", names[0])
}

// threadsIn lists this process's threads whose network namespace is the
// named one, by tid ("(main)" marks the main thread).
func threadsIn(t *testing.T, name string) []string {
	t.Helper()
	var want unix.Stat_t
	require.NoError(t, unix.Stat(filepath.Join("/run/netns", name), &want))
	tasks, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	var in []string
	for _, task := range tasks {
		var st unix.Stat_t
		if unix.Stat(filepath.Join("/proc/self/task", task.Name(), "ns/net"), &st) == nil && st.Ino == want.Ino && st.Dev == want.Dev {
			tid := task.Name()
			if tid == strconv.Itoa(os.Getpid()) {
				tid += "(main)"
			}
			in = append(in, tid)
		}
	}
	return in
}
