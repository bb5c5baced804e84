package migrationtest

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/sealift/sealift/routing"
)

// Router is a fake routing.RouteWatcher: Wait returns once Announce has
// published a matching route.
type Router struct {
	Faults
	mu        sync.Mutex
	routes    []routing.Route
	redirects map[netip.Prefix]routing.Redirect
	changed   chan struct{}
	auto      *routing.Route
}

var _ routing.RouteWatcher = (*Router)(nil)

// Router returns a fake routing core.
func (w *World) Router() *Router {
	return &Router{Faults: Faults{name: "routing", log: &w.Recorder, methods: methodsOf[routing.RouteWatcher]()},
		redirects: map[netip.Prefix]routing.Redirect{}, changed: make(chan struct{})}
}

// Announce publishes a route in the core (what BGP would do).
func (r *Router) Announce(rt routing.Route) {
	r.mu.Lock()
	r.routes = append(r.routes, rt)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// AnnounceOnRedirect makes the core learn rt as soon as a redirect is
// added (a target that announces its subnet right away).
func (r *Router) AnnounceOnRedirect(rt routing.Route) {
	r.mu.Lock()
	r.auto = &rt
	r.mu.Unlock()
}

func (r *Router) Wait(ctx context.Context, e routing.Expect) (routing.Converged, error) {
	if err := e.Validate(); err != nil {
		return routing.Converged{}, err
	}
	if err := r.enter(ctx, "Wait", e.Prefix.String()); err != nil {
		return routing.Converged{}, err
	}
	start := time.Now()
	for {
		r.mu.Lock()
		ch := r.changed
		for _, rt := range r.routes {
			if e.Matches(rt) {
				r.mu.Unlock()
				return routing.Converged{Route: rt, After: time.Since(start)}, nil
			}
		}
		r.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return routing.Converged{}, fmt.Errorf("wait for %s: %w", e.Prefix, ctx.Err())
		}
	}
}

func (r *Router) AddRedirect(ctx context.Context, rd routing.Redirect) error {
	if err := rd.Validate(); err != nil {
		return err
	}
	if err := r.enter(ctx, "AddRedirect", rd.Prefix.String()); err != nil {
		return err
	}
	r.mu.Lock()
	r.redirects[rd.Prefix] = rd
	auto := r.auto
	r.mu.Unlock()
	if auto != nil {
		r.Announce(*auto)
	}
	return nil
}

func (r *Router) RemoveRedirect(ctx context.Context, p netip.Prefix) error {
	if err := r.enter(ctx, "RemoveRedirect", p.String()); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.redirects[p]; !ok {
		return fmt.Errorf("%w: %s", routing.ErrNoRedirect, p)
	}
	delete(r.redirects, p)
	return nil
}

func (r *Router) Redirects(ctx context.Context) ([]routing.Redirect, error) {
	if err := r.enter(ctx, "Redirects", ""); err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]routing.Redirect, 0, len(r.redirects))
	for _, rd := range r.redirects {
		out = append(out, rd)
	}
	return out, nil
}
