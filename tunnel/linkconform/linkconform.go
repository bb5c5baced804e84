// Package linkconform is the conformance suite of the tunnel.LinkEnd
// contract: two hosts' ends composed as the controller composes them
// (tunnel.Pair's steps, one end per host), every promise of package
// tunnel checked by its real effect in a lab of network namespaces: the
// link's devices and routes in the kernel, traffic between a peer on
// one host's LAN and a VM on the other's going through (or not), and a
// capture of the untrusted network between them that sees no payload in
// clear, while a control sent in clear is counted. tunnel/wireguard's
// End runs it, locally and behind agents; a user's own LinkEnd runs it
// the same way:
//
//	func TestConformance(t *testing.T) {
//		linkconform.Run(t, linkconform.Harness{Kind: tunnel.WireGuard,
//			New: func(t testing.TB, host string) tunnel.LinkEnd { return myend.New(host) },
//		})
//	}
//
// It needs root: without it the suite fails under CI=true and skips
// elsewhere. Each check builds a world of its own, so checks run in
// parallel.
package linkconform

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/netip"
	"slices"
	"strings"
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
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// Harness is what the suite needs of a backend.
type Harness struct {
	// Kind is the links' kind (default tunnel.WireGuard). An IPsec end
	// has no device (EndState.Device "").
	Kind tunnel.Kind
	// New returns host's LinkEnd: host is a network namespace the suite
	// built (or one that does not exist: the suite checks it says so).
	// The suite calls it again for the same host to stand for the
	// backend after a restart: an end made later must list the ends an
	// earlier one left on the host.
	New func(t testing.TB, host string) tunnel.LinkEnd
}

// Run runs every check of the suite as a parallel subtest of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	conform.Run(t, checks, h)
}

var checks = []conform.Check[Harness]{
	{Name: "OpenCarriesNothing", Run: openCarriesNothing},
	{Name: "ConnectProvesTheEnds", Run: connectProvesTheEnds},
	{Name: "ActivateCarriesEncrypted", Run: activateCarriesEncrypted},
	{Name: "ListAfterRestart", Run: listAfterRestart},
	{Name: "CloseRemovesEverything", Run: closeRemovesEverything},
	{Name: "OpenRefusesBadInput", Run: openRefusesBadInput},
	{Name: "DualStackOverIPv6Underlay", Run: dualStackOverIPv6Underlay},
	{Name: "MissingHost", Run: missingHost},
	{Name: "HostGone", Run: hostGone},
}

var (
	vmHost   = netip.PrefixFrom(lab.VMAddr, 32)
	peerHost = netip.PrefixFrom(lab.PeerAddr, 32)
	// marker is the payload the wan capture looks for in clear.
	marker = []byte("SEALIFT-LINKCONFORM-MARKER")
)

// world is the lab after the VM moved from A to B (10.1.0.10 is an
// endpoint on B's br0; its peer 10.1.0.20 stays on A's), the two hosts'
// ends, and the link's spec: Secure at A, Remote at B.
type world struct {
	*lab.Lab
	h      Harness
	vm     string // the moved VM's netns (at B)
	secure tunnel.LinkEnd
	remote tunnel.LinkEnd
	spec   tunnel.Spec
}

func newWorld(t testing.TB, h Harness) *world {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	nl, err := lab.Handle(l.A)
	require.NoError(t, err)
	port, err := nl.LinkByName("vm0")
	require.NoError(t, err)
	require.NoError(t, nl.LinkDel(port))
	nl.Close()
	require.NoError(t, netns.DeleteNamed(l.VM))
	vm, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	require.NoError(t, err)
	if h.Kind == "" {
		h.Kind = tunnel.WireGuard
	}
	w := &world{Lab: l, h: h, vm: vm, secure: h.New(t, l.A), remote: h.New(t, l.B), spec: tunnel.Spec{
		ID: randomID(), Kind: h.Kind, ProxyARP: true,
		Secure: tunnel.End{Host: l.A, Underlay: lab.AUplink, Protected: []netip.Prefix{peerHost}},
		Remote: tunnel.End{Host: l.B, Underlay: lab.BUnderlay, Protected: []netip.Prefix{vmHost}},
	}}
	// Whatever a check leaves open goes before the lab's namespaces
	// (an open device of an embedded implementation keeps one alive).
	t.Cleanup(func() {
		ctx := context.Background()
		for _, e := range []tunnel.LinkEnd{w.secure, w.remote} {
			if ends, err := e.List(ctx); err == nil {
				for _, s := range ends {
					_ = e.Close(ctx, s.Spec.ID)
				}
			}
		}
	})
	return w
}

func randomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "c" + hex.EncodeToString(b)
}

// open opens both ends and checks what they report.
func (w *world) open(t testing.TB) (s, r tunnel.EndState) {
	t.Helper()
	ctx := t.Context()
	s, err := w.secure.Open(ctx, w.spec, tunnel.SecureRole)
	require.NoError(t, err, "Open the secure end")
	r, err = w.remote.Open(ctx, w.spec, tunnel.RemoteRole)
	require.NoError(t, err, "Open the remote end")
	for _, e := range []struct {
		st       tunnel.EndState
		role     tunnel.Role
		underlay netip.Addr
	}{{s, tunnel.SecureRole, w.spec.Secure.Underlay}, {r, tunnel.RemoteRole, w.spec.Remote.Underlay}} {
		assert.Equal(t, w.spec.ID, e.st.Spec.ID, "%s end: Spec.ID", e.role)
		assert.Equal(t, e.role, e.st.Role, "%s end: Role", e.role)
		assert.NotEmpty(t, e.st.Backend, "%s end: Backend", e.role)
		assert.NoError(t, e.st.Public.Validate(), "%s end: Public", e.role)
		assert.Equal(t, e.underlay, e.st.Public.Endpoint.Addr(), "%s end: Public.Endpoint is its underlay address", e.role)
		assert.False(t, e.st.Connected || e.st.Active, "%s end: Connected or Active after Open", e.role)
		if w.h.Kind != tunnel.IPsec {
			assert.NotEmpty(t, e.st.Device, "%s end: Device", e.role)
		}
	}
	assert.NotEqual(t, s.Public.Key, r.Public.Key, "the two ends' keys")
	return s, r
}

// connect gives each end the other's Public part.
func (w *world) connect(t testing.TB, s, r tunnel.EndState) {
	t.Helper()
	require.NoError(t, w.secure.Connect(t.Context(), w.spec.ID, r.Public), "Connect the secure end")
	require.NoError(t, w.remote.Connect(t.Context(), w.spec.ID, s.Public), "Connect the remote end")
}

// activate activates the secure end, then the remote end.
func (w *world) activate(t testing.TB) {
	t.Helper()
	require.NoError(t, w.secure.Activate(t.Context(), w.spec.ID), "Activate the secure end")
	require.NoError(t, w.remote.Activate(t.Context(), w.spec.ID), "Activate the remote end")
}

// device reports whether host has an interface named dev.
func device(t testing.TB, host, dev string) bool {
	t.Helper()
	h, err := lab.Handle(host)
	require.NoError(t, err)
	defer h.Close()
	_, err = h.LinkByName(dev)
	return err == nil
}

// routesTo lists host's routes (any table but local) to p.
func routesTo(t testing.TB, host string, p netip.Prefix) []string {
	t.Helper()
	h, err := lab.Handle(host)
	require.NoError(t, err)
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_UNSPEC}, netlink.RT_FILTER_TABLE)
	require.NoError(t, err)
	var out []string
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == p.String() && r.Table != unix.RT_TABLE_LOCAL {
			out = append(out, r.String())
		}
	}
	return out
}

// listed returns host's end of the link as e lists it.
func (w *world) listed(t testing.TB, e tunnel.LinkEnd) (tunnel.EndState, bool) {
	t.Helper()
	ends, err := e.List(t.Context())
	require.NoError(t, err, "List")
	for _, s := range ends {
		if s.Spec.ID == w.spec.ID {
			return s, true
		}
	}
	return tunnel.EndState{}, false
}

