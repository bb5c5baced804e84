// Package routingconform is the conformance suite of the
// routing.RouteWatcher contract for routing cores whose table is the
// host's kernel routing table (routing/netlinkroute, locally and behind
// an agent): every promise of package routing, checked by its real
// effect, the kernel's routes as netlink shows them and the route the
// kernel picks (RTM_GETROUTE), never by the watcher's own word alone. A
// user's own backend runs it the same way:
//
//	func TestConformance(t *testing.T) {
//		routingconform.Run(t, routingconform.Harness{
//			New: func(t testing.TB, host string) routing.RouteWatcher { return mycore.New(host) },
//		})
//	}
//
// Each check builds a host of its own (a network namespace with two
// devices: SiteDevice, the permanent site link, and TunnelDevice, which
// stands for a redirect tunnel), so checks run in parallel. It needs
// root: without it the suite fails under CI=true and skips elsewhere.
package routingconform

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
)

// Harness is what the suite needs of a backend.
type Harness struct {
	// New returns the RouteWatcher under test for host, a network
	// namespace the suite built (or one that does not exist: the suite
	// checks it says so). The suite calls it again for the same host to
	// stand for the backend after a restart: a watcher made later must
	// list the redirects an earlier one installed.
	New func(t testing.TB, host string) routing.RouteWatcher
}

// The host's devices and addresses.
const (
	SiteDevice   = "s0"  // 100.64.0.1/30, fd00:ff::1/64: the site link
	TunnelDevice = "rt0" // 100.64.1.1/30, fd00:fe::1/64: stands for the redirect tunnel
)

var (
	// Subnet is the moved subnet the checks redirect and wait for.
	Subnet   = netip.MustParsePrefix("10.1.0.0/24")
	Subnet6  = netip.MustParsePrefix("fd00:1::/64")
	siteVia  = netip.MustParseAddr("100.64.0.2") // the proper route's next hop
	tunVia   = netip.MustParseAddr("100.64.1.2") // the tunnel's far end
	tunVia6  = netip.MustParseAddr("fd00:fe::2")
	siteVia6 = netip.MustParseAddr("fd00:ff::2")
	inside   = netip.MustParseAddr("10.1.0.5") // an address of Subnet
)

// waitLong bounds the waits that must succeed.
const waitLong = 20 * time.Second

// Run runs every check of the suite as a parallel subtest of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	conform.Run(t, checks, h)
}

var checks = []conform.Check[Harness]{
	{Name: "WaitSeesRouteAddedLater", Run: waitSeesRouteAddedLater},
	{Name: "WaitSeesRoutePresent", Run: waitSeesRoutePresent},
	{Name: "WaitEndsWithContext", Run: waitEndsWithContext},
	{Name: "AddRedirectInstallsKernelRoute", Run: addRedirectInstallsKernelRoute},
	{Name: "AddRedirectIdempotentAndListedAfterRestart", Run: addRedirectIdempotent},
	{Name: "RemoveRedirect", Run: removeRedirect},
	{Name: "InvalidInputTouchesNothing", Run: invalidInputTouchesNothing},
	{Name: "IPv6Redirect", Run: ipv6Redirect},
	{Name: "IPv6Convergence", Run: ipv6Convergence},
	{Name: "MissingHost", Run: missingHost},
}

// world is one check's host and the watcher under test.
type world struct {
	ns string
	w  routing.RouteWatcher
}

func newWorld(t testing.TB, h Harness) *world {
	t.Helper()
	lab.RequireRoot(t)
	ns := lab.NewPrefix() + "-rt"
	require.NoError(t, lab.AddNS(ns))
	t.Cleanup(func() { _ = netns.DeleteNamed(ns) })
	nl := handle(t, ns)
	for _, d := range []struct{ name, addr, addr6 string }{
		{SiteDevice, "100.64.0.1/30", "fd00:ff::1/64"}, {TunnelDevice, "100.64.1.1/30", "fd00:fe::1/64"},
	} {
		// A veth whose peer stays here, up: a device with a carrier.
		require.NoError(t, nl.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: d.name}, PeerName: d.name + "p"}))
		p, err := nl.LinkByName(d.name + "p")
		require.NoError(t, err)
		require.NoError(t, nl.LinkSetUp(p))
		require.NoError(t, lab.AddAddr(ns, d.name, d.addr))
		require.NoError(t, lab.AddAddr(ns, d.name, d.addr6))
		l, err := nl.LinkByName(d.name)
		require.NoError(t, err)
		require.NoError(t, nl.LinkSetUp(l))
	}
	return &world{ns: ns, w: h.New(t, ns)}
}

