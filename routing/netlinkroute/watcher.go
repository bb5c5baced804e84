// Package netlinkroute is the kernel backend of routing.RouteWatcher: it
// watches a host's kernel routing table through rtnetlink and installs the
// redirect routes that send a moved subnet into the secure tunnel (claim 8,
// FIG. 3 blocks 335-340 and 375-390).
//
// Redirect routes are marked with their own route protocol number
// (Protocol, 220 unless WithProtocol says otherwise), so that Redirects
// finds them again after a restart and RemoveRedirect never removes a
// route that sealift did not install.
package netlinkroute

import (
	"fmt"
	"io"
	"log/slog"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
)

// Protocol is the default route protocol number (rtm_protocol) that marks
// sealift's redirect routes; `ip route` shows it as "proto 220".
const Protocol = netlink.RouteProtocol(0xdc)

// DefaultRedirectMetric is the metric of a redirect whose Metric is 0:
// high, so that any real route to the prefix wins as soon as it appears.
const DefaultRedirectMetric = 4096

var _ routing.RouteWatcher = (*Watcher)(nil)

// Watcher watches one host's kernel routing table and manages sealift's
// redirect routes in it. It holds no open resources between calls; the
// zero value is not usable, build one with New.
type Watcher struct {
	host     string
	table    int
	protocol netlink.RouteProtocol
	metric   int
	log      *slog.Logger
	// ready, if set (tests only), is called once Wait has subscribed and
	// dumped the table without finding the route.
	ready func()
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithHost selects the host: a network namespace name ("" = the current
// one, the default).
func WithHost(ns string) Option { return func(w *Watcher) { w.host = ns } }

// WithTable selects the routing table (default: main, 254).
func WithTable(table int) Option { return func(w *Watcher) { w.table = table } }

// WithProtocol sets the route protocol number that marks redirect routes
// (default Protocol). Two sealift instances sharing a host must use the
// same number, or each ignores the other's redirects.
func WithProtocol(p netlink.RouteProtocol) Option { return func(w *Watcher) { w.protocol = p } }

// WithDefaultMetric sets the metric of redirects whose Metric is 0
// (default DefaultRedirectMetric).
func WithDefaultMetric(m int) Option { return func(w *Watcher) { w.metric = m } }

// WithLogger sets the logger (default: a logger that discards).
func WithLogger(l *slog.Logger) Option { return func(w *Watcher) { w.log = l } }

// New builds a Watcher. It touches nothing until a method is called.
func New(opts ...Option) *Watcher {
	w := &Watcher{
		table:    unix.RT_TABLE_MAIN,
		protocol: Protocol,
		metric:   DefaultRedirectMetric,
		log:      slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for _, o := range opts {
		o(w)
	}
	return w
}

// Host returns the network namespace the watcher works in ("" = current).
func (w *Watcher) Host() string { return w.host }

// handle opens a netlink route handle in the watcher's host; a missing
// host is host.ErrNotFound naming it.
func (w *Watcher) handle() (*netlink.Handle, error) {
	h, err := nsutil.Handle(w.host, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlinkroute: %w", err)
	}
	return h, nil
}
