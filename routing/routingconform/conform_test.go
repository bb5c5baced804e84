package routingconform

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
)

// broken is a RouteWatcher with some methods replaced (nil: the real one's).
type broken struct {
	routing.RouteWatcher
	wait      func(w routing.RouteWatcher, ctx context.Context, e routing.Expect) (routing.Converged, error)
	add       func(w routing.RouteWatcher, ctx context.Context, r routing.Redirect) error
	remove    func(w routing.RouteWatcher, ctx context.Context, p netip.Prefix) error
	redirects func(w routing.RouteWatcher, ctx context.Context) ([]routing.Redirect, error)
}

func (b *broken) Wait(ctx context.Context, e routing.Expect) (routing.Converged, error) {
	if b.wait != nil {
		return b.wait(b.RouteWatcher, ctx, e)
	}
	return b.RouteWatcher.Wait(ctx, e)
}

func (b *broken) AddRedirect(ctx context.Context, r routing.Redirect) error {
	if b.add != nil {
		return b.add(b.RouteWatcher, ctx, r)
	}
	return b.RouteWatcher.AddRedirect(ctx, r)
}

func (b *broken) RemoveRedirect(ctx context.Context, p netip.Prefix) error {
	if b.remove != nil {
		return b.remove(b.RouteWatcher, ctx, p)
	}
	return b.RouteWatcher.RemoveRedirect(ctx, p)
}

func (b *broken) Redirects(ctx context.Context) ([]routing.Redirect, error) {
	if b.redirects != nil {
		return b.redirects(b.RouteWatcher, ctx)
	}
	return b.RouteWatcher.Redirects(ctx)
}

// lyingAdd installs change(r) (or nothing, if it returns false) and
// lists r as asked.
func lyingAdd(change func(r *routing.Redirect) bool) func(routing.RouteWatcher) routing.RouteWatcher {
	return func(w routing.RouteWatcher) routing.RouteWatcher {
		var mu sync.Mutex
		said := map[netip.Prefix]routing.Redirect{}
		return &broken{RouteWatcher: w,
			add: func(w routing.RouteWatcher, ctx context.Context, r routing.Redirect) error {
				asked := r
				if change(&r) {
					if err := w.AddRedirect(ctx, r); err != nil {
						return err
					}
				} else if err := r.Validate(); err != nil {
					return err
				}
				mu.Lock()
				said[asked.Prefix] = asked
				mu.Unlock()
				return nil
			},
			remove: func(w routing.RouteWatcher, ctx context.Context, p netip.Prefix) error {
				mu.Lock()
				_, ok := said[p]
				delete(said, p)
				mu.Unlock()
				err := w.RemoveRedirect(ctx, p)
				if ok && errors.Is(err, routing.ErrNoRedirect) {
					return nil
				}
				return err
			},
			redirects: func(w routing.RouteWatcher, ctx context.Context) ([]routing.Redirect, error) {
				mu.Lock()
				defer mu.Unlock()
				var out []routing.Redirect
				for _, r := range said {
					out = append(out, r)
				}
				return out, nil
			},
		}
	}
}

func mapErr(w routing.RouteWatcher, fn func(error) error) routing.RouteWatcher {
	return &broken{RouteWatcher: w,
		wait: func(w routing.RouteWatcher, ctx context.Context, e routing.Expect) (routing.Converged, error) {
			c, err := w.Wait(ctx, e)
			return c, fn(err)
		},
		add: func(w routing.RouteWatcher, ctx context.Context, r routing.Redirect) error {
			return fn(w.AddRedirect(ctx, r))
		},
		remove: func(w routing.RouteWatcher, ctx context.Context, p netip.Prefix) error {
			return fn(w.RemoveRedirect(ctx, p))
		},
		redirects: func(w routing.RouteWatcher, ctx context.Context) ([]routing.Redirect, error) {
			rs, err := w.Redirects(ctx)
			return rs, fn(err)
		},
	}
}

// present reports whether w has a route matching e now.
func present(w routing.RouteWatcher, ctx context.Context, e routing.Expect) bool {
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := w.Wait(short, e)
	return err == nil
}