func handle(t testing.TB, ns string) *netlink.Handle {
	t.Helper()
	h, err := lab.Handle(ns)
	require.NoError(t, err)
	t.Cleanup(h.Close)
	return h
}

// addRoute adds an operator's route (protocol static): dst via gw with metric.
func (w *world) addRoute(t testing.TB, dst netip.Prefix, gw netip.Addr, metric int) {
	t.Helper()
	r := &netlink.Route{Dst: ipNet(dst), Gw: gw.AsSlice(), Priority: metric, Protocol: unix.RTPROT_STATIC}
	require.NoError(t, handle(t, w.ns).RouteAdd(r), "route %s via %s metric %d", dst, gw, metric)
}

// kernelRoute is a route to a prefix as the kernel has it.
type kernelRoute struct {
	Device string
	Via    netip.Addr
	Metric int
	Proto  netlink.RouteProtocol
}

// routes returns the main table's routes to exactly dst.
func (w *world) routes(t testing.TB, dst netip.Prefix) []kernelRoute {
	t.Helper()
	h := handle(t, w.ns)
	fam := netlink.FAMILY_V4
	if dst.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	rs, err := h.RouteListFiltered(fam, &netlink.Route{Dst: ipNet(dst), Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	require.NoError(t, err)
	var out []kernelRoute
	for _, r := range rs {
		kr := kernelRoute{Metric: r.Priority, Proto: r.Protocol}
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			kr.Device = l.Attrs().Name
		}
		if a, ok := netip.AddrFromSlice(r.Gw); ok {
			kr.Via = a.Unmap()
		}
		out = append(out, kr)
	}
	return out
}

// chosen is the device the kernel sends a packet to dst through.
func (w *world) chosen(t testing.TB, dst netip.Addr) string {
	t.Helper()
	h := handle(t, w.ns)
	rs, err := h.RouteGet(dst.AsSlice())
	require.NoError(t, err, "route to %s", dst)
	require.NotEmpty(t, rs)
	l, err := h.LinkByIndex(rs[0].LinkIndex)
	require.NoError(t, err)
	return l.Attrs().Name
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// redirects returns what the watcher lists.
func redirects(t testing.TB, w routing.RouteWatcher) []routing.Redirect {
	t.Helper()
	rs, err := w.Redirects(t.Context())
	require.NoError(t, err, "Redirects")
	return rs
}

// installed fails t unless r is the one redirect for its prefix in the
// kernel (through its device, via its next hop, with its metric or, for
// 0, a metric above 1024) and the watcher lists it so; it returns the
// kernel's metric.
func (w *world) installed(t testing.TB, what string, rw routing.RouteWatcher, r routing.Redirect) int {
	t.Helper()
	ks := w.routes(t, r.Prefix)
	if !assert.Len(t, ks, 1, "%s: kernel routes to %s: %+v", what, r.Prefix, ks) {
		return 0
	}
	k := ks[0]
	assert.Equal(t, r.Device, k.Device, "%s: the kernel route's device", what)
	assert.Equal(t, r.Via, k.Via, "%s: the kernel route's next hop", what)
	if r.Metric != 0 {
		assert.Equal(t, r.Metric, k.Metric, "%s: the kernel route's metric", what)
	} else {
		assert.Greater(t, k.Metric, 1024, "%s: the default metric must be high, so real routes win", what)
	}
	var got []routing.Redirect
	for _, l := range redirects(t, rw) {
		if l.Prefix == r.Prefix {
			got = append(got, l)
		}
	}
	if assert.Len(t, got, 1, "%s: Redirects for %s", what, r.Prefix) {
		g := got[0]
		assert.Equal(t, r.Device, g.Device, "%s: listed device", what)
		assert.Equal(t, r.Via, g.Via, "%s: listed next hop", what)
		if g.Metric != 0 {
			assert.Equal(t, k.Metric, g.Metric, "%s: the listed metric is not the kernel's", what)
		}
	}
	return k.Metric
}

type waitResult struct {
	c   routing.Converged
	err error
}

func startWait(ctx context.Context, rw routing.RouteWatcher, e routing.Expect) <-chan waitResult {
	res := make(chan waitResult, 1)
	go func() {
		c, err := rw.Wait(ctx, e)
		res <- waitResult{c, err}
	}()
	return res
}

// Wait returns on a matching route added after the call, not on the
// ones that do not match (another prefix, the redirect's device, another
// next hop), and says how long it waited; a route added right as Wait
// is called is not missed either.
func waitSeesRouteAddedLater(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	require.NoError(t, w.w.AddRedirect(ctx, routing.Redirect{Prefix: Subnet, Device: TunnelDevice, Via: tunVia}))
	e := routing.Expect{Prefix: Subnet, Via: siteVia, NotDevice: TunnelDevice}
	res := startWait(ctx, w.w, e)
	time.Sleep(300 * time.Millisecond) // Wait is under way (over a network, too)
	w.addRoute(t, netip.MustParsePrefix("10.1.0.0/16"), siteVia, 10)
	w.addRoute(t, Subnet, tunVia, 30) // through the tunnel device: NotDevice
	select {
	case r := <-res:
		t.Fatalf("Wait returned on a route that does not match: %+v, %v", r.c, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	w.addRoute(t, Subnet, siteVia, 20)
	select {
	case r := <-res:
		require.NoError(t, r.err)
		assert.Equal(t, Subnet, r.c.Route.Prefix)
		assert.Equal(t, siteVia, r.c.Route.Via)
		assert.Equal(t, SiteDevice, r.c.Route.Device)
		assert.Greater(t, r.c.After, 300*time.Millisecond, "After, for a route added after the call")
	case <-time.After(waitLong):
		t.Fatal("Wait did not return on the matching route")
	}

	// A route that appears as Wait starts: before it subscribed, or after.
	for i := range 5 {
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i), 0}), 24)
		res := startWait(ctx, w.w, routing.Expect{Prefix: p, Device: SiteDevice})
		w.addRoute(t, p, siteVia, 20)
		select {
		case r := <-res:
			require.NoError(t, r.err, "Wait for %s", p)
		case <-time.After(waitLong):
			t.Fatalf("Wait missed %s, added as it was called", p)
		}
	}
}

