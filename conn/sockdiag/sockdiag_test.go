package sockdiag_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/conn/sockdiag"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// world is the reference lab plus a "secure link" wg0 from the VM's
// namespace straight to peer2 (VM 10.2.1.10, peer2 10.2.1.20); the plain
// service 10.2.0.20 is reached through eth0 and the routed lab.
type world struct {
	*lab.Lab
	sel    conn.Selector
	policy conn.Policy
}

func newWorld(t *testing.T) *world {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	if err := lab.Veth(l.VM, "wg0", "10.2.1.10/24", l.Peer2, "wgv", "10.2.1.20/24"); err != nil {
		t.Fatal(err)
	}
	return &world{Lab: l,
		sel: conn.Selector{Host: l.VM, Addrs: []netip.Prefix{
			netip.PrefixFrom(lab.VMAddr, 32), netip.MustParsePrefix("10.2.1.10/32")}},
		policy: conn.Policy{WireGuardDevices: []string{"wg0"}},
	}
}

// TestAuditKeepsSecureResetsPlain: the VM's own sockets. Plaintext TCP,
// TLS on 443 and a session over the secure link exist; the audit keeps the
// last two and destroys the first (the VM sees ECONNABORTED, the peer a
// RST); the client reconnects over the link and the new socket is secure.
func TestAuditKeepsSecureResetsPlain(t *testing.T) {
	w := newWorld(t)
	ss := conntest.StartSessions(t, w.Lab)
	plainSrv, plain, tlsConn, secure, udp := ss.PlainSrv, ss.Plain, ss.TLS, ss.Secure, ss.UDP

	a := sockdiag.New()
	ctx := t.Context()
	conns, err := a.List(ctx, w.sel)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"10.2.0.20:8080": "tcp/eth0", "10.2.0.20:443": "tcp/eth0", "10.2.1.20:9000": "tcp/wg0", "10.2.0.20:5353": "udp/eth0",
	}
	if len(conns) != len(want) {
		t.Fatalf("List: %d conns, want %d: %v", len(conns), len(want), conns)
	}
	for _, c := range conns {
		if got := string(c.Proto) + "/" + c.Device; want[c.Remote.String()] != got || c.ID == 0 || c.State != "ESTABLISHED" {
			t.Errorf("conn %v: device %q id %d state %q, want %s", c, c.Device, c.ID, c.State, want[c.Remote.String()])
		}
	}
	cl := conn.Classify(conns, w.policy)
	conntest.CheckReasons(t, cl)

	// The link now carries the plain service, then the reset (FIG. 3).
	if out, err := lab.Exec(w.VM, "ip", "route", "add", "10.2.0.20/32", "via", "10.2.1.20", "dev", "wg0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var reset []conn.Conn
	for _, v := range cl.Reset {
		reset = append(reset, v.Conn)
	}
	res, err := a.Reset(ctx, w.sel, reset)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reset != 2 || res.Missed != 0 {
		t.Fatalf("Reset = %+v, want 2 reset", res)
	}
	if err := conntest.ReadErr(plain); !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("VM side of plain session: %v, want ECONNABORTED", err)
	}
	if err := plainSrv.EndOf(t, plain.LocalAddr().String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer side of plain session: %v, want ECONNRESET", err)
	}
	if err := conntest.ReadErr(udp); !errors.Is(err, syscall.ECONNABORTED) {
		t.Errorf("VM's UDP socket: %v, want ECONNABORTED", err)
	}
	if err := conntest.Echo(tlsConn, "still tls"); err != nil {
		t.Errorf("tls session after audit: %v", err)
	}
	if err := conntest.Echo(secure, "still secure"); err != nil {
		t.Errorf("secure session after audit: %v", err)
	}
	// A second Reset of the same conns finds nothing.
	if res, err := a.Reset(ctx, w.sel, reset); err != nil || res.Missed != 2 {
		t.Errorf("second Reset = %+v, %v; want 2 missed", res, err)
	}

	re := conntest.DialIn(t, w.VM, "tcp4", "10.2.0.20:8080")
	if err := conntest.Echo(re, "again"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	vs, err := conn.WaitReestablished(wctx, a, w.sel, reset[:1], w.policy)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || !vs[0].Secure || vs[0].Reason != conn.ReasonWireGuard || vs[0].Conn.Local.String() != re.LocalAddr().String() {
		t.Fatalf("reestablished: %+v (client %s)", vs, re.LocalAddr())
	}
}

// TestULPFromKernel: an MPTCP connection's TCP subflow carries the "mptcp"
// upper layer protocol; List reports it from INET_DIAG_ULP_INFO (this
// kernel has no CONFIG_TLS, so "tls" itself is covered by TestParseULP).
func TestULPFromKernel(t *testing.T) {
	w := newWorld(t)
	var ln net.Listener
	if err := nsutil.Do(w.Peer2, func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(true)
		var err error
		ln, err = lc.Listen(t.Context(), "tcp4", "10.2.0.20:7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			_ = conntest.ReadEcho(c)
			c.Close()
		}
	}()
	var c net.Conn
	if err := nsutil.Do(w.VM, func() error {
		var d net.Dialer
		d.SetMultipathTCP(true)
		var err error
		c, err = d.DialContext(t.Context(), "tcp4", "10.2.0.20:7000")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := conntest.Echo(c, "mp"); err != nil {
		t.Fatal(err)
	}
	if tc, ok := c.(*net.TCPConn); !ok {
		t.Fatalf("conn is %T", c)
	} else if mp, err := tc.MultipathTCP(); err != nil || !mp {
		lab.Missing(t, "MPTCP (net.mptcp.enabled) for a kernel-set ULP")
	}
	conns, err := sockdiag.New().List(t.Context(), w.sel)
	if err != nil {
		t.Fatal(err)
	}
	if len(conns) != 1 || conns[0].ULP != "mptcp" || conns[0].Remote.String() != "10.2.0.20:7000" {
		t.Fatalf("List = %+v, want one subflow with ULP mptcp", conns)
	}
}