var mutants = []conform.Mutant[func(routing.RouteWatcher) routing.RouteWatcher]{
	{Name: "Wait sees only routes that come after a delay (no dump)", Caught: []string{"WaitSeesRoutePresent", "WaitSeesRouteAddedLater"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return &broken{RouteWatcher: w, wait: func(w routing.RouteWatcher, ctx context.Context, e routing.Expect) (routing.Converged, error) {
				// Subscribes late: a route there within the first 50 ms is missed.
				start := time.Now()
				for present(w, ctx, e) {
					if time.Since(start) > 50*time.Millisecond {
						<-ctx.Done()
						return routing.Converged{}, ctx.Err()
					}
				}
				return w.Wait(ctx, e)
			}}
		}},
	{Name: "Wait ignores all but the prefix", Caught: []string{"WaitSeesRouteAddedLater", "WaitEndsWithContext"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return &broken{RouteWatcher: w, wait: func(w routing.RouteWatcher, ctx context.Context, e routing.Expect) (routing.Converged, error) {
				return w.Wait(ctx, routing.Expect{Prefix: e.Prefix})
			}}
		}},
	{Name: "Wait reports After 0", Caught: []string{"WaitSeesRouteAddedLater"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return &broken{RouteWatcher: w, wait: func(w routing.RouteWatcher, ctx context.Context, e routing.Expect) (routing.Converged, error) {
				c, err := w.Wait(ctx, e)
				c.After = 0
				return c, err
			}}
		}},
	{Name: "Wait hides the context's error", Caught: []string{"WaitEndsWithContext"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return mapErr(w, func(err error) error {
				if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
					return errors.New("gave up")
				}
				return err
			})
		}},
	{Name: "AddRedirect installs nothing (and lists it)", Caught: []string{"AddRedirectInstallsKernelRoute"},
		Break: lyingAdd(func(*routing.Redirect) bool { return false })},
	{Name: "AddRedirect installs the redirect with metric 1", Caught: []string{"AddRedirectInstallsKernelRoute"},
		Break: lyingAdd(func(r *routing.Redirect) bool { r.Metric = 1; return true })},
	{Name: "the same redirect again is refused", Caught: []string{"AddRedirectIdempotentAndListedAfterRestart"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return &broken{RouteWatcher: w, add: func(w routing.RouteWatcher, ctx context.Context, r routing.Redirect) error {
				rs, _ := w.Redirects(ctx)
				for _, x := range rs {
					if x.Prefix == r.Prefix {
						return errors.New("exists")
					}
				}
				return w.AddRedirect(ctx, r)
			}}
		}},
	{Name: "Redirects lists only this watcher's", Caught: []string{"AddRedirectIdempotentAndListedAfterRestart"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return lyingAdd(func(*routing.Redirect) bool { return true })(w)
		}},
	{Name: "RemoveRedirect of nothing succeeds", Caught: []string{"RemoveRedirect"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return mapErr(w, func(err error) error {
				if errors.Is(err, routing.ErrNoRedirect) {
					return nil
				}
				return err
			})
		}},
	{Name: "an invalid redirect is installed anyway", Caught: []string{"InvalidInputTouchesNothing"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return &broken{RouteWatcher: w, add: func(w routing.RouteWatcher, ctx context.Context, r routing.Redirect) error {
				if err := r.Validate(); err != nil {
					_ = w.AddRedirect(ctx, routing.Redirect{Prefix: Subnet, Device: TunnelDevice})
					return err
				}
				return w.AddRedirect(ctx, r)
			}}
		}},
	{Name: "ErrInvalid names no field", Caught: []string{"InvalidInputTouchesNothing"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return mapErr(w, func(err error) error {
				if errors.Is(err, routing.ErrInvalid) {
					return routing.ErrInvalid
				}
				return err
			})
		}},
	{Name: "IPv6 redirects are not installed", Caught: []string{"IPv6Redirect"},
		Break: lyingAdd(func(r *routing.Redirect) bool { return r.Prefix.Addr().Is4() })},
	{Name: "Wait for an IPv6 prefix ignores NotDevice and Via", Caught: []string{"IPv6Convergence"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return &broken{RouteWatcher: w, wait: func(w routing.RouteWatcher, ctx context.Context, e routing.Expect) (routing.Converged, error) {
				if e.Prefix.Addr().Is6() {
					e = routing.Expect{Prefix: e.Prefix, Device: e.Device}
				}
				return w.Wait(ctx, e)
			}}
		}},
	{Name: "a missing host loses its sentinel", Caught: []string{"MissingHost"},
		Break: func(w routing.RouteWatcher) routing.RouteWatcher {
			return mapErr(w, func(err error) error {
				if errors.Is(err, host.ErrNotFound) {
					return errors.New(err.Error())
				}
				return err
			})
		}},
}

// TestSuiteCatchesBrokenWatchers: each check fails against a watcher
// (routing/netlinkroute, broken on purpose) that breaks the promise it
// checks.
func TestSuiteCatchesBrokenWatchers(t *testing.T) {
	conform.Mutants(t, checks, mutants, func(m conform.Mutant[func(routing.RouteWatcher) routing.RouteWatcher]) Harness {
		return Harness{New: func(_ testing.TB, host string) routing.RouteWatcher {
			return m.Break(netlinkroute.New(netlinkroute.WithHost(host)))
		}}
	})
}
