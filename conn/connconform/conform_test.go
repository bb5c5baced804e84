package connconform

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/sockdiag"
	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/conform"
)

// broken is a ConnAuditor with some methods replaced (nil: the real one's).
type broken struct {
	conn.ConnAuditor
	list  func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector) ([]conn.Conn, error)
	reset func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error)
}

func (b *broken) List(ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
	if b.list != nil {
		return b.list(b.ConnAuditor, ctx, sel)
	}
	return b.ConnAuditor.List(ctx, sel)
}

func (b *broken) Reset(ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
	if b.reset != nil {
		return b.reset(b.ConnAuditor, ctx, sel, cs)
	}
	return b.ConnAuditor.Reset(ctx, sel, cs)
}

// filtered lists what the real auditor lists, minus what drop says.
func filtered(drop func(sel conn.Selector, c conn.Conn) bool) func(conn.ConnAuditor) conn.ConnAuditor {
	return func(a conn.ConnAuditor) conn.ConnAuditor {
		return &broken{ConnAuditor: a, list: func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
			cs, err := a.List(ctx, sel)
			return slices.DeleteFunc(cs, func(c conn.Conn) bool { return drop(sel, c) }), err
		}}
	}
}

func mapErr(a conn.ConnAuditor, fn func(error) error) conn.ConnAuditor {
	return &broken{ConnAuditor: a,
		list: func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
			cs, err := a.List(ctx, sel)
			return cs, fn(err)
		},
		reset: func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
			r, err := a.Reset(ctx, sel, cs)
			return r, fn(err)
		},
	}
}

func withReset(fn func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error)) func(conn.ConnAuditor) conn.ConnAuditor {
	return func(a conn.ConnAuditor) conn.ConnAuditor { return &broken{ConnAuditor: a, reset: fn} }
}

var mutants = []conform.Mutant[func(conn.ConnAuditor) conn.ConnAuditor]{
	{Name: "List finds nothing", Caught: []string{"ListFindsTCP"},
		Break: filtered(func(conn.Selector, conn.Conn) bool { return true })},
	{Name: "List selects by the local end only", Caught: []string{"ListFindsTCP"},
		Break: filtered(func(sel conn.Selector, c conn.Conn) bool {
			return !slices.ContainsFunc(sel.Addrs, func(p netip.Prefix) bool { return p.Contains(c.Local.Addr()) })
		})},
	{Name: "List reports the remote end as Local", Caught: []string{"ListFindsTCP"},
		Break: func(a conn.ConnAuditor) conn.ConnAuditor {
			return &broken{ConnAuditor: a, list: func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
				cs, err := a.List(ctx, sel)
				for i := range cs {
					cs[i].Local, cs[i].Remote = cs[i].Remote, cs[i].Local
				}
				return cs, err
			}}
		}},
	{Name: "List leaves UDP out", Caught: []string{"ListFindsUDP"},
		Break: filtered(func(_ conn.Selector, c conn.Conn) bool { return c.Proto == conn.UDP })},
	{Name: "List leaves IPv6 UDP out", Caught: []string{"ListFindsIPv6UDP"},
		Break: filtered(func(_ conn.Selector, c conn.Conn) bool { return c.Proto == conn.UDP && c.Local.Addr().Is6() })},
	{Name: "List leaves IPv6 out", Caught: []string{"ListFindsIPv6", "ListFindsIPv6UDP"},
		Break: filtered(func(_ conn.Selector, c conn.Conn) bool { return c.Local.Addr().Is6() })},
	{Name: "Reset resets nothing (and counts it reset)", Caught: []string{"ResetResetsAndCounts", "ListFindsIPv6"},
		Break: withReset(func(_ conn.ConnAuditor, _ context.Context, _ conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
			return conn.ResetResult{Reset: len(cs)}, nil
		})},
	{Name: "Reset counts the missed as reset", Caught: []string{"ResetResetsAndCounts"},
		Break: withReset(func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
			r, err := a.Reset(ctx, sel, cs)
			return conn.ResetResult{Reset: r.Reset + r.Missed}, err
		})},
	{Name: "Reset resets every connection of the VM", Caught: []string{"ResetResetsAndCounts"},
		Break: withReset(func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
			all, err := a.List(ctx, sel)
			if err != nil {
				return conn.ResetResult{}, err
			}
			return a.Reset(ctx, sel, append(cs, all...))
		})},
	{Name: "an invalid batch resets its valid connections first", Caught: []string{"InvalidInputTouchesNothing"},
		Break: withReset(func(a conn.ConnAuditor, ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
			if err := conn.ValidateConns(cs); err != nil && sel.Validate() == nil {
				_, _ = a.Reset(ctx, sel, cs[:1])
				return conn.ResetResult{}, err
			}
			return a.Reset(ctx, sel, cs)
		})},
	{Name: "ErrInvalid names no field", Caught: []string{"InvalidInputTouchesNothing"},
		Break: func(a conn.ConnAuditor) conn.ConnAuditor {
			return mapErr(a, func(err error) error {
				if errors.Is(err, conn.ErrInvalid) {
					return conn.ErrInvalid
				}
				return err
			})
		}},
	{Name: "a missing host loses its sentinel", Caught: []string{"MissingHost"},
		Break: func(a conn.ConnAuditor) conn.ConnAuditor {
			return mapErr(a, func(err error) error {
				if errors.Is(err, host.ErrNotFound) {
					return errors.New(err.Error())
				}
				return err
			})
		}},
}

// TestSuiteCatchesBrokenAuditors: each check fails against an auditor
// (conn/sockdiag, broken on purpose) that breaks the promise it checks.
func TestSuiteCatchesBrokenAuditors(t *testing.T) {
	conform.Mutants(t, checks, mutants, func(m conform.Mutant[func(conn.ConnAuditor) conn.ConnAuditor]) Harness {
		return Harness{Vantage: Endpoint, New: func(_ testing.TB, host string) conn.ConnAuditor {
			return m.Break(sockdiag.New(sockdiag.WithHost(host)))
		}}
	})
}