// Wait on a route that is already there returns it at once, After 0.
func waitSeesRoutePresent(t testing.TB, h Harness) {
	w := newWorld(t, h)
	w.addRoute(t, Subnet, siteVia, 20)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	c, err := w.w.Wait(ctx, routing.Expect{Prefix: Subnet, Device: SiteDevice})
	require.NoError(t, err)
	assert.Equal(t, routing.Route{Prefix: Subnet, Via: siteVia, Device: SiteDevice, Protocol: c.Route.Protocol}, c.Route)
	assert.Zero(t, c.After, "After, for a route present at the call")
}

// A Wait that cannot be satisfied ends with its context's error
// (deadline, cancel); the redirect it must not count stays.
func waitEndsWithContext(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	red := routing.Redirect{Prefix: Subnet, Device: TunnelDevice, Via: tunVia, Metric: 4000}
	require.NoError(t, w.w.AddRedirect(ctx, red))
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := w.w.Wait(short, routing.Expect{Prefix: Subnet, NotDevice: TunnelDevice})
	assert.ErrorIs(t, err, context.DeadlineExceeded, "Wait past its deadline (the redirect must not count)")
	canceled, cancel2 := context.WithCancel(ctx)
	cancel2()
	_, err = w.w.Wait(canceled, routing.Expect{Prefix: Subnet, Via: siteVia})
	assert.ErrorIs(t, err, context.Canceled, "Wait with a canceled context")
	w.installed(t, "after the failed waits", w.w, red)
}

// AddRedirect installs a real kernel route through the tunnel device,
// with a default metric that a real route beats; the kernel sends the
// prefix into the tunnel until the real route comes, then by the real
// one; RemoveRedirect takes the redirect alone away.
func addRedirectInstallsKernelRoute(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	red := routing.Redirect{Prefix: Subnet, Device: TunnelDevice, Via: tunVia}
	require.NoError(t, w.w.AddRedirect(ctx, red))
	w.installed(t, "after AddRedirect", w.w, red)
	assert.Equal(t, TunnelDevice, w.chosen(t, inside), "the kernel's route into the moved subnet")
	w.addRoute(t, Subnet, siteVia, 20)
	assert.Equal(t, SiteDevice, w.chosen(t, inside), "the real route must win over the redirect")
	require.NoError(t, w.w.RemoveRedirect(ctx, Subnet))
	ks := w.routes(t, Subnet)
	assert.Equal(t, []kernelRoute{{Device: SiteDevice, Via: siteVia, Metric: 20, Proto: unix.RTPROT_STATIC}}, ks,
		"after RemoveRedirect, the real route alone")
	assert.Empty(t, redirects(t, w.w), "Redirects after RemoveRedirect")
}

