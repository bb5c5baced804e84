package conntrack_test

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/internal/lab"
)

func TestBadInput(t *testing.T) {
	lab.RequireRoot(t)
	a := conntrack.New()
	vm := []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}
	good := conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:1"), Remote: netip.MustParseAddrPort("10.2.0.20:2")}
	cases := []conntest.ErrCase{
		{Name: "list empty selector", Run: func() error { _, err := a.List(t.Context(), conn.Selector{}); return err }, Is: conn.ErrInvalid, Names: "Selector.Addrs"},
		{Name: "list bad prefix", Run: func() error {
			_, err := a.List(t.Context(), conn.Selector{Addrs: []netip.Prefix{{}}})
			return err
		}, Is: conn.ErrInvalid, Names: "Selector.Addrs[0]"},
	}
	cases = append(cases, conntest.HostErrCases(t.Context(), a, func(ns string) conn.ConnAuditor {
		return conntrack.New(conntrack.WithHost(ns))
	})...)
	cases = append(cases, []conntest.ErrCase{
		{Name: "reset empty selector", Run: func() error { _, err := a.Reset(t.Context(), conn.Selector{}, []conn.Conn{good}); return err }, Is: conn.ErrInvalid, Names: "Selector.Addrs"},
		{Name: "reset bad proto", Run: func() error {
			c := good
			c.Proto = "sctp"
			_, err := a.Reset(t.Context(), conn.Selector{Host: "sl-no-such-ns", Addrs: vm}, []conn.Conn{good, c})
			return err
		}, Is: conn.ErrInvalid, Names: "conns[1].Proto"},
		{Name: "reset no remote", Run: func() error {
			c := good
			c.Remote = netip.AddrPort{}
			_, err := a.Reset(t.Context(), conn.Selector{Addrs: vm}, []conn.Conn{c})
			return err
		}, Is: conn.ErrInvalid, Names: "conns[0].Remote"},
	}...)
	conntest.RunErrCases(t, cases)
}

// TestResetMissed: a conn not in the table whose endpoints do not answer
// (no host has its address any more) is counted as missed, and the reset
// table is gone afterwards.
func TestResetMissed(t *testing.T) {
	w := newWorld(t)
	a := conntrack.New(conntrack.WithHost(w.A), conntrack.WithResetTimeout(700*time.Millisecond))
	gone := conn.Conn{Proto: conn.TCP, ID: 12345,
		Local: netip.MustParseAddrPort("10.1.0.99:40000"), Remote: netip.MustParseAddrPort("10.2.0.99:8080")}
	res, err := a.Reset(t.Context(), conn.Selector{Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.99/32")}}, []conn.Conn{gone})
	if err != nil || res != (conn.ResetResult{Missed: 1}) {
		t.Fatalf("Reset = %+v, %v; want 1 missed", res, err)
	}
	out, err := lab.Exec(w.A, "nft", "list", "tables")
	if err != nil || strings.Contains(string(out), "sealift_reset") {
		t.Fatalf("reset table left behind (%v): %s", err, out)
	}
}
