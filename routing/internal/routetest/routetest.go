// Package routetest holds the checks every routing.RouteWatcher backend
// shares in its tests.
package routetest

import (
	"context"
	"maps"
	"net/netip"
	"testing"

	"github.com/sealift/sealift/internal/hosttest"
	"github.com/sealift/sealift/routing"
)

// MissingHost calls every routing.RouteWatcher method of w, a watcher
// whose host gone does not exist (any more), with valid arguments, and
// the backend's own entry points in extra (by name): each must fail with
// an error that wraps host.ErrNotFound and names gone.
func MissingHost(t *testing.T, w routing.RouteWatcher, gone string, extra map[string]func(context.Context) error) {
	t.Helper()
	subnet := netip.MustParsePrefix("10.1.0.0/24")
	calls := map[string]func(context.Context) error{
		"Wait": func(ctx context.Context) error { _, err := w.Wait(ctx, routing.Expect{Prefix: subnet}); return err },
		"AddRedirect": func(ctx context.Context) error {
			return w.AddRedirect(ctx, routing.Redirect{Prefix: subnet, Device: "rt0"})
		},
		"RemoveRedirect": func(ctx context.Context) error { return w.RemoveRedirect(ctx, subnet) },
		"Redirects":      func(ctx context.Context) error { _, err := w.Redirects(ctx); return err },
	}
	maps.Copy(calls, extra)
	hosttest.Missing(t, gone, calls)
}
