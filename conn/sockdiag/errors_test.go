package sockdiag_test

import (
	"net/netip"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/conn/sockdiag"
)

func TestBadInput(t *testing.T) {
	a := sockdiag.New()
	vm := []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}
	good := conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:1"), Remote: netip.MustParseAddrPort("10.2.0.20:2")}
	cases := []conntest.ErrCase{
		{Name: "list empty selector", Run: func() error { _, err := a.List(t.Context(), conn.Selector{Host: "x"}); return err }, Is: conn.ErrInvalid, Names: "Selector.Addrs"},
	}
	cases = append(cases, conntest.HostErrCases(t.Context(), a, func(ns string) conn.ConnAuditor {
		return sockdiag.New(sockdiag.WithHost(ns))
	})...)
	cases = append(cases, []conntest.ErrCase{
		{Name: "reset bad proto", Run: func() error {
			c := good
			c.Proto = ""
			_, err := a.Reset(t.Context(), conn.Selector{Addrs: vm}, []conn.Conn{c})
			return err
		}, Is: conn.ErrInvalid, Names: "conns[0].Proto"},
		{Name: "reset no local", Run: func() error {
			c := good
			c.Local = netip.AddrPort{}
			_, err := a.Reset(t.Context(), conn.Selector{Addrs: vm}, []conn.Conn{good, c})
			return err
		}, Is: conn.ErrInvalid, Names: "conns[1].Local"},
	}...)
	conntest.RunErrCases(t, cases)
}