// reach counts the peer's pings the VM answers (and the other way).
func (w *world) reach(t testing.TB, n int) (toVM, toPeer int) {
	t.Helper()
	toVM, _ = lab.Ping(w.Peer, lab.VMAddr, n, time.Second)
	toPeer, _ = lab.Ping(w.vm, lab.PeerAddr, n, time.Second)
	return toVM, toPeer
}

// exchange runs TCP, UDP and ICMP carrying the marker between the peer
// and the VM, both ways, while the wan's interface towards B is
// captured, then sends one control packet with the marker in clear
// across the wan. It returns how many messages came back (of 3 kinds x
// n x 2 ways) and the capture.
func (w *world) exchange(t testing.TB, n int) (int, lab.CaptureStats) {
	t.Helper()
	capt, err := lab.StartCapture(w.WAN, "b0", marker)
	require.NoError(t, err)
	payload := append([]byte("payload "), marker...)
	got := 0
	for _, d := range []struct {
		from, to string
		addr     netip.Addr
	}{{w.Peer, w.vm, lab.VMAddr}, {w.vm, w.Peer, lab.PeerAddr}} {
		tcp, err := lab.StartTCPEcho(d.to, netip.AddrPortFrom(d.addr, 7001).String())
		require.NoError(t, err)
		udp, err := lab.StartUDPEcho(d.to, netip.AddrPortFrom(d.addr, 7002).String())
		require.NoError(t, err)
		r1, _ := lab.SendTCP(d.from, netip.AddrPortFrom(d.addr, 7001).String(), payload, n)
		r2, _ := lab.SendUDP(d.from, netip.AddrPortFrom(d.addr, 7002).String(), payload, n)
		r3, _ := lab.Ping(d.from, d.addr, n, 2*time.Second)
		tcp.Close()
		udp.Close()
		got += r1 + r2 + r3
	}
	require.NoError(t, lab.SendControl(w.A, lab.BUnderlay, marker))
	time.Sleep(100 * time.Millisecond)
	return got, capt.Stop()
}

// Open makes each host's end (a device, for a link that has one) with a
// key of its own, carrying nothing: with both ends connected but not
// active, the peer and the VM do not reach each other.
func openCarriesNothing(t testing.TB, h Harness) {
	w := newWorld(t, h)
	s, r := w.open(t)
	if h.Kind != tunnel.IPsec {
		assert.True(t, device(t, w.A, s.Device), "the secure end's device %s at A", s.Device)
		assert.True(t, device(t, w.B, r.Device), "the remote end's device %s at B", r.Device)
	}
	w.connect(t, s, r)
	toVM, toPeer := w.reach(t, 2)
	assert.Zero(t, toVM+toPeer, "traffic crossed a link that was not activated")
	assert.Empty(t, routesTo(t, w.A, vmHost), "A routes the VM before Activate")
	assert.Empty(t, routesTo(t, w.B, peerHost), "B routes the peer before Activate")
}

// Connected, the ends prove each other (Verify: a handshake, counters)
// before they carry anything; Verify before Connect wraps ErrNotProven;
// Connect of an unknown link wraps ErrNoLink, a bad Public ErrInvalid.
func connectProvesTheEnds(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	s, r := w.open(t)
	short, cancel := context.WithTimeout(ctx, 2*time.Second)
	_, err := w.secure.Verify(short, w.spec.ID)
	cancel()
	assert.ErrorIs(t, err, tunnel.ErrNotProven, "Verify before Connect")
	assert.ErrorIs(t, w.secure.Connect(ctx, "nolink", r.Public), tunnel.ErrNoLink, "Connect of an unknown link")
	err = w.secure.Connect(ctx, w.spec.ID, tunnel.Public{Endpoint: r.Public.Endpoint})
	if assert.ErrorIs(t, err, tunnel.ErrInvalid, "Connect with an empty key") {
		assert.ErrorContains(t, err, "Public.Key")
	}
	w.connect(t, s, r)
	for _, e := range []struct {
		name string
		end  tunnel.LinkEnd
	}{{"secure", w.secure}, {"remote", w.remote}} {
		st, ok := w.listed(t, e.end)
		if assert.True(t, ok, "%s end listed", e.name) {
			assert.True(t, st.Connected, "%s end Connected", e.name)
			assert.False(t, st.Active, "%s end Active before Activate", e.name)
		}
		vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		p, err := e.end.Verify(vctx, w.spec.ID)
		cancel()
		if assert.NoError(t, err, "Verify the %s end", e.name) && h.Kind == tunnel.WireGuard {
			assert.False(t, p.Handshake.IsZero(), "%s end: no handshake in the proof", e.name)
			assert.Positive(t, p.TxBytes+p.TxPackets, "%s end: nothing sent", e.name)
		}
	}
	_, err = w.secure.Verify(ctx, "nolink")
	assert.ErrorIs(t, err, tunnel.ErrNoLink, "Verify of an unknown link")
}

