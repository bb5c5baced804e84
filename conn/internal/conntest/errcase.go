package conntest

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/host"
)

// ErrCase is one bad call to an auditor and the error it must return.
type ErrCase struct {
	Name string
	Run  func() error
	// Is is the sentinel the error must wrap.
	Is error
	// Names is what the error's message must name (a field, a value).
	Names string
}

// RunErrCases runs every case as a subtest: its error must wrap Is and
// name Names.
func RunErrCases(t *testing.T, cases []ErrCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.Name, func(t *testing.T) {
			err := tc.Run()
			require.Error(t, err)
			assert.ErrorIs(t, err, tc.Is)
			assert.ErrorContains(t, err, tc.Names)
		})
	}
}

// HostErrCases are the cases every auditor shares: a namespace that does
// not exist, named by the Selector (to List and to Reset) or by the
// auditor's own default (withHost returns an auditor built with it), is
// host.ErrNotFound naming that namespace.
func HostErrCases(ctx context.Context, a conn.ConnAuditor, withHost func(ns string) conn.ConnAuditor) []ErrCase {
	vm := []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}
	good := conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:1"), Remote: netip.MustParseAddrPort("10.2.0.20:2")}
	return []ErrCase{
		{Name: "list unknown host", Run: func() error {
			_, err := a.List(ctx, conn.Selector{Host: "sl-no-such-ns", Addrs: vm})
			return err
		}, Is: host.ErrNotFound, Names: "sl-no-such-ns"},
		{Name: "reset unknown host", Run: func() error {
			_, err := a.Reset(ctx, conn.Selector{Host: "sl-no-such-ns", Addrs: vm}, []conn.Conn{good})
			return err
		}, Is: host.ErrNotFound, Names: "sl-no-such-ns"},
		{Name: "option host unknown", Run: func() error {
			_, err := withHost("sl-no-such-ns2").List(ctx, conn.Selector{Addrs: vm})
			return err
		}, Is: host.ErrNotFound, Names: "sl-no-such-ns2"},
		{Name: "reset option host unknown", Run: func() error {
			_, err := withHost("sl-no-such-ns2").Reset(ctx, conn.Selector{Addrs: vm}, []conn.Conn{good})
			return err
		}, Is: host.ErrNotFound, Names: "sl-no-such-ns2"},
		{Name: "deprecated conn.ErrNoHost still matches", Run: func() error {
			_, err := a.List(ctx, conn.Selector{Host: "sl-no-such-ns", Addrs: vm})
			return err
		}, Is: conn.ErrNoHost, Names: "Selector.Host"},
	}
}
