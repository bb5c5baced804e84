package netlinkroute

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
)

// dumpRetries bounds how often Wait repeats a table dump that the kernel
// reports as interrupted (NLM_F_DUMP_INTR: the table changed during the
// dump). Every route added during the dump also arrives as an update, so
// a retry only guards against a removed route counted as present.
const dumpRetries = 5

// Wait returns once the host's routing table (the watcher's table) has a
// route matching e, or the context's error. It subscribes to route
// updates before it reads the table, so a route that appears at any time
// after Wait was called is seen. A route already present yields
// Converged.After == 0.
func (w *Watcher) Wait(ctx context.Context, e routing.Expect) (routing.Converged, error) {
	if err := e.Validate(); err != nil {
		return routing.Converged{}, err
	}
	start := time.Now()
	ns, err := nsutil.Open(w.host)
	if err != nil {
		return routing.Converged{}, fmt.Errorf("netlinkroute: wait for %s: %w", e.Prefix, err)
	}
	defer ns.Close()

	updates := make(chan netlink.RouteUpdate, 256)
	done := make(chan struct{})
	errc := make(chan error, 1)
	opts := netlink.RouteSubscribeOptions{
		Namespace:         &ns,
		ReceiveBufferSize: 1 << 20,
		ErrorCallback: func(err error) {
			select {
			case errc <- err:
			default:
			}
		},
	}
	if err := netlink.RouteSubscribeWithOptions(updates, done, opts); err != nil {
		return routing.Converged{}, fmt.Errorf("netlinkroute: subscribe to routes in %q: %w", w.host, err)
	}
	defer func() {
		close(done)
		// The subscription goroutine may be blocked sending: drain until
		// it closes the channel.
		go func() {
			for range updates {
			}
		}()
	}()

	h, err := nsutil.HandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return routing.Converged{}, fmt.Errorf("netlinkroute: netlink in host %q: %w", w.host, err)
	}
	defer h.Close()
	names := &linkNames{h: h}

	if r, ok, err := w.lookup(h, names, e); err != nil {
		return routing.Converged{}, err
	} else if ok {
		w.log.Debug("route already present", "host", w.host, "prefix", e.Prefix, "via", r.Via, "dev", r.Device)
		return routing.Converged{Route: r}, nil
	}
	if w.ready != nil {
		w.ready()
	}

	for {
		select {
		case <-ctx.Done():
			return routing.Converged{}, fmt.Errorf("netlinkroute: wait for %s in %q: %w", e.Prefix, w.host, ctx.Err())
		case err := <-errc:
			return routing.Converged{}, fmt.Errorf("netlinkroute: route updates in %q: %w", w.host, err)
		case u, ok := <-updates:
			if !ok {
				return routing.Converged{}, fmt.Errorf("netlinkroute: route updates in %q ended", w.host)
			}
			if u.Type != unix.RTM_NEWROUTE || !w.inTable(u.Route) {
				continue
			}
			for _, r := range toRoutes(u.Route, names, w.protocol) {
				if e.Matches(r) {
					after := time.Since(start)
					w.log.Debug("route appeared", "host", w.host, "prefix", e.Prefix, "via", r.Via, "dev", r.Device, "after", after)
					return routing.Converged{Route: r, After: after}, nil
				}
			}
		}
	}
}

// lookup dumps the routes to e.Prefix and returns the first that matches.
func (w *Watcher) lookup(h *netlink.Handle, names *linkNames, e routing.Expect) (routing.Route, bool, error) {
	filter := &netlink.Route{Table: w.table, Dst: toIPNet(e.Prefix)}
	var (
		routes []netlink.Route
		err    error
	)
	for i := 0; i < dumpRetries; i++ {
		routes, err = h.RouteListFiltered(family(e.Prefix), filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_DST)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return routing.Route{}, false, fmt.Errorf("netlinkroute: list routes to %s in %q: %w", e.Prefix, w.host, err)
	}
	for _, kr := range routes {
		if !w.inTable(kr) {
			continue
		}
		for _, r := range toRoutes(kr, names, w.protocol) {
			if e.Matches(r) {
				return r, true, nil
			}
		}
	}
	return routing.Route{}, false, nil
}

// inTable reports whether r is a unicast route of the watcher's table (a
// blackhole or unreachable route to the prefix proves nothing, and a
// cached clone is no route).
func (w *Watcher) inTable(r netlink.Route) bool {
	if r.Flags&unix.RTM_F_CLONED != 0 {
		return false
	}
	return r.Table == w.table && (r.Type == unix.RTN_UNICAST || r.Type == 0)
}