// Activated, the link carries the peer's and the VM's traffic both ways
// (TCP, UDP, ICMP), and nothing of it crosses the wan in clear (a
// control in clear is counted, and the link's own packets are there);
// Activate again announces the proxied addresses (gratuitous ARP heard
// on each LAN) and changes nothing else; Verify's counters rose; List
// says Active.
func activateCarriesEncrypted(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	s, r := w.open(t)
	w.connect(t, s, r)
	w.activate(t)
	require.NoError(t, lab.WaitReachable(w.Peer, lab.VMAddr, 10*time.Second), "the peer reaches the VM through the link")
	const n = 5
	got, st := w.exchange(t, n)
	assert.Equal(t, 3*n*2, got, "messages through the link")
	assert.Equal(t, 1, st.Marker, "frames with the marker in clear on the wan (1: the control)")
	assert.Zero(t, st.Dropped, "the capture dropped frames")
	assert.GreaterOrEqual(t, st.ByProto[unix.IPPROTO_UDP]+st.ByProto[50], 3*n*2, "the link's own packets on the wan")
	// Activate again announces: the peer hears of the VM's address, the
	// VM of the peer's (ARP), without asking.
	var capts []*lab.Capture
	for _, c := range []struct {
		ns    string
		watch netip.Prefix
	}{{w.Peer, vmHost}, {w.vm, peerHost}} {
		capt, err := lab.StartCaptureWith(c.ns, lab.CaptureOptions{Interface: "eth0", IngressOnly: true,
			Classify: &lab.Classifier{Watch: []netip.Prefix{c.watch}}})
		require.NoError(t, err)
		capts = append(capts, capt)
	}
	require.NoError(t, w.secure.Activate(ctx, w.spec.ID), "Activate an active end")
	require.NoError(t, w.remote.Activate(ctx, w.spec.ID), "Activate an active end")
	time.Sleep(500 * time.Millisecond)
	for i, who := range []string{"the peer heard nothing of the VM's address", "the VM heard nothing of the peer's address"} {
		assert.Positive(t, capts[i].Stop().Watched, "Activate again: %s", who)
	}
	toVM, toPeer := w.reach(t, 2)
	assert.Equal(t, 4, toVM+toPeer, "after Activate again")
	for _, e := range []struct {
		name string
		end  tunnel.LinkEnd
	}{{"secure", w.secure}, {"remote", w.remote}} {
		st, ok := w.listed(t, e.end)
		assert.True(t, ok && st.Active && st.Connected, "%s end listed active and connected: %+v", e.name, st)
		p, err := e.end.Verify(ctx, w.spec.ID)
		if assert.NoError(t, err, "Verify the %s end", e.name) {
			assert.Positive(t, p.TxBytes+p.TxPackets, "%s end: Tx", e.name)
			assert.Positive(t, p.RxBytes+p.RxPackets, "%s end: Rx", e.name)
		}
	}
}

