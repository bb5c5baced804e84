package netlinkroute

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
)

// BenchmarkWaitFiresAfterRouteAppears measures the time from adding a
// kernel route (just before the RTM_NEWROUTE request) to Wait returning;
// metric fire-ns/op.
func BenchmarkWaitFiresAfterRouteAppears(b *testing.B) {
	ns := newHost(b)
	w := New(WithHost(ns))
	h, err := lab.Handle(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	ctx := context.Background()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(128 + (i/256)%128), byte(i % 256), 0}), 24)
		res := startWait(ctx, b, w, routing.Expect{Prefix: p, Via: siteVia})
		r := &netlink.Route{Dst: toIPNet(p), Gw: siteVia.AsSlice(), Protocol: unix.RTPROT_STATIC}
		t0 := time.Now()
		if err := h.RouteAdd(r); err != nil {
			b.Fatal(err)
		}
		got := <-res
		total += time.Since(t0)
		if got.err != nil {
			b.Fatal(got.err)
		}
		if err := h.RouteDel(r); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "fire-ns/op")
}
