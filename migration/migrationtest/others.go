package migrationtest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// Fencer is a fake fence.Fencer for one host.
type Fencer struct {
	Faults
	mu     sync.Mutex
	fences map[string]fence.Fence
}

var _ fence.Fencer = (*Fencer)(nil)

// Fencer returns a fake fencer of host.
func (w *World) Fencer(host string) *Fencer {
	return &Fencer{Faults: Faults{name: "fence:" + host, log: &w.Recorder}, fences: map[string]fence.Fence{}}
}

func (f *Fencer) Fence(_ context.Context, s fence.Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := f.enter("Fence", s.VM+" via="+strings.Join(s.AllowVia, ",")); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fences[s.VM] = fence.Fence{Spec: s, Backend: "fake", Since: time.Now()}
	return nil
}

func (f *Fencer) Lift(_ context.Context, vm string) error {
	if err := f.enter("Lift", vm); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.fences[vm]; !ok {
		return fmt.Errorf("%w: %q", fence.ErrNotFenced, vm)
	}
	delete(f.fences, vm)
	return nil
}

func (f *Fencer) List(context.Context) ([]fence.Fence, error) {
	if err := f.enter("List", ""); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]fence.Fence, 0, len(f.fences))
	for _, fc := range f.fences {
		out = append(out, fc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out, nil
}

// Fenced returns the VM's fence and whether there is one.
func (f *Fencer) Fenced(vm string) (fence.Spec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, ok := f.fences[vm]
	return fc.Spec, ok
}

// Linker is a fake tunnel.SecureLinker (both ends in memory).
type Linker struct {
	Faults
	mu    sync.Mutex
	links map[string]*tunnel.Link
}

var _ tunnel.SecureLinker = (*Linker)(nil)

// Linker returns a fake secure linker.
func (w *World) Linker() *Linker {
	return &Linker{Faults: Faults{name: "link", log: &w.Recorder}, links: map[string]*tunnel.Link{}}
}

func (l *Linker) Prepare(_ context.Context, s tunnel.Spec) (tunnel.Link, error) {
	if err := s.Validate(); err != nil {
		return tunnel.Link{}, err
	}
	if err := l.enter("Prepare", s.ID); err != nil {
		return tunnel.Link{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.links[s.ID]; ok {
		return *old, nil
	}
	k := &tunnel.Link{Spec: s, Backend: "fake-" + string(s.Kind)}
	if s.Kind == tunnel.WireGuard {
		k.SecureDevice, k.RemoteDevice = "wg"+s.ID+"s", "wg"+s.ID+"r"
	} else {
		k.Policy = []string{fmt.Sprintf("src %v dst %v proto esp mode tunnel", s.Remote.Protected, s.Secure.Protected)}
	}
	l.links[s.ID] = k
	return *k, nil
}

func (l *Linker) Activate(_ context.Context, id string) error {
	if err := l.enter("Activate", id); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.links[id]
	if !ok {
		return fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	k.Active = true
	return nil
}

func (l *Linker) Verify(_ context.Context, id string) (tunnel.Proof, error) {
	if err := l.enter("Verify", id); err != nil {
		return tunnel.Proof{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.links[id]
	if !ok {
		return tunnel.Proof{}, fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	if !k.Active {
		return tunnel.Proof{}, fmt.Errorf("%w: link %q not active", tunnel.ErrNotProven, id)
	}
	return tunnel.Proof{Handshake: time.Now(), TxPackets: 1, RxPackets: 1, Detail: "fake"}, nil
}

func (l *Linker) Close(_ context.Context, id string) error {
	if err := l.enter("Close", id); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.links, id)
	return nil
}

func (l *Linker) List(context.Context) ([]tunnel.Link, error) {
	if err := l.enter("List", ""); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]tunnel.Link, 0, len(l.links))
	for _, k := range l.links {
		out = append(out, *k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Auditor is a fake conn.ConnAuditor: it returns the connections set
// with SetConns; Reset removes them (the endpoints "reconnect" if
// Reconnect is set: the same flows come back on the given device).
type Auditor struct {
	Faults
	mu        sync.Mutex
	conns     []conn.Conn
	resets    []conn.Conn
	Reconnect string
}

var _ conn.ConnAuditor = (*Auditor)(nil)

// Auditor returns a fake auditor of host.
func (w *World) Auditor(host string) *Auditor {
	return &Auditor{Faults: Faults{name: "audit:" + host, log: &w.Recorder}}
}

// SetConns sets what List returns.
func (a *Auditor) SetConns(cs ...conn.Conn) {
	a.mu.Lock()
	a.conns = slices.Clone(cs)
	a.mu.Unlock()
}

// ResetConns returns every connection Reset was asked to reset.
func (a *Auditor) ResetConns() []conn.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.resets)
}

func (a *Auditor) List(_ context.Context, sel conn.Selector) ([]conn.Conn, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	if err := a.enter("List", fmt.Sprint(sel.Addrs)); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.conns), nil
}

func (a *Auditor) Reset(_ context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
	if err := a.enter("Reset", fmt.Sprint(len(cs))); err != nil {
		return conn.ResetResult{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var res conn.ResetResult
	for _, c := range cs {
		a.resets = append(a.resets, c)
		i := slices.IndexFunc(a.conns, func(x conn.Conn) bool { return x.Local == c.Local && x.Remote == c.Remote && x.Proto == c.Proto })
		if i < 0 {
			res.Missed++
			continue
		}
		res.Reset++
		if a.Reconnect != "" {
			a.conns[i].Device = a.Reconnect
		} else {
			a.conns = slices.Delete(a.conns, i, i+1)
		}
	}
	return res, nil
}

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
	return &Router{Faults: Faults{name: "routing", log: &w.Recorder},
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
	if err := r.enter("Wait", e.Prefix.String()); err != nil {
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

func (r *Router) AddRedirect(_ context.Context, rd routing.Redirect) error {
	if err := rd.Validate(); err != nil {
		return err
	}
	if err := r.enter("AddRedirect", rd.Prefix.String()); err != nil {
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

func (r *Router) RemoveRedirect(_ context.Context, p netip.Prefix) error {
	if err := r.enter("RemoveRedirect", p.String()); err != nil {
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

func (r *Router) Redirects(context.Context) ([]routing.Redirect, error) {
	if err := r.enter("Redirects", ""); err != nil {
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
