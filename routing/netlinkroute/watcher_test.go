package netlinkroute

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
)

var (
	subnet   = netip.MustParsePrefix("10.1.0.0/24")
	siteVia  = netip.MustParseAddr("100.64.0.2") // the proper route's next hop (site link)
	tunVia   = netip.MustParseAddr("100.64.1.2") // the stand-in tunnel's far end
	waitLong = 20 * time.Second                  // bound for waits that must succeed
)

// newHost creates a namespace with two veth devices (this kernel has no
// dummy driver; each peer end stays in the namespace, up, unaddressed):
// s0 (100.64.0.1/30, the permanent site link) and rt0 (100.64.1.1/30,
// standing in for the redirect tunnel).
func newHost(t testing.TB) string {
	t.Helper()
	lab.RequireRoot(t)
	ns := lab.NewPrefix() + "-rt"
	if err := lab.AddNS(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = netns.DeleteNamed(ns) })
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, d := range []struct{ name, addr string }{{"s0", "100.64.0.1/30"}, {"rt0", "100.64.1.1/30"}} {
		if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: d.name}, PeerName: d.name + "p"}); err != nil {
			t.Fatalf("%s: add %s: %v", ns, d.name, err)
		}
		if p, err := h.LinkByName(d.name + "p"); err != nil || h.LinkSetUp(p) != nil {
			t.Fatalf("%s: peer of %s: %v", ns, d.name, err)
		}
		l, err := h.LinkByName(d.name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := netlink.ParseAddr(d.addr)
		if err := h.AddrAdd(l, a); err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return ns
}

// addRoute adds dst via gw (a "static" route, as an operator would) with
// metric in ns.
func addRoute(t testing.TB, ns string, dst netip.Prefix, gw netip.Addr, metric int) {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	r := &netlink.Route{Dst: toIPNet(dst), Gw: gw.AsSlice(), Priority: metric, Protocol: unix.RTPROT_STATIC}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("%s: route %s via %s metric %d: %v", ns, dst, gw, metric, err)
	}
}

// kernelRoutes lists the main table's routes to dst, as the kernel has them.
func kernelRoutes(t testing.TB, ns string, dst netip.Prefix) []netlink.Route {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: toIPNet(dst)}, netlink.RT_FILTER_DST)
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

type waitResult struct {
	c   routing.Converged
	err error
}

// startWait runs w.Wait in a goroutine and returns once Wait has
// subscribed and found no matching route yet.
func startWait(ctx context.Context, t testing.TB, w *Watcher, e routing.Expect) <-chan waitResult {
	t.Helper()
	ready := make(chan struct{})
	w.ready = func() { close(ready) }
	res := make(chan waitResult, 1)
	go func() {
		c, err := w.Wait(ctx, e)
		res <- waitResult{c, err}
	}()
	select {
	case <-ready:
	case r := <-res:
		t.Fatalf("Wait returned before the route was added: %+v, %v", r.c, r.err)
	case <-time.After(waitLong):
		t.Fatal("Wait did not subscribe")
	}
	return res
}

func TestWaitSeesRouteAddedAfterCall(t *testing.T) {
	ns := newHost(t)
	w := New(WithHost(ns))
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	if err := w.AddRedirect(ctx, routing.Redirect{Prefix: subnet, Device: "rt0", Via: tunVia}); err != nil {
		t.Fatal(err)
	}
	res := startWait(ctx, t, w, routing.Expect{Prefix: subnet, Via: siteVia, NotDevice: "rt0"})
	// Routes that must not count: another prefix, another next hop.
	addRoute(t, ns, netip.MustParsePrefix("10.1.0.0/16"), siteVia, 10)
	addRoute(t, ns, subnet, netip.MustParseAddr("100.64.1.1"), 30)
	addRoute(t, ns, subnet, siteVia, 20)
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := routing.Route{Prefix: subnet, Via: siteVia, Device: "s0", Protocol: "static"}
	if r.c.Route != want {
		t.Fatalf("converged on %+v, want %+v", r.c.Route, want)
	}
	if r.c.After <= 0 {
		t.Errorf("After = %v for a route added after Wait was called", r.c.After)
	}
}

