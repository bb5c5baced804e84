// Package connconform is the conformance suite of the conn.ConnAuditor
// contract: every promise of package conn, checked by its real effect on
// real connections in a lab of network namespaces (a VM endpoint's TCP
// and UDP sessions to a server on another subnet, IPv4 and IPv6): List
// finds them as the sockets themselves know them, Reset makes both
// endpoints see a reset, and nothing else is touched. conn/conntrack
// and conn/sockdiag run it, locally and behind an agent; a user's own
// backend runs it the same way:
//
//	func TestConformance(t *testing.T) {
//		connconform.Run(t, connconform.Harness{
//			Vantage: connconform.Router,
//			New: func(t testing.TB, host string) conn.ConnAuditor { return myauditor.New(host) },
//		})
//	}
//
// The suite's selectors leave Selector.Host empty: the auditor acts on
// the host it was made for (an agent's auditor always does). It needs
// root: without it the suite fails under CI=true and skips elsewhere.
// Each check builds a world of its own, so checks run in parallel.
package connconform

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/internal/lab"
)

// Vantage is where an auditor sees the VM's connections from.
type Vantage int

const (
	// Router: the host that forwards the VM's traffic (its flows;
	// conn/conntrack). The suite routes the VM's sessions through it.
	Router Vantage = iota
	// Endpoint: the VM's own namespace (its sockets; conn/sockdiag).
	Endpoint
)

// Harness is what the suite needs of a backend.
type Harness struct {
	// Vantage says which host New is given.
	Vantage Vantage
	// New returns the ConnAuditor under test for host: the lab host of
	// Vantage (New may prepare it as the backend needs, e.g. make it
	// track connections), or a host that does not exist (the suite
	// checks it says so).
	New func(t testing.TB, host string) conn.ConnAuditor
}

// Run runs every check of the suite as a parallel subtest of t.
func Run(t *testing.T, h Harness) {
	t.Helper()
	conform.Run(t, checks, h)
}

var checks = []conform.Check[Harness]{
	{Name: "ListFindsTCP", Run: listFindsTCP},
	{Name: "ListFindsUDP", Run: listFindsUDP},
	{Name: "ListFindsIPv6", Run: listFindsIPv6},
	{Name: "ListFindsIPv6UDP", Run: listFindsIPv6UDP},
	{Name: "ResetResetsAndCounts", Run: resetResetsAndCounts},
	{Name: "InvalidInputTouchesNothing", Run: invalidInputTouchesNothing},
	{Name: "MissingHost", Run: missingHost},
}

var (
	server   = netip.MustParseAddrPort("10.2.0.20:8080")
	server6  = netip.MustParseAddrPort("[fd02::20]:8080")
	vm6      = netip.MustParseAddr("fd01::10")
	vmSel    = conn.Selector{Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}
	absentVM = netip.MustParseAddr("10.1.0.99") // no host has it
)

// world is one check's lab, the echo server in peer2 and the auditor.
type world struct {
	*lab.Lab
	srv *conntest.Server
	a   conn.ConnAuditor
}

func newWorld(t testing.TB, h Harness) *world {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	w := &world{Lab: l, srv: conntest.ListenIn(t, l.Peer2, "tcp4", server.String(), nil)}
	at := l.A
	if h.Vantage == Endpoint {
		at = l.VM
	}
	w.a = h.New(t, at)
	return w
}

// dial opens a TCP session from ns to the server and echoes once.
func (w *world) dial(t testing.TB, ns string) net.Conn {
	t.Helper()
	c := conntest.DialIn(t, ns, "tcp4", server.String())
	require.NoError(t, conntest.Echo(c, "hello"))
	return c
}