// AddRedirect twice is one route; a watcher made later lists it; a new
// metric replaces it (still one route).
func addRedirectIdempotent(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	red := routing.Redirect{Prefix: Subnet, Device: TunnelDevice, Via: tunVia, Metric: 3000}
	require.NoError(t, w.w.AddRedirect(ctx, red))
	require.NoError(t, w.w.AddRedirect(ctx, red), "the same redirect again")
	w.installed(t, "after two adds", w.w, red)
	w.installed(t, "listed by a watcher made later", h.New(t, w.ns), red)
	red.Metric = 3500
	require.NoError(t, w.w.AddRedirect(ctx, red), "a new metric")
	w.installed(t, "after a new metric", w.w, red)
	red.Metric = 0
	require.NoError(t, w.w.AddRedirect(ctx, red), "the default metric")
	w.installed(t, "after the default metric", w.w, red)
}

// RemoveRedirect of a prefix without a redirect wraps ErrNoRedirect and
// leaves an operator's route to it alone; so does a second removal.
func removeRedirect(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	assert.ErrorIs(t, w.w.RemoveRedirect(ctx, Subnet), routing.ErrNoRedirect, "on a clean host")
	w.addRoute(t, Subnet, siteVia, 20)
	assert.ErrorIs(t, w.w.RemoveRedirect(ctx, Subnet), routing.ErrNoRedirect, "beside an operator's route")
	assert.Len(t, w.routes(t, Subnet), 1, "the operator's route")
	require.NoError(t, w.w.AddRedirect(ctx, routing.Redirect{Prefix: Subnet, Device: TunnelDevice}))
	require.NoError(t, w.w.RemoveRedirect(ctx, Subnet))
	assert.ErrorIs(t, w.w.RemoveRedirect(ctx, Subnet), routing.ErrNoRedirect, "a second removal")
	assert.Equal(t, []kernelRoute{{Device: SiteDevice, Via: siteVia, Metric: 20, Proto: unix.RTPROT_STATIC}}, w.routes(t, Subnet))
}

// Invalid input wraps ErrInvalid naming the field and touches nothing;
// a device the host lacks is refused too.
func invalidInputTouchesNothing(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	w.addRoute(t, Subnet, siteVia, 500)
	for _, c := range []struct {
		r     routing.Redirect
		field string
	}{
		{routing.Redirect{Prefix: Subnet}, "Redirect.Device"},
		{routing.Redirect{Prefix: netip.MustParsePrefix("10.1.0.7/24"), Device: TunnelDevice}, "Redirect.Prefix"},
		{routing.Redirect{Device: TunnelDevice}, "Redirect.Prefix"},
		{routing.Redirect{Prefix: Subnet, Device: TunnelDevice, Metric: -1}, "Redirect.Metric"},
	} {
		err := w.w.AddRedirect(ctx, c.r)
		if assert.ErrorIs(t, err, routing.ErrInvalid, "AddRedirect(%+v)", c.r) {
			assert.ErrorContains(t, err, c.field, "the error must name the field")
		}
	}
	assert.Error(t, w.w.AddRedirect(ctx, routing.Redirect{Prefix: Subnet, Device: "nosuch0"}), "a device the host lacks")
	for _, c := range []struct {
		e     routing.Expect
		field string
	}{
		{routing.Expect{}, "Expect.Prefix"},
		{routing.Expect{Prefix: netip.MustParsePrefix("10.1.0.7/24")}, "Expect.Prefix"},
		{routing.Expect{Prefix: Subnet, Via: netip.MustParseAddr("fd00::1")}, "Expect.Via"},
	} {
		short, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := w.w.Wait(short, c.e)
		cancel()
		if assert.ErrorIs(t, err, routing.ErrInvalid, "Wait(%+v)", c.e) {
			assert.ErrorContains(t, err, c.field, "the error must name the field")
		}
	}
	assert.ErrorIs(t, w.w.RemoveRedirect(ctx, netip.Prefix{}), routing.ErrInvalid, "RemoveRedirect of an invalid prefix")
	assert.Equal(t, []kernelRoute{{Device: SiteDevice, Via: siteVia, Metric: 500, Proto: unix.RTPROT_STATIC}}, w.routes(t, Subnet),
		"bad input touched the table")
	assert.Empty(t, redirects(t, w.w))
}

