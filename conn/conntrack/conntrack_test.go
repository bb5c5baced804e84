package conntrack_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// world is the reference lab with host A tracking connections and a
// "secure link" wg0 from A to core: peer2's second address 10.2.1.20 is
// routed over it, the first (10.2.0.20) over the plain uplink.
type world struct {
	*lab.Lab
	sel    conn.Selector
	policy conn.Policy
}

func newWorld(t *testing.T) *world {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	must := func(out []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	// Conntrack runs in a namespace only when some rule needs it.
	must(lab.Exec(l.A, "nft", "add table inet track; add chain inet track tracked { type filter hook forward priority 0; }; add rule inet track tracked ct state established counter"))
	if err := lab.Veth(l.A, "wg0", "10.254.0.1/30", l.Core, "wga", "10.254.0.2/30"); err != nil {
		t.Fatal(err)
	}
	must(lab.Exec(l.Peer2, "ip", "addr", "add", "10.2.1.20/24", "dev", "eth0"))
	must(lab.Exec(l.Core, "ip", "addr", "add", "10.2.1.1/24", "dev", "p2"))
	must(lab.Exec(l.A, "ip", "route", "add", "10.2.1.0/24", "via", "10.254.0.2", "dev", "wg0"))
	return &world{Lab: l,
		sel:    conn.Selector{Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}},
		policy: conn.Policy{WireGuardDevices: []string{"wg0"}},
	}
}

// TestAuditKeepsSecureResetsPlain is claim 10 end to end on a routing host:
// plaintext TCP, TLS on 443 and a session over the secure link exist; the
// audit keeps the last two, resets the first (both ends see ECONNRESET),
// and the client's new connection, now routed over the link, is secure.
func TestAuditKeepsSecureResetsPlain(t *testing.T) {
	w := newWorld(t)
	ss := conntest.StartSessions(t, w.Lab)
	plainSrv, plain, tlsConn, secure := ss.PlainSrv, ss.Plain, ss.TLS, ss.Secure

	a := conntrack.New(conntrack.WithHost(w.A))
	ctx := t.Context()
	conns, err := a.List(ctx, w.sel)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ // remote -> proto/device
		"10.2.0.20:8080": "tcp/up0", "10.2.0.20:443": "tcp/up0", "10.2.1.20:9000": "tcp/wg0", "10.2.0.20:5353": "udp/up0",
	}
	if len(conns) != len(want) {
		t.Fatalf("List: %d conns, want %d: %v", len(conns), len(want), conns)
	}
	for _, c := range conns {
		if got := string(c.Proto) + "/" + c.Device; want[c.Remote.String()] != got || c.Local.Addr() != lab.VMAddr {
			t.Errorf("conn %v device %q: want %s", c, c.Device, want[c.Remote.String()])
		}
		if c.Proto == conn.TCP && c.State != "ESTABLISHED" {
			t.Errorf("conn %v state %q", c, c.State)
		}
	}

	cl := conn.Classify(conns, w.policy)
	conntest.CheckReasons(t, cl)

	// The tunnel now carries the plain service (FIG. 3: link first, then reset).
	if out, err := lab.Exec(w.A, "ip", "route", "add", "10.2.0.20/32", "via", "10.254.0.2", "dev", "wg0"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var resetConns []conn.Conn
	for _, v := range cl.Reset {
		resetConns = append(resetConns, v.Conn)
	}
	res, err := a.Reset(ctx, w.sel, resetConns)
	if err != nil {
		t.Fatal(err)
	}
	if res.Reset != 2 || res.Missed != 0 {
		t.Fatalf("Reset = %+v, want 2 reset 0 missed", res)
	}
	// Both endpoints of the plain session were reset, without traffic of their own.
	if err := conntest.ReadErr(plain); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("VM side of plain session: %v, want ECONNRESET", err)
	}
	if err := plainSrv.EndOf(t, plain.LocalAddr().String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer side of plain session: %v, want ECONNRESET", err)
	}
	// The kept sessions still work.
	if err := conntest.Echo(tlsConn, "still tls"); err != nil {
		t.Errorf("tls session after audit: %v", err)
	}
	if err := conntest.Echo(secure, "still secure"); err != nil {
		t.Errorf("secure session after audit: %v", err)
	}
	// The reset table removed itself; the UDP entry is gone.
	if out, err := lab.Exec(w.A, "nft", "list", "tables"); err != nil || strings.Contains(string(out), "sealift_reset") {
		t.Errorf("reset table left behind (%v): %s", err, out)
	}
	after, err := a.List(ctx, w.sel)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range after {
		for _, r := range resetConns {
			if c.ID == r.ID {
				t.Errorf("entry %d (%v) still listed after Reset", c.ID, c)
			}
		}
	}

	// The client reconnects; the new flow crosses the link and is secure.
	re := conntest.DialIn(t, w.VM, "tcp4", "10.2.0.20:8080")
	if err := conntest.Echo(re, "again"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var plainConn []conn.Conn
	for _, c := range resetConns {
		if c.Proto == conn.TCP {
			plainConn = append(plainConn, c)
		}
	}
	vs, err := conn.WaitReestablished(wctx, a, w.sel, plainConn, w.policy)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || !vs[0].Secure || vs[0].Reason != conn.ReasonWireGuard || vs[0].Conn.Local != netip.MustParseAddrPort(re.LocalAddr().String()) {
		t.Fatalf("reestablished: %+v (client %s)", vs, re.LocalAddr())
	}
}

