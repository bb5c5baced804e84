package netlinkroute

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/routing"
)

// AddRedirect installs a route to r.Prefix through r.Device (and r.Via)
// with r.Metric (0: the default metric), marked with the watcher's route
// protocol. Adding the same redirect again is a no-op; a redirect for the
// same prefix with another device, next hop or metric replaces sealift's
// earlier one (the new route is in place before the old one goes). A
// route to the prefix with the same metric that sealift did not install
// is left alone and reported as an error.
func (w *Watcher) AddRedirect(ctx context.Context, r routing.Redirect) error {
	if err := r.Validate(); err != nil {
		return err
	}
	if r.Via.IsValid() && r.Via.Is4() != r.Prefix.Addr().Is4() {
		return fmt.Errorf("%w: Redirect.Via %s is not of the family of %s", routing.ErrInvalid, r.Via, r.Prefix)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := w.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(r.Device)
	if err != nil {
		return fmt.Errorf("%w: Redirect.Device %q not found in host %q: %v", routing.ErrInvalid, r.Device, w.host, err)
	}
	metric := r.Metric
	if metric == 0 {
		metric = w.metric
	}
	want := netlink.Route{
		Dst:       toIPNet(r.Prefix),
		LinkIndex: link.Attrs().Index,
		Priority:  metric,
		Protocol:  w.protocol,
		Table:     w.table,
		Scope:     netlink.SCOPE_UNIVERSE,
	}
	if r.Via.IsValid() {
		want.Gw = r.Via.AsSlice()
	} else {
		want.Scope = netlink.SCOPE_LINK
	}

	old, err := w.list(h, r.Prefix)
	if err != nil {
		return err
	}
	for _, o := range old {
		if o.LinkIndex == want.LinkIndex && o.Priority == want.Priority && toAddr(o.Gw) == r.Via {
			w.log.Debug("redirect already installed", "host", w.host, "prefix", r.Prefix, "dev", r.Device, "metric", metric)
			return nil
		}
	}
	var stale []netlink.Route
	replace := false
	for _, o := range old {
		if o.Priority == want.Priority {
			replace = true // same kernel key: replaced in place
		} else {
			stale = append(stale, o)
		}
	}
	if replace {
		err = h.RouteReplace(&want)
	} else {
		err = h.RouteAdd(&want)
	}
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("netlinkroute: redirect %s dev %s metric %d in %q: a route that sealift did not install has the same prefix and metric: %w", r.Prefix, r.Device, metric, w.host, err)
		}
		return fmt.Errorf("netlinkroute: add redirect %s dev %s metric %d in %q: %w", r.Prefix, r.Device, metric, w.host, err)
	}
	for i := range stale {
		if err := h.RouteDel(&stale[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("netlinkroute: remove replaced redirect %s metric %d in %q: %w", r.Prefix, stale[i].Priority, w.host, err)
		}
	}
	w.log.Info("redirect installed", "host", w.host, "prefix", r.Prefix, "dev", r.Device, "via", r.Via, "metric", metric)
	return nil
}

// RemoveRedirect deletes sealift's redirect routes to prefix (only those
// marked with the watcher's protocol); routing.ErrNoRedirect if there are
// none. The kernel switches to the next best route atomically, so traffic
// that already has a better route does not notice.
func (w *Watcher) RemoveRedirect(ctx context.Context, prefix netip.Prefix) error {
	if !prefix.IsValid() || prefix != prefix.Masked() {
		return fmt.Errorf("%w: prefix %s is not a valid masked prefix", routing.ErrInvalid, prefix)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := w.handle()
	if err != nil {
		return err
	}
	defer h.Close()
	old, err := w.list(h, prefix)
	if err != nil {
		return err
	}
	if len(old) == 0 {
		return fmt.Errorf("netlinkroute: %s in %q: %w", prefix, w.host, routing.ErrNoRedirect)
	}
	for i := range old {
		// The route as listed carries the protocol, metric and next hop:
		// the kernel deletes exactly this one.
		if err := h.RouteDel(&old[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("netlinkroute: remove redirect %s metric %d in %q: %w", prefix, old[i].Priority, w.host, err)
		}
	}
	w.log.Info("redirect removed", "host", w.host, "prefix", prefix)
	return nil
}

// Redirects lists the redirect routes installed in the watcher's table
// (marked with its protocol), e.g. to recover after a restart.
func (w *Watcher) Redirects(ctx context.Context) ([]routing.Redirect, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h, err := w.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	names := &linkNames{h: h}
	var out []routing.Redirect
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := w.listFamily(h, fam, nil)
		if err != nil {
			return nil, err
		}
		for _, r := range routes {
			p, ok := toPrefix(r.Dst, fam)
			if !ok {
				continue
			}
			out = append(out, routing.Redirect{Prefix: p, Device: names.name(r.LinkIndex), Via: toAddr(r.Gw), Metric: r.Priority})
		}
	}
	return out, nil
}

// list returns sealift's routes to prefix.
func (w *Watcher) list(h *netlink.Handle, prefix netip.Prefix) ([]netlink.Route, error) {
	return w.listFamily(h, family(prefix), &prefix)
}

// listFamily returns sealift's routes of one family, to prefix if given.
// An interrupted dump is repeated: deleting by a stale list could miss a
// route.
func (w *Watcher) listFamily(h *netlink.Handle, fam int, prefix *netip.Prefix) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: w.table, Protocol: w.protocol}
	mask := uint64(netlink.RT_FILTER_TABLE | netlink.RT_FILTER_PROTOCOL)
	var (
		routes []netlink.Route
		err    error
	)
	for i := 0; i < dumpRetries; i++ {
		routes, err = h.RouteListFiltered(fam, filter, mask)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("netlinkroute: list redirects in %q: %w", w.host, err)
	}
	if prefix == nil {
		return routes, nil
	}
	out := routes[:0]
	for _, r := range routes {
		if p, ok := toPrefix(r.Dst, fam); ok && p == *prefix {
			out = append(out, r)
		}
	}
	return out, nil
}
