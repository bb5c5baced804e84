package nsutil_test

import (
	"net"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

func newNS(tb testing.TB) string {
	tb.Helper()
	lab.RequireRoot(tb)
	name := "slnsbench"
	errc := make(chan error)
	go func() {
		// NewNamed switches this locked thread; it is discarded at exit.
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
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