// A connection listed on another host (the migration's source) whose
// flow this host's table does not hold yet is still reset at both ends,
// by its 5-tuple alone.
func TestResetFlowAbsentFromTable(t *testing.T) {
	w := newWorld(t)
	srv := conntest.ListenIn(t, w.Peer2, "tcp4", "10.2.0.20:8080", nil)
	c := conntest.DialIn(t, w.VM, "tcp4", "10.2.0.20:8080")
	if err := conntest.Echo(c, "hello"); err != nil {
		t.Fatal(err)
	}
	// What the source saw: the 5-tuple, and an ID that means nothing here.
	seen := conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort(c.LocalAddr().String()),
		Remote: netip.MustParseAddrPort(c.RemoteAddr().String()), ID: 0xdead}
	if out, err := lab.Exec(w.A, "conntrack", "-D", "-p", "tcp", "-s", lab.VMAddr.String(), "--dport", "8080"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	a := conntrack.New(conntrack.WithHost(w.A))
	if got, err := a.List(t.Context(), w.sel); err != nil || len(got) != 0 {
		t.Fatalf("table after delete: %v, %v; want empty", got, err)
	}
	res, err := a.Reset(t.Context(), w.sel, []conn.Conn{seen})
	if err != nil {
		t.Fatal(err)
	}
	if res.Reset != 1 || res.Missed != 0 {
		t.Fatalf("Reset = %+v, want 1 reset", res)
	}
	if err := conntest.ReadErr(c); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("VM side: %v, want ECONNRESET", err)
	}
	if err := srv.EndOf(t, c.LocalAddr().String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer side: %v, want ECONNRESET", err)
	}
}

// A SYN nobody answered is no connection: List leaves it out (a VM's
// connection attempts while its peer was down must not be "reset").
func TestListSkipsUnansweredSYN(t *testing.T) {
	w := newWorld(t)
	if out, err := lab.Exec(w.Peer2, "nft", "add table inet drop9; add chain inet drop9 in { type filter hook input priority 0; }; add rule inet drop9 in tcp dport 9999 drop"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	conntest.ListenIn(t, w.Peer2, "tcp4", "10.2.0.20:8080", nil)
	live := conntest.DialIn(t, w.VM, "tcp4", "10.2.0.20:8080")
	if err := conntest.Echo(live, "hi"); err != nil {
		t.Fatal(err)
	}
	err := nsutil.Do(w.VM, func() error {
		_, err := net.DialTimeout("tcp4", "10.2.0.20:9999", 300*time.Millisecond)
		return err
	})
	if err == nil {
		t.Fatal("dial to a dropped port succeeded")
	}
	a := conntrack.New(conntrack.WithHost(w.A))
	got, err := a.List(t.Context(), w.sel)
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := lab.Exec(w.A, "conntrack", "-L", "-p", "tcp", "--dport", "9999"); !strings.Contains(string(out), "SYN_SENT") {
		t.Fatalf("no SYN_SENT entry to test with: %s", out)
	}
	if len(got) != 1 || got[0].Remote.Port() != 8080 {
		t.Fatalf("List = %v, want only the established connection to :8080", got)
	}
}
