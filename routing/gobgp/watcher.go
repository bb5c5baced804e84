// Package gobgp is the BGP backend of routing.RouteWatcher: an embedded
// GoBGP speaker stands for the routing core's BGP speaker, and Wait
// returns once the speaker has a best path to the moved subnet through
// its new location (claim 8, FIG. 3 blocks 375-390). Redirect routes are
// kernel routes; they are delegated to a routing/netlinkroute watcher for
// the same host.
//
// GoBGP and network namespaces: a socket belongs to the namespace of the
// thread that creates it. New creates the speaker's listeners inside the
// host's namespace (see WithHost), but GoBGP dials its neighbors from
// goroutines that run in the program's own namespace, so a speaker in
// another namespace only accepts sessions: its neighbors are passive.
package gobgp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/osrg/gobgp/v3/pkg/server"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
)

var _ routing.RouteWatcher = (*Watcher)(nil)

// Watcher watches an embedded GoBGP speaker's RIB and manages redirect
// routes in the host's kernel table.
type Watcher struct {
	host      string
	log       *slog.Logger
	s         *server.BgpServer
	owned     bool // built by New: Close stops it
	speaker   *Speaker
	redirects *netlinkroute.Watcher
	closeOnce sync.Once
	// ready, if set (tests only), is called once Wait has registered its
	// RIB watch and checked the RIB without finding the route.
	ready func()
}

// Option configures a Watcher.
type Option func(*Watcher)

// WithHost selects the host: the network namespace of the routing core
// ("" = the current one, the default). The speaker built by WithSpeaker
// listens there, next hops are resolved to devices there, and redirects
// are installed there.
func WithHost(ns string) Option { return func(w *Watcher) { w.host = ns } }

// WithLogger sets the logger, for the watcher and GoBGP (default: a
// logger that discards).
func WithLogger(l *slog.Logger) Option { return func(w *Watcher) { w.log = l } }

// WithServer uses an existing, started GoBGP server. The caller owns it:
// Close leaves it running.
func WithServer(s *server.BgpServer) Option { return func(w *Watcher) { w.s = s } }

// WithSpeaker makes New build, start and own a GoBGP speaker.
func WithSpeaker(sp Speaker) Option { return func(w *Watcher) { w.speaker = &sp } }

// WithRedirects sets the kernel watcher that installs redirects (default:
// netlinkroute.New(netlinkroute.WithHost(host), WithLogger(logger))).
func WithRedirects(r *netlinkroute.Watcher) Option { return func(w *Watcher) { w.redirects = r } }

// New builds a Watcher from exactly one of WithServer and WithSpeaker.
// With WithSpeaker it starts the speaker (listening in the host's
// namespace) and adds its neighbors. A host that does not exist is an
// error wrapping host.ErrNotFound.
func New(ctx context.Context, opts ...Option) (*Watcher, error) {
	w := &Watcher{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(w)
	}
	switch {
	case w.s == nil && w.speaker == nil:
		return nil, fmt.Errorf("%w: neither WithServer nor WithSpeaker given", routing.ErrInvalid)
	case w.s != nil && w.speaker != nil:
		return nil, fmt.Errorf("%w: both WithServer and WithSpeaker given", routing.ErrInvalid)
	}
	if err := nsutil.Check(w.host); err != nil {
		return nil, fmt.Errorf("gobgp: %w", err)
	}
	if w.redirects == nil {
		w.redirects = netlinkroute.New(netlinkroute.WithHost(w.host), netlinkroute.WithLogger(w.log))
	} else if w.redirects.Host() != w.host {
		return nil, fmt.Errorf("%w: WithRedirects watcher is for host %q, not %q", routing.ErrInvalid, w.redirects.Host(), w.host)
	}
	if w.speaker != nil {
		if err := w.speaker.Validate(); err != nil {
			return nil, err
		}
		s, err := startSpeaker(ctx, w.host, *w.speaker, w.log)
		if err != nil {
			return nil, err
		}
		w.s, w.owned = s, true
	}
	return w, nil
}

// Server returns the GoBGP server (to add peers, policies or paths).
func (w *Watcher) Server() *server.BgpServer { return w.s }

// Close stops the speaker if New built it; redirects stay installed.
func (w *Watcher) Close(ctx context.Context) error {
	if !w.owned {
		return nil
	}
	w.closeOnce.Do(func() { w.s.Stop() })
	return nil
}
