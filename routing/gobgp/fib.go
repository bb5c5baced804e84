package gobgp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
)

// DefaultFIBMetric is the metric SyncFIB installs BGP routes with when
// given 0: low, so that a learned route beats a redirect (whose default
// metric is netlinkroute.DefaultRedirectMetric).
const DefaultFIBMetric = 20

// SyncFIB is the lab's stand-in for zebra: until ctx ends or stop is
// called, it installs the speaker's best path to every prefix learned from
// a neighbor into the host's main kernel table (proto bgp, with metric),
// replaces it when the best path changes and deletes it when the prefix
// is withdrawn. Locally originated paths are not installed. stop ends the
// sync and deletes the routes it installed.
func (w *Watcher) SyncFIB(ctx context.Context, metric int) (stop func(), err error) {
	if metric < 0 {
		return nil, fmt.Errorf("%w: SyncFIB metric %d is negative", routing.ErrInvalid, metric)
	}
	if metric == 0 {
		metric = DefaultFIBMetric
	}
	h, err := nsutil.Handle(w.host, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("gobgp: sync FIB: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	f := &fib{w: w, h: h, metric: metric, installed: map[netip.Prefix]netip.Addr{}, dirty: map[netip.Prefix]bool{}, kick: make(chan struct{}, 1)}
	req := &api.WatchEventRequest{Table: &api.WatchEventRequest_Table{
		Filters: []*api.WatchEventRequest_Table_Filter{{Type: api.WatchEventRequest_Table_Filter_BEST, Init: true}},
	}}
	if err := w.s.WatchEvent(sctx, req, f.event); err != nil {
		cancel()
		h.Close()
		return nil, fmt.Errorf("gobgp: watch best paths: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.run(sctx)
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
			f.removeAll()
			h.Close()
		})
	}, nil
}

// fib is the state of one SyncFIB.
type fib struct {
	w         *Watcher
	h         *netlink.Handle
	metric    int
	installed map[netip.Prefix]netip.Addr // prefix -> next hop in the kernel

	mu    sync.Mutex
	dirty map[netip.Prefix]bool
	kick  chan struct{}
}

// event marks the prefixes of a best-path event for a re-check.
func (f *fib) event(r *api.WatchEventResponse) {
	t := r.GetTable()
	if t == nil {
		return
	}
	f.mu.Lock()
	for _, p := range t.Paths {
		if pfx, ok := pathPrefix(p); ok {
			f.dirty[pfx] = true
		}
	}
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

func (f *fib) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		}
		f.mu.Lock()
		dirty := f.dirty
		f.dirty = map[netip.Prefix]bool{}
		f.mu.Unlock()
		for pfx := range dirty {
			if err := f.sync(ctx, pfx); err != nil && ctx.Err() == nil {
				f.w.log.Warn("fib sync failed", "prefix", pfx, "host", f.w.host, "err", err)
			}
		}
	}
}

// sync makes the kernel's BGP route to pfx follow the best learned path.
func (f *fib) sync(ctx context.Context, pfx netip.Prefix) error {
	best, err := f.w.bestPaths(ctx, pfx)
	if err != nil {
		return err
	}
	var via netip.Addr
	for _, p := range best {
		if p.NeighborIp == "" || p.NeighborIp == "<nil>" {
			continue // originated here
		}
		if nh := nextHop(p); nh.IsValid() {
			via = nh
			break
		}
	}
	old, had := f.installed[pfx]
	switch {
	case via.IsValid() && (!had || old != via):
		r := f.route(pfx)
		r.Gw = via.AsSlice()
		if err := f.h.RouteReplace(r); err != nil {
			return fmt.Errorf("install %s via %s metric %d: %w", pfx, via, f.metric, err)
		}
		f.installed[pfx] = via
		f.w.log.Debug("fib: route installed", "prefix", pfx, "via", via, "metric", f.metric)
	case !via.IsValid() && had:
		if err := f.h.RouteDel(f.route(pfx)); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("remove %s metric %d: %w", pfx, f.metric, err)
		}
		delete(f.installed, pfx)
		f.w.log.Debug("fib: route removed", "prefix", pfx)
	}
	return nil
}

// route is the kernel route SyncFIB owns for pfx (without next hop).
func (f *fib) route(pfx netip.Prefix) *netlink.Route {
	bits := 128
	if pfx.Addr().Is4() {
		bits = 32
	}
	return &netlink.Route{
		Dst:      &net.IPNet{IP: pfx.Addr().AsSlice(), Mask: net.CIDRMask(pfx.Bits(), bits)},
		Priority: f.metric,
		Protocol: unix.RTPROT_BGP,
		Table:    unix.RT_TABLE_MAIN,
	}
}

// removeAll deletes every route this sync installed.
func (f *fib) removeAll() {
	for pfx := range f.installed {
		if err := f.h.RouteDel(f.route(pfx)); err != nil && !errors.Is(err, unix.ESRCH) {
			f.w.log.Warn("fib: remove route", "prefix", pfx, "err", err)
		}
		delete(f.installed, pfx)
	}
}
