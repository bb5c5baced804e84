package gobgp

import (
	"context"
	"net/netip"

	"github.com/sealift/sealift/routing"
)

// AddRedirect installs r as a kernel route in the host (delegated to the
// netlinkroute watcher): BGP carries the proper route, the redirect is
// the core's own stop-gap.
func (w *Watcher) AddRedirect(ctx context.Context, r routing.Redirect) error {
	return w.redirects.AddRedirect(ctx, r)
}

// RemoveRedirect removes the redirect for prefix (delegated).
func (w *Watcher) RemoveRedirect(ctx context.Context, prefix netip.Prefix) error {
	return w.redirects.RemoveRedirect(ctx, prefix)
}

// Redirects lists the installed redirects (delegated).
func (w *Watcher) Redirects(ctx context.Context) ([]routing.Redirect, error) {
	return w.redirects.Redirects(ctx)
}