// An end made later on the host (a restart) lists the ends an earlier
// one left, as they were.
func listAfterRestart(t testing.TB, h Harness) {
	w := newWorld(t, h)
	s, r := w.open(t)
	w.connect(t, s, r)
	w.activate(t)
	for _, e := range []struct {
		host string
		was  tunnel.EndState
	}{{w.A, s}, {w.B, r}} {
		later := h.New(t, e.host)
		st, ok := w.listed(t, later)
		if !assert.True(t, ok, "the end at %s, listed by an end made later", e.host) {
			continue
		}
		assert.Equal(t, e.was.Role, st.Role)
		assert.Equal(t, e.was.Device, st.Device)
		assert.Equal(t, e.was.Public.Key, st.Public.Key, "the end's public key")
		assert.True(t, st.Connected && st.Active, "connected and active: %+v", st)
		assert.Equal(t, w.spec.Secure.Protected, st.Spec.Secure.Protected)
		assert.Equal(t, w.spec.Remote.Protected, st.Spec.Remote.Protected)
	}
}

// Close removes the end: its device, its routes, its listing; the link
// carries nothing any more; Close again, or of an unknown link, is a
// no-op; the other methods then wrap ErrNoLink.
func closeRemovesEverything(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	s, r := w.open(t)
	w.connect(t, s, r)
	w.activate(t)
	require.NoError(t, lab.WaitReachable(w.Peer, lab.VMAddr, 10*time.Second))
	require.NoError(t, w.remote.Close(ctx, w.spec.ID), "Close the remote end")
	require.NoError(t, w.secure.Close(ctx, w.spec.ID), "Close the secure end")
	for _, e := range []struct {
		host, dev string
		end       tunnel.LinkEnd
		other     netip.Prefix
	}{{w.A, s.Device, w.secure, vmHost}, {w.B, r.Device, w.remote, peerHost}} {
		if e.dev != "" {
			assert.False(t, device(t, e.host, e.dev), "%s: device %s after Close", e.host, e.dev)
		}
		assert.Empty(t, routesTo(t, e.host, e.other), "%s: routes after Close", e.host)
		_, ok := w.listed(t, e.end)
		assert.False(t, ok, "%s: the end is still listed after Close", e.host)
		assert.NoError(t, e.end.Close(ctx, w.spec.ID), "Close again")
		assert.NoError(t, e.end.Close(ctx, "nolink"), "Close of an unknown link")
		assert.ErrorIs(t, e.end.Activate(ctx, w.spec.ID), tunnel.ErrNoLink, "Activate after Close")
		assert.ErrorIs(t, e.end.Connect(ctx, w.spec.ID, s.Public), tunnel.ErrNoLink, "Connect after Close")
		_, err := e.end.Verify(ctx, w.spec.ID)
		assert.ErrorIs(t, err, tunnel.ErrNoLink, "Verify after Close")
	}
	toVM, toPeer := w.reach(t, 2)
	assert.Zero(t, toVM+toPeer, "traffic after Close")
}