func TestWaitRouteNeverComesKeepsRedirect(t *testing.T) {
	ns := newHost(t)
	w := New(WithHost(ns))
	ctx := context.Background()
	red := routing.Redirect{Prefix: subnet, Device: "rt0", Via: tunVia, Metric: 4000}
	if err := w.AddRedirect(ctx, red); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := w.Wait(short, routing.Expect{Prefix: subnet, Via: siteVia, NotDevice: "rt0"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait = %v, want the context's deadline error", err)
	}
	got, err := w.Redirects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != red {
		t.Fatalf("redirects after a failed wait: %+v, want [%+v]", got, red)
	}
	if rs := kernelRoutes(t, ns, subnet); len(rs) != 1 || rs[0].Protocol != Protocol {
		t.Fatalf("kernel routes to %s: %+v, want the redirect only", subnet, rs)
	}

	canceled, cancel2 := context.WithCancel(ctx)
	cancel2()
	if _, err := w.Wait(canceled, routing.Expect{Prefix: subnet, Via: siteVia}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a canceled context = %v", err)
	}
}

func TestRedirectLifecycle(t *testing.T) {
	ns := newHost(t)
	ctx := context.Background()
	w := New(WithHost(ns))
	red := routing.Redirect{Prefix: subnet, Device: "rt0", Via: tunVia}
	for i := 0; i < 2; i++ { // idempotent
		if err := w.AddRedirect(ctx, red); err != nil {
			t.Fatalf("add #%d: %v", i+1, err)
		}
	}
	rs := kernelRoutes(t, ns, subnet)
	if len(rs) != 1 || rs[0].Protocol != Protocol || rs[0].Priority != DefaultRedirectMetric || rs[0].Gw.String() != tunVia.String() {
		t.Fatalf("kernel routes after two adds: %+v", rs)
	}

	// A restarted watcher finds the redirect.
	got, err := New(WithHost(ns)).Redirects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := red
	want.Metric = DefaultRedirectMetric
	if len(got) != 1 || got[0] != want {
		t.Fatalf("Redirects = %+v, want [%+v]", got, want)
	}

	// Changing the metric replaces the redirect.
	red.Metric = 3000
	if err := w.AddRedirect(ctx, red); err != nil {
		t.Fatal(err)
	}
	if got, _ := w.Redirects(ctx); len(got) != 1 || got[0] != red {
		t.Fatalf("Redirects after replacing = %+v, want [%+v]", got, red)
	}

	// The operator's own route to the prefix survives RemoveRedirect.
	addRoute(t, ns, subnet, siteVia, 20)
	if err := w.RemoveRedirect(ctx, subnet); err != nil {
		t.Fatal(err)
	}
	rs = kernelRoutes(t, ns, subnet)
	if len(rs) != 1 || rs[0].Protocol != unix.RTPROT_STATIC || rs[0].Priority != 20 {
		t.Fatalf("kernel routes after RemoveRedirect: %+v, want the static route only", rs)
	}
	if err := w.RemoveRedirect(ctx, subnet); !errors.Is(err, routing.ErrNoRedirect) {
		t.Fatalf("second RemoveRedirect = %v, want ErrNoRedirect", err)
	}
	if got, _ := w.Redirects(ctx); len(got) != 0 {
		t.Fatalf("Redirects after removal = %+v", got)
	}
}

func TestAddRedirectRejectsBadInput(t *testing.T) {
	ns := newHost(t)
	ctx := context.Background()
	w := New(WithHost(ns))
	addRoute(t, ns, subnet, siteVia, 500) // the operator's, at the metric asked for below
	cases := []struct {
		r    routing.Redirect
		want string
	}{
		{routing.Redirect{Prefix: subnet}, "Redirect.Device"},
		{routing.Redirect{Prefix: netip.MustParsePrefix("10.1.0.7/24"), Device: "rt0"}, "host bits"},
		{routing.Redirect{Prefix: subnet, Device: "nosuch0"}, `"nosuch0"`},
		{routing.Redirect{Prefix: subnet, Device: "rt0", Via: netip.MustParseAddr("2001:db8::1")}, "Redirect.Via"},
	}
	for _, c := range cases {
		err := w.AddRedirect(ctx, c.r)
		if !errors.Is(err, routing.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("AddRedirect(%+v) = %v, want ErrInvalid naming %s", c.r, err, c.want)
		}
	}
	err := w.AddRedirect(ctx, routing.Redirect{Prefix: subnet, Device: "rt0", Metric: 500})
	if err == nil || !strings.Contains(err.Error(), "did not install") {
		t.Errorf("redirect colliding with the operator's route: %v", err)
	}
	if rs := kernelRoutes(t, ns, subnet); len(rs) != 1 || rs[0].Protocol != unix.RTPROT_STATIC {
		t.Fatalf("bad input touched the table: %+v", rs)
	}
	if err := w.RemoveRedirect(ctx, netip.Prefix{}); !errors.Is(err, routing.ErrInvalid) {
		t.Errorf("RemoveRedirect(invalid) = %v", err)
	}
	if err := w.RemoveRedirect(ctx, subnet); !errors.Is(err, routing.ErrNoRedirect) {
		t.Errorf("RemoveRedirect of the operator's route = %v, want ErrNoRedirect", err)
	}
}