func addrPort(t testing.TB, a net.Addr) netip.AddrPort {
	t.Helper()
	ap, err := netip.ParseAddrPort(a.String())
	require.NoError(t, err)
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

func list(t testing.TB, a conn.ConnAuditor, sel conn.Selector) []conn.Conn {
	t.Helper()
	cs, err := a.List(t.Context(), sel)
	require.NoError(t, err, "List(%v)", sel.Addrs)
	return cs
}

// find returns the listed connection between local and remote (either
// way round: when the selector holds the remote end, a backend may
// report it as originated), failing t unless there is exactly one.
func find(t testing.TB, cs []conn.Conn, proto conn.Proto, local, remote netip.AddrPort, what string) conn.Conn {
	t.Helper()
	var got []conn.Conn
	for _, c := range cs {
		if c.Proto == proto && (c.Local == local && c.Remote == remote || c.Local == remote && c.Remote == local) {
			got = append(got, c)
		}
	}
	if len(got) != 1 {
		t.Fatalf("%s: List has %d %s connections %s <-> %s, want 1; all: %v", what, len(got), proto, local, remote, cs)
	}
	return got[0]
}

// absent fails t if cs holds a connection with an end at ap.
func absent(t testing.TB, cs []conn.Conn, ap netip.AddrPort, what string) {
	t.Helper()
	for _, c := range cs {
		if c.Local == ap || c.Remote == ap {
			t.Errorf("%s: List holds %v, which the selector does not select", what, c)
		}
	}
}

// List finds the VM's TCP session as its socket knows it (the VM's end
// Local, ESTABLISHED), by the VM's address or by the remote's (either
// end selects), and leaves out the session of another host.
func listFindsTCP(t testing.TB, h Harness) {
	w := newWorld(t, h)
	c := w.dial(t, w.VM)
	local := addrPort(t, c.LocalAddr())
	got := find(t, list(t, w.a, vmSel), conn.TCP, local, server, "by the VM's address")
	assert.Equal(t, local, got.Local, "Local is the VM's end")
	assert.Equal(t, server, got.Remote)
	assert.Equal(t, "ESTABLISHED", got.State)

	other := addrPort(t, w.dial(t, w.Peer).LocalAddr()) // another host's session to the same server
	cs := list(t, w.a, vmSel)
	find(t, cs, conn.TCP, local, server, "by the VM's address, beside another host's session")
	absent(t, cs, other, "by the VM's address")
	find(t, list(t, w.a, conn.Selector{Addrs: []netip.Prefix{lab.Peer2Net}}), conn.TCP, local, server, "by the remote's subnet")
	absent(t, list(t, w.a, conn.Selector{Addrs: []netip.Prefix{netip.MustParsePrefix("10.3.0.0/24")}}), local, "by an unrelated prefix")
}

// List finds a connected UDP session, as UDP.
func listFindsUDP(t testing.TB, h Harness) {
	w := newWorld(t, h)
	const udpServer = "10.2.0.20:5353"
	stop, err := lab.ServeUDPEcho(w.Peer2, udpServer)
	require.NoError(t, err)
	t.Cleanup(stop)
	c := conntest.DialIn(t, w.VM, "udp4", udpServer)
	require.NoError(t, conntest.Echo(c, "hello udp"))
	got := find(t, list(t, w.a, vmSel), conn.UDP, addrPort(t, c.LocalAddr()), netip.MustParseAddrPort(udpServer), "a UDP session")
	assert.Equal(t, addrPort(t, c.LocalAddr()), got.Local, "Local is the VM's end")
}

// List finds an IPv6 session by the VM's IPv6 address, and Reset ends it.
func listFindsIPv6(t testing.TB, h Harness) {
	w := newWorld(t, h)
	conntest.AddIPv6(t, w.Lab)
	srv := conntest.ListenIn(t, w.Peer2, "tcp6", server6.String(), nil)
	c := conntest.DialIn(t, w.VM, "tcp6", server6.String())
	require.NoError(t, conntest.Echo(c, "hello v6"))
	local := addrPort(t, c.LocalAddr())
	sel := conn.Selector{Addrs: []netip.Prefix{netip.PrefixFrom(vm6, 128)}}
	got := find(t, list(t, w.a, sel), conn.TCP, local, server6, "an IPv6 session")
	res, err := w.a.Reset(t.Context(), sel, []conn.Conn{got})
	require.NoError(t, err)
	assert.Equal(t, conn.ResetResult{Reset: 1}, res)
	if assertReset(t, c, "the VM's IPv6 socket") {
		assert.ErrorIs(t, srv.EndOf(t, c.LocalAddr().String()), syscall.ECONNRESET, "the server's IPv6 socket")
	}
}

// List finds an IPv6 UDP session by the VM's IPv6 address, the VM's end
// as Local.
func listFindsIPv6UDP(t testing.TB, h Harness) {
	w := newWorld(t, h)
	conntest.AddIPv6(t, w.Lab)
	udpServer := netip.AddrPortFrom(server6.Addr(), 5353)
	stop, err := lab.ServeUDPEcho(w.Peer2, udpServer.String())
	require.NoError(t, err)
	t.Cleanup(stop)
	c := conntest.DialIn(t, w.VM, "udp6", udpServer.String())
	require.NoError(t, conntest.Echo(c, "hello udp v6"))
	sel := conn.Selector{Addrs: []netip.Prefix{netip.PrefixFrom(vm6, 128)}}
	got := find(t, list(t, w.a, sel), conn.UDP, addrPort(t, c.LocalAddr()), udpServer, "an IPv6 UDP session")
	assert.Equal(t, addrPort(t, c.LocalAddr()), got.Local, "Local is the VM's end")
}

// assertReset fails t unless c's next read, within 10 s, fails as a
// reset does: the peer's RST (ECONNRESET) or the socket destroyed under
// its owner (ECONNABORTED). It reports whether it did.
func assertReset(t testing.TB, c net.Conn, what string) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var err error
	buf := make([]byte, 64)
	for err == nil {
		_, err = c.Read(buf)
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("%s after Reset: %v; want ECONNRESET or ECONNABORTED", what, err)
		return false
	}
	return true
}