// An IPv6 redirect is a kernel route as an IPv4 one is.
func ipv6Redirect(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	red := routing.Redirect{Prefix: Subnet6, Device: TunnelDevice, Via: tunVia6, Metric: 3000}
	require.NoError(t, w.w.AddRedirect(ctx, red))
	w.installed(t, "an IPv6 redirect", w.w, red)
	assert.Equal(t, TunnelDevice, w.chosen(t, netip.MustParseAddr("fd00:1::5")))
	wctx, cancel := context.WithTimeout(ctx, waitLong)
	defer cancel()
	c, err := w.w.Wait(wctx, routing.Expect{Prefix: Subnet6, Device: TunnelDevice})
	require.NoError(t, err)
	assert.Equal(t, tunVia6, c.Route.Via)
	require.NoError(t, w.w.RemoveRedirect(ctx, Subnet6))
	assert.Empty(t, w.routes(t, Subnet6))
}

// A moved IPv6 subnet converges as an IPv4 one does: with its redirect
// in place, Wait for the real route (not through the tunnel device)
// ignores the redirect and returns once the real route comes; the kernel
// then sends by it, and RemoveRedirect leaves it alone.
func ipv6Convergence(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	require.NoError(t, w.w.AddRedirect(ctx, routing.Redirect{Prefix: Subnet6, Device: TunnelDevice, Via: tunVia6}))
	res := startWait(ctx, w.w, routing.Expect{Prefix: Subnet6, Via: siteVia6, NotDevice: TunnelDevice})
	select {
	case r := <-res:
		t.Fatalf("Wait returned on the redirect: %+v, %v", r.c, r.err)
	case <-time.After(300 * time.Millisecond):
	}
	w.addRoute(t, Subnet6, siteVia6, 20)
	select {
	case r := <-res:
		require.NoError(t, r.err)
		assert.Equal(t, routing.Route{Prefix: Subnet6, Via: siteVia6, Device: SiteDevice, Protocol: r.c.Route.Protocol}, r.c.Route)
	case <-time.After(waitLong):
		t.Fatal("Wait did not return on the real IPv6 route")
	}
	assert.Equal(t, SiteDevice, w.chosen(t, netip.MustParseAddr("fd00:1::5")), "the real IPv6 route must win over the redirect")
	require.NoError(t, w.w.RemoveRedirect(ctx, Subnet6))
	assert.Equal(t, []kernelRoute{{Device: SiteDevice, Via: siteVia6, Metric: 20, Proto: unix.RTPROT_STATIC}}, w.routes(t, Subnet6),
		"after RemoveRedirect, the real IPv6 route alone")
	assert.Empty(t, redirects(t, w.w), "Redirects after RemoveRedirect")
}

// A watcher of a host that does not exist: every method fails with an
// error wrapping host.ErrNotFound that names it.
func missingHost(t testing.TB, h Harness) {
	lab.RequireRoot(t)
	gone := lab.NewPrefix() + "-gone"
	rw := h.New(t, gone)
	ctx, cancel := context.WithTimeout(t.Context(), waitLong)
	defer cancel()
	calls := map[string]func() error{
		"Wait":           func() error { _, err := rw.Wait(ctx, routing.Expect{Prefix: Subnet}); return err },
		"AddRedirect":    func() error { return rw.AddRedirect(ctx, routing.Redirect{Prefix: Subnet, Device: TunnelDevice}) },
		"RemoveRedirect": func() error { return rw.RemoveRedirect(ctx, Subnet) },
		"Redirects":      func() error { _, err := rw.Redirects(ctx); return err },
	}
	names := []string{"Wait", "AddRedirect", "RemoveRedirect", "Redirects"}
	for _, name := range names {
		err := calls[name]()
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s on a missing host waited for its deadline", name)
			continue
		}
		if assert.ErrorIs(t, err, host.ErrNotFound, "%s on a missing host", name) {
			assert.ErrorContains(t, err, gone, "%s: the error must name the host", name)
		}
	}
}
