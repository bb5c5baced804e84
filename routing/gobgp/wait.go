package gobgp

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	api "github.com/osrg/gobgp/v3/api"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
)

// Wait returns once the speaker's best path to e.Prefix matches e (next
// hop; device = the host's interface towards the next hop), or the
// context's error. It registers a best-path watch on the RIB first
// (GoBGP registers it atomically with a snapshot of the current best
// paths), then checks the RIB, then re-checks on every event that
// concerns the prefix. Events only trigger checks: the RIB as ListPath
// reports it is the truth, because the watch reports best:false.
func (w *Watcher) Wait(ctx context.Context, e routing.Expect) (routing.Converged, error) {
	if err := e.Validate(); err != nil {
		return routing.Converged{}, err
	}
	// Next hops resolve to devices in the host: without it no Expect
	// with a Device could ever match.
	if err := nsutil.Check(w.host); err != nil {
		return routing.Converged{}, fmt.Errorf("gobgp: wait for a best path to %s: %w", e.Prefix, err)
	}
	start := time.Now()
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	kick, err := w.watchPrefix(wctx, e.Prefix)
	if err != nil {
		return routing.Converged{}, err
	}
	check := func() (routing.Route, bool, error) {
		best, err := w.bestPaths(wctx, e.Prefix)
		if err != nil {
			return routing.Route{}, false, err
		}
		for _, p := range best {
			if r := w.toRoute(e.Prefix, p); e.Matches(r) {
				return r, true, nil
			}
		}
		return routing.Route{}, false, nil
	}
	if r, ok, err := check(); err != nil {
		return routing.Converged{}, err
	} else if ok {
		return routing.Converged{Route: r}, nil
	}
	if w.ready != nil {
		w.ready()
	}
	for {
		select {
		case <-ctx.Done():
			return routing.Converged{}, fmt.Errorf("gobgp: wait for a best path to %s: %w", e.Prefix, ctx.Err())
		case <-kick:
			r, ok, err := check()
			if err != nil {
				if ctx.Err() != nil {
					return routing.Converged{}, fmt.Errorf("gobgp: wait for a best path to %s: %w", e.Prefix, ctx.Err())
				}
				return routing.Converged{}, err
			}
			if ok {
				after := time.Since(start)
				w.log.Debug("bgp route appeared", "prefix", e.Prefix, "via", r.Via, "dev", r.Device, "after", after)
				return routing.Converged{Route: r, After: after}, nil
			}
		}
	}
}

// watchPrefix registers a best-path watch (with the current best paths as
// its first event) and returns a channel that receives a token whenever
// an event concerns prefix. The watch ends with ctx.
func (w *Watcher) watchPrefix(ctx context.Context, prefix netip.Prefix) (<-chan struct{}, error) {
	kick := make(chan struct{}, 1)
	req := &api.WatchEventRequest{Table: &api.WatchEventRequest_Table{
		Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true}},
	}}
	err := w.s.WatchEvent(ctx, req, func(r *api.WatchEventResponse) {
		t := r.GetTable()
		if t == nil {
			return
		}
		for _, p := range t.Paths {
			if pp, ok := pathPrefix(p); !ok || pp == prefix {
				select {
				case kick <- struct{}{}:
				default:
				}
				return
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("gobgp: watch best paths: %w", err)
	}
	return kick, nil
}