// Open refuses what it cannot make, touching nothing: an invalid spec
// or role (ErrInvalid naming the field) and a link ID already open here
// (ErrExists; the open end stays as it was).
func openRefusesBadInput(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	links := func() []string {
		nl, err := lab.Handle(w.A)
		require.NoError(t, err)
		defer nl.Close()
		ls, err := nl.LinkList()
		require.NoError(t, err)
		var names []string
		for _, l := range ls {
			names = append(names, l.Attrs().Name)
		}
		slices.Sort(names)
		return names
	}
	before := links()
	for _, c := range []struct {
		change func(*tunnel.Spec)
		field  string
	}{
		{func(s *tunnel.Spec) { s.ID = "" }, "ID"},
		{func(s *tunnel.Spec) { s.ID = "toolongid" }, "ID"},
		{func(s *tunnel.Spec) { s.ID = "Bad-1" }, "ID"},
		{func(s *tunnel.Spec) { s.Kind = "gre" }, "Kind"},
		{func(s *tunnel.Spec) { s.Secure.Underlay = netip.Addr{} }, "Secure.Underlay"},
		{func(s *tunnel.Spec) { s.Remote.Protected = nil }, "Remote.Protected"},
		{func(s *tunnel.Spec) { s.Remote.MAC = "zz" }, "Remote.MAC"},
		{func(s *tunnel.Spec) { s.Remote.Underlay = s.Secure.Underlay }, "Underlay"},
		{func(s *tunnel.Spec) { s.MTU = 100 }, "MTU"},
	} {
		spec := w.spec
		spec.Secure.Protected = slices.Clone(spec.Secure.Protected)
		c.change(&spec)
		_, err := w.secure.Open(ctx, spec, tunnel.SecureRole)
		if assert.ErrorIs(t, err, tunnel.ErrInvalid, "Open with a bad %s", c.field) {
			assert.ErrorContains(t, err, c.field, "the error must name the field")
		}
	}
	_, err := w.secure.Open(ctx, w.spec, tunnel.Role("middle"))
	assert.ErrorIs(t, err, tunnel.ErrInvalid, "Open with a bad role")
	ends, err := w.secure.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, ends, "refused Opens left ends")
	assert.Equal(t, before, links(), "refused Opens changed A's interfaces")

	s, err := w.secure.Open(ctx, w.spec, tunnel.SecureRole)
	require.NoError(t, err)
	_, err = w.secure.Open(ctx, w.spec, tunnel.SecureRole)
	assert.ErrorIs(t, err, tunnel.ErrExists, "Open of a link ID already open here")
	st, ok := w.listed(t, w.secure)
	if assert.True(t, ok, "the open end after a refused second Open") {
		assert.Equal(t, s.Public.Key, st.Public.Key, "a refused second Open replaced the end's key")
	}
}

// An end of a host that does not exist: Open fails with an error
// wrapping host.ErrNotFound that names it.
func missingHost(t testing.TB, h Harness) {
	lab.RequireRoot(t)
	gone := lab.NewPrefix() + "-gone"
	e := h.New(t, gone)
	kind := h.Kind
	if kind == "" {
		kind = tunnel.WireGuard
	}
	spec := tunnel.Spec{ID: randomID(), Kind: kind,
		Secure: tunnel.End{Host: gone, Underlay: lab.AUplink, Protected: []netip.Prefix{peerHost}},
		Remote: tunnel.End{Host: "other", Underlay: lab.BUnderlay, Protected: []netip.Prefix{vmHost}}}
	_, err := e.Open(t.Context(), spec, tunnel.SecureRole)
	if assert.ErrorIs(t, err, host.ErrNotFound, "Open on a missing host") {
		assert.ErrorContains(t, err, gone, "the error must name the host")
	}
}

// Once an end's host (network namespace) is gone, Activate and Verify
// there fail with an error wrapping host.ErrNotFound that names it
// (Verify's wraps ErrNotProven too); Close still succeeds and the end is
// no longer listed.
func hostGone(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	s, r := w.open(t)
	w.connect(t, s, r)
	w.activate(t)
	require.NoError(t, netns.DeleteNamed(w.B))
	err := w.remote.Activate(ctx, w.spec.ID)
	if assert.ErrorIs(t, err, host.ErrNotFound, "Activate once the host is gone") {
		assert.ErrorContains(t, err, w.B, "the error must name the host")
	}
	_, err = w.remote.Verify(ctx, w.spec.ID)
	if assert.ErrorIs(t, err, host.ErrNotFound, "Verify once the host is gone") {
		assert.ErrorContains(t, err, w.B, "the error must name the host")
	}
	assert.ErrorIs(t, err, tunnel.ErrNotProven, "Verify once the host is gone")
	assert.NoError(t, w.remote.Close(ctx, w.spec.ID), "Close once the host is gone")
	_, ok := w.listed(t, w.remote)
	assert.False(t, ok, "the end is still listed after Close")
}

// The dual-stack world's IPv6 addresses: the VM's LAN fd00:1::/64 (VM
// ::10 at B, peer ::20 at A, both hosts' br0 ::1) and a v6-only wan
// between A's underlay fd00:ff::1 and B's fd01:2::1.
var (
	vm6         = netip.MustParseAddr("fd00:1::10")
	peer6       = netip.MustParseAddr("fd00:1::20")
	aUnderlay6  = netip.MustParseAddr("fd00:ff::1")
	bUnderlay6  = netip.MustParseAddr("fd01:2::1")
	vmHost6     = netip.PrefixFrom(vm6, 128)
	peerHost6   = netip.PrefixFrom(peer6, 128)
	protected46 = []netip.Prefix{vmHost, vmHost6, peerHost, peerHost6}
)