// Reset tears down exactly the connections it is given, both endpoints
// seeing a reset, in one batch with connections already gone, which it
// counts as missed; the others keep working; the reset ones are no
// longer listed.
func resetResetsAndCounts(t testing.TB, h Harness) {
	w := newWorld(t, h)
	c1, c2 := w.dial(t, w.VM), w.dial(t, w.VM)
	l1, l2 := addrPort(t, c1.LocalAddr()), addrPort(t, c2.LocalAddr())
	cs := list(t, w.a, vmSel)
	got1 := find(t, cs, conn.TCP, l1, server, "the first session")
	find(t, cs, conn.TCP, l2, server, "the second session")
	gone := conn.Conn{Proto: conn.TCP, State: "ESTABLISHED", ID: 12345,
		Local: netip.AddrPortFrom(absentVM, 40000), Remote: netip.MustParseAddrPort("10.2.0.99:8080")}
	sel := conn.Selector{Addrs: append(slices.Clone(vmSel.Addrs), netip.PrefixFrom(absentVM, 32))}
	res, err := w.a.Reset(t.Context(), sel, []conn.Conn{got1, gone})
	require.NoError(t, err)
	assert.Equal(t, conn.ResetResult{Reset: 1, Missed: 1}, res, "one reset, one already gone")
	if assertReset(t, c1, "the VM's socket") {
		assert.ErrorIs(t, w.srv.EndOf(t, c1.LocalAddr().String()), syscall.ECONNRESET, "the server's socket")
	}
	assert.NoError(t, conntest.Echo(c2, "still here"), "a session Reset was not given")
	deadline := time.Now().Add(5 * time.Second)
	for {
		cs = list(t, w.a, vmSel)
		if !slices.ContainsFunc(cs, func(c conn.Conn) bool { return c.Local == l1 || c.Remote == l1 }) {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the reset session is still listed: %v", cs)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	find(t, cs, conn.TCP, l2, server, "the session left alone")
}

// Invalid input wraps ErrInvalid naming the field, and nothing is
// touched: a valid connection in the same batch as an invalid one is
// not reset.
func invalidInputTouchesNothing(t testing.TB, h Harness) {
	w := newWorld(t, h)
	ctx := t.Context()
	c := w.dial(t, w.VM)
	good := find(t, list(t, w.a, vmSel), conn.TCP, addrPort(t, c.LocalAddr()), server, "the session")
	for _, sc := range []struct {
		sel   conn.Selector
		field string
	}{
		{conn.Selector{}, "Selector.Addrs"},
		{conn.Selector{Addrs: []netip.Prefix{{}}}, "Selector.Addrs[0]"},
	} {
		_, err := w.a.List(ctx, sc.sel)
		if assert.ErrorIs(t, err, conn.ErrInvalid, "List(%v)", sc.sel) {
			assert.ErrorContains(t, err, sc.field, "the error must name the field")
		}
		_, err = w.a.Reset(ctx, sc.sel, []conn.Conn{good})
		if assert.ErrorIs(t, err, conn.ErrInvalid, "Reset with selector %v", sc.sel) {
			assert.ErrorContains(t, err, sc.field, "the error must name the field")
		}
	}
	for _, bc := range []struct {
		change func(*conn.Conn)
		field  string
	}{
		{func(c *conn.Conn) { c.Proto = "sctp" }, "conns[1].Proto"},
		{func(c *conn.Conn) { c.Proto = "" }, "conns[1].Proto"},
		{func(c *conn.Conn) { c.Local = netip.AddrPort{} }, "conns[1].Local"},
		{func(c *conn.Conn) { c.Remote = netip.AddrPort{} }, "conns[1].Remote"},
	} {
		bad := good
		bc.change(&bad)
		_, err := w.a.Reset(ctx, vmSel, []conn.Conn{good, bad})
		if assert.ErrorIs(t, err, conn.ErrInvalid, "Reset with %s bad", bc.field) {
			assert.ErrorContains(t, err, bc.field, "the error must name the field")
		}
	}
	require.NoError(t, c.SetDeadline(time.Now().Add(5*time.Second)))
	assert.NoError(t, conntest.Echo(c, "untouched"), "a refused Reset touched the valid session")
	find(t, list(t, w.a, vmSel), conn.TCP, addrPort(t, c.LocalAddr()), server, "after refused Resets")
}

// An auditor of a host that does not exist: List and Reset fail with an
// error wrapping host.ErrNotFound that names it.
func missingHost(t testing.TB, h Harness) {
	lab.RequireRoot(t)
	gone := lab.NewPrefix() + "-gone"
	a := h.New(t, gone)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	c := conn.Conn{Proto: conn.TCP, Local: netip.AddrPortFrom(lab.VMAddr, 40000), Remote: server}
	_, err := a.List(ctx, vmSel)
	if assert.ErrorIs(t, err, host.ErrNotFound, "List on a missing host") {
		assert.ErrorContains(t, err, gone, "List: the error must name the host")
	}
	_, err = a.Reset(ctx, vmSel, []conn.Conn{c})
	if assert.ErrorIs(t, err, host.ErrNotFound, "Reset on a missing host") {
		assert.ErrorContains(t, err, gone, "Reset: the error must name the host")
	}
}
