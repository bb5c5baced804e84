// Package routing is the contract for the secure environment's routing
// core (claim 8, FIG. 3 blocks 335-340 and 375-390): a temporary redirect
// route for a moved subnet into an encrypted tunnel, and a watch that
// returns once the core has a proper route to the subnet's new location.
// Backends: routing/netlinkroute (kernel routing table) and routing/gobgp
// (an embedded GoBGP speaker's RIB).
package routing

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// A host (netns) that does not exist is, from every backend, an error
// wrapping host.ErrNotFound (package github.com/sealift/sealift/host) that
// names it; the sentinels below cover the rest.
var (
	ErrInvalid = errors.New("routing: invalid argument")
	// ErrNoRedirect: RemoveRedirect found nothing to remove.
	ErrNoRedirect = errors.New("routing: no such redirect")
)

// Expect describes the route the watcher waits for.
type Expect struct {
	Prefix netip.Prefix
	// Via is the next hop that proves the new location (optional).
	Via netip.Addr
	// Device is the outgoing interface (optional).
	Device string
	// NotDevice excludes routes through this interface: the redirect
	// tunnel's route must not count as convergence.
	NotDevice string
}

// Validate names the first bad field.
func (e Expect) Validate() error {
	if !e.Prefix.IsValid() {
		return fmt.Errorf("%w: Expect.Prefix is not a valid prefix", ErrInvalid)
	}
	if e.Prefix != e.Prefix.Masked() {
		return fmt.Errorf("%w: Expect.Prefix %s has host bits set (want %s)", ErrInvalid, e.Prefix, e.Prefix.Masked())
	}
	if e.Via.IsValid() && e.Via.Is4() != e.Prefix.Addr().Is4() {
		return fmt.Errorf("%w: Expect.Via %s is not of the family of %s", ErrInvalid, e.Via, e.Prefix)
	}
	return nil
}

// Matches reports whether r satisfies e.
func (e Expect) Matches(r Route) bool {
	if r.Prefix != e.Prefix {
		return false
	}
	if e.Via.IsValid() && r.Via != e.Via {
		return false
	}
	if e.Device != "" && r.Device != e.Device {
		return false
	}
	if e.NotDevice != "" && r.Device == e.NotDevice {
		return false
	}
	return true
}

// Route is a route as the core knows it.
type Route struct {
	Prefix   netip.Prefix
	Via      netip.Addr
	Device   string
	Protocol string // "kernel", "static", "bgp", ...
}

// Converged is what Wait returns.
type Converged struct {
	Route Route
	// After is the time from the start of Wait to the route's appearance
	// (0 if it was already there).
	After time.Duration
}

// Redirect sends a moved prefix from the core into an encrypted tunnel.
type Redirect struct {
	Prefix netip.Prefix
	// Device is the secure tunnel's interface in the core (from a
	// tunnel.SecureLinker link whose Secure end is the core).
	Device string
	// Via is an optional next hop on that device.
	Via netip.Addr
	// Metric lets the real route win once it arrives; the redirect is
	// installed with this metric (0: backend default, a high number).
	Metric int
}

// Validate names the first bad field.
func (r Redirect) Validate() error {
	if !r.Prefix.IsValid() {
		return fmt.Errorf("%w: Redirect.Prefix is not a valid prefix", ErrInvalid)
	}
	if r.Prefix != r.Prefix.Masked() {
		return fmt.Errorf("%w: Redirect.Prefix %s has host bits set", ErrInvalid, r.Prefix)
	}
	if r.Device == "" {
		return fmt.Errorf("%w: Redirect.Device is empty (prefix %s)", ErrInvalid, r.Prefix)
	}
	if r.Metric < 0 {
		return fmt.Errorf("%w: Redirect.Metric %d is negative", ErrInvalid, r.Metric)
	}
	return nil
}

// RouteWatcher watches one routing core and manages redirects in it.
type RouteWatcher interface {
	// Wait returns once the core has a route matching e, or the
	// context's error. It never misses an update that happens after it
	// was called (subscribe, then dump).
	Wait(ctx context.Context, e Expect) (Converged, error)
	// AddRedirect installs r (idempotent).
	AddRedirect(ctx context.Context, r Redirect) error
	// RemoveRedirect removes the redirect for prefix; ErrNoRedirect if
	// there is none.
	RemoveRedirect(ctx context.Context, prefix netip.Prefix) error
	// Redirects lists installed redirects (for recovery).
	Redirects(ctx context.Context) ([]Redirect, error)
}