// dualStack gives the world IPv6 on the VM's LAN and an IPv6-only wan:
// IPv6 underlay addresses and routes A - core - wan - B, and no IPv4
// route across the wan (the wan's route to 10.0.0.0/8 and B's default
// go). The spec's ends use the IPv6 underlay and protect both families.
func (w *world) dualStack(t testing.TB) {
	t.Helper()
	for _, a := range []struct{ ns, dev, addr string }{
		{w.A, "br0", "fd00:1::1/64"}, {w.B, "br0", "fd00:1::1/64"},
		{w.vm, "eth0", "fd00:1::10/64"}, {w.Peer, "eth0", "fd00:1::20/64"},
		{w.A, "up0", "fd00:ff::1/64"}, {w.Core, "a0", "fd00:ff::2/64"},
		{w.Core, "wan0", "fd01:1::1/64"}, {w.WAN, "c0", "fd01:1::2/64"},
		{w.WAN, "b0", "fd01:2::2/64"}, {w.B, "wan0", "fd01:2::1/64"},
	} {
		require.NoError(t, lab.AddAddr(a.ns, a.dev, a.addr))
	}
	for _, r := range []struct{ ns, dst, gw string }{
		{w.vm, "::/0", "fd00:1::1"}, {w.Peer, "::/0", "fd00:1::1"},
		{w.A, "fd01::/16", "fd00:ff::2"}, {w.Core, "fd01:2::/64", "fd01:1::2"},
		{w.WAN, "fd00:ff::/64", "fd01:1::1"}, {w.B, "fd00:ff::/64", "fd01:2::2"}, {w.B, "fd01:1::/64", "fd01:2::2"},
	} {
		require.NoError(t, lab.AddRoute(r.ns, r.dst, r.gw, ""))
	}
	for _, ns := range []string{w.A, w.Core, w.WAN, w.B} {
		require.NoError(t, lab.Sysctl(ns, "net/ipv6/conf/all/forwarding", "1"))
	}
	for _, c := range []struct{ ns, dst string }{{w.WAN, "10.0.0.0/8"}, {w.B, "default"}} {
		out, err := lab.Exec(c.ns, "ip", "route", "del", c.dst)
		require.NoError(t, err, "%s", out)
	}
	require.NoError(t, lab.WaitReachable(w.B, aUnderlay6, 10*time.Second), "B reaches A's IPv6 underlay")
	w.spec.Secure.Underlay, w.spec.Remote.Underlay = aUnderlay6, bUnderlay6
	w.spec.Secure.Protected = []netip.Prefix{peerHost, peerHost6}
	w.spec.Remote.Protected = []netip.Prefix{vmHost, vmHost6}
}

// A link whose ends reach each other only over IPv6 carries the
// protected hosts of both families, both ways, encrypted: nothing
// addressed to a protected address leaves the wan namespace on either
// side (a clear packet of each family, sent from the wan on purpose, is
// counted first), and none of the marker in clear. Activate again
// announces the IPv6 addresses too (unsolicited neighbour
// advertisements): the peer's and the VM's stale IPv6 entries switch to
// the proxying hosts.
func dualStackOverIPv6Underlay(t testing.TB, h Harness) {
	w := newWorld(t, h)
	w.dualStack(t)
	ctx := t.Context()
	addrCapture := func() func() int {
		var cs []*lab.AddrCapture
		for _, dev := range []string{"c0", "b0"} {
			c, err := lab.StartAddrCapture(w.WAN, dev, protected46...)
			require.NoError(t, err)
			cs = append(cs, c)
		}
		return func() int {
			n := 0
			for _, c := range cs {
				a, _ := c.Stop()
				n += a
			}
			return n
		}
	}
	// Control: the capture counts a clear packet of each family.
	stop := addrCapture()
	for _, r := range []struct{ dst, gw string }{{"10.1.0.10/32", "203.0.113.1"}, {"fd00:1::10/128", "fd01:2::1"}} {
		require.NoError(t, lab.AddRoute(w.WAN, r.dst, r.gw, ""))
	}
	for _, dst := range []netip.Addr{lab.VMAddr, vm6} {
		require.NoError(t, sendUDP(w.WAN, netip.AddrPortFrom(dst, 9), marker))
	}
	time.Sleep(100 * time.Millisecond)
	require.GreaterOrEqual(t, stop(), 2, "control: the wan capture missed clear packets to the VM; its zero would prove nothing")
	for _, dst := range []string{"10.1.0.10/32", "fd00:1::10/128"} {
		out, err := lab.Exec(w.WAN, "ip", "route", "del", dst)
		require.NoError(t, err, "%s", out)
	}

	s, r := w.open(t)
	w.connect(t, s, r)
	w.activate(t)
	clear := addrCapture()
	capt, err := lab.StartCapture(w.WAN, "b0", marker)
	require.NoError(t, err)
	require.NoError(t, lab.WaitReachable(w.Peer, vm6, 10*time.Second), "the peer reaches the VM over IPv6 through the link")
	const n = 3
	payload := append([]byte("payload "), marker...)
	for _, d := range []struct {
		from, to string
		addr     netip.Addr
	}{{w.Peer, w.vm, lab.VMAddr}, {w.vm, w.Peer, lab.PeerAddr}, {w.Peer, w.vm, vm6}, {w.vm, w.Peer, peer6}} {
		udp, err := lab.StartUDPEcho(d.to, netip.AddrPortFrom(d.addr, 7002).String())
		require.NoError(t, err)
		got, _ := lab.SendUDP(d.from, netip.AddrPortFrom(d.addr, 7002).String(), payload, n)
		udp.Close()
		pings, _ := lab.Ping(d.from, d.addr, n, 2*time.Second)
		assert.Equal(t, 2*n, got+pings, "%s -> %s through the link (UDP and ICMP)", d.from, d.addr)
	}
	st := capt.Stop()
	assert.Zero(t, clear(), "frames addressed to protected addresses crossed the wan in clear")
	assert.Zero(t, st.Marker, "frames with the marker in clear on the wan")
	assert.Positive(t, st.ByProto[unix.IPPROTO_UDP]+st.ByProto[50], "the link's own packets on the wan")

	// Activate again announces the IPv6 addresses.
	const stale = "02:00:00:00:00:99"
	cases := []struct{ ns, addr, proxy string }{{w.Peer, vm6.String(), w.A}, {w.vm, peer6.String(), w.B}}
	for _, c := range cases {
		out, err := lab.Exec(c.ns, "ip", "-6", "neigh", "replace", c.addr, "lladdr", stale, "dev", "eth0", "nud", "reachable")
		require.NoError(t, err, "%s", out)
	}
	require.NoError(t, w.secure.Activate(ctx, w.spec.ID), "Activate an active end")
	require.NoError(t, w.remote.Activate(ctx, w.spec.ID), "Activate an active end")
	for _, c := range cases {
		require.Eventually(t, func() bool {
			out, err := lab.Exec(c.ns, "ip", "-6", "neigh", "show", c.addr, "dev", "eth0")
			return err == nil && !strings.Contains(string(out), stale) && strings.Contains(string(out), "lladdr")
		}, 2*time.Second, 20*time.Millisecond, "Activate again: %s's entry for %s still at the stale MAC", c.ns, c.addr)
	}
	n6, _ := lab.Ping(w.Peer, vm6, 2, time.Second)
	assert.Equal(t, 2, n6, "the peer reaches the VM over IPv6 after the announcement")
}

// sendUDP sends one datagram from ns to dst.
func sendUDP(ns string, dst netip.AddrPort, payload []byte) error {
	return nsutil.Do(ns, func() error {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write(payload)
		return err
	})
}
