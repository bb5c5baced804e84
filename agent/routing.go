package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/routing"
)

// WithRouteWatcher serves r: the host is a routing core.
func WithRouteWatcher(r routing.RouteWatcher) Option { return func(s *Server) { s.router = r } }

// parseAddr parses an optional address ("" = unset).
func parseAddr(field, s string) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return a, invalid(routing.ErrInvalid, "%s %q: %v", field, s, err)
	}
	return a, nil
}

func parsePrefix(field, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, invalid(routing.ErrInvalid, "%s %q: %v", field, s, err)
	}
	return p, nil
}

func addrText(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

func expectFromPB(pb *agentpb.Expect) (routing.Expect, error) {
	e := routing.Expect{Device: pb.GetDevice(), NotDevice: pb.GetNotDevice()}
	var err error
	if e.Prefix, err = parsePrefix("expect.prefix", pb.GetPrefix()); err != nil {
		return e, err
	}
	if e.Via, err = parseAddr("expect.via", pb.GetVia()); err != nil {
		return e, err
	}
	if err := e.Validate(); err != nil {
		return e, toStatus(err)
	}
	return e, nil
}

func redirectToPB(r routing.Redirect) *agentpb.Redirect {
	return &agentpb.Redirect{Prefix: r.Prefix.String(), Device: r.Device, Via: addrText(r.Via), Metric: int64(r.Metric)}
}

func redirectFromPB(pb *agentpb.Redirect) (routing.Redirect, error) {
	r := routing.Redirect{Device: pb.GetDevice(), Metric: int(pb.GetMetric())}
	if int64(r.Metric) != pb.GetMetric() {
		return r, invalid(routing.ErrInvalid, "redirect.metric %d out of range", pb.GetMetric())
	}
	var err error
	if r.Prefix, err = parsePrefix("redirect.prefix", pb.GetPrefix()); err != nil {
		return r, err
	}
	if r.Via, err = parseAddr("redirect.via", pb.GetVia()); err != nil {
		return r, err
	}
	if err := r.Validate(); err != nil {
		return r, toStatus(err)
	}
	return r, nil
}

// routingServer serves a routing.RouteWatcher.
type routingServer struct {
	agentpb.UnimplementedRouteWatcherServer
	r routing.RouteWatcher
}

func (s *routingServer) Wait(ctx context.Context, pb *agentpb.Expect) (*agentpb.Converged, error) {
	e, err := expectFromPB(pb)
	if err != nil {
		return nil, err
	}
	c, err := s.r.Wait(ctx, e)
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentpb.Converged{AfterNanos: int64(c.After), Route: &agentpb.Route{
		Prefix: c.Route.Prefix.String(), Via: addrText(c.Route.Via), Device: c.Route.Device, Protocol: c.Route.Protocol}}, nil
}

func (s *routingServer) AddRedirect(ctx context.Context, pb *agentpb.Redirect) (*agentpb.AddRedirectResponse, error) {
	r, err := redirectFromPB(pb)
	if err != nil {
		return nil, err
	}
	return &agentpb.AddRedirectResponse{}, toStatus(s.r.AddRedirect(ctx, r))
}

func (s *routingServer) RemoveRedirect(ctx context.Context, pb *agentpb.RemoveRedirectRequest) (*agentpb.RemoveRedirectResponse, error) {
	p, err := parsePrefix("prefix", pb.GetPrefix())
	if err != nil {
		return nil, err
	}
	return &agentpb.RemoveRedirectResponse{}, toStatus(s.r.RemoveRedirect(ctx, p))
}

func (s *routingServer) Redirects(ctx context.Context, _ *agentpb.RedirectsRequest) (*agentpb.RedirectsResponse, error) {
	rs, err := s.r.Redirects(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &agentpb.RedirectsResponse{}
	for _, r := range rs {
		resp.Redirects = append(resp.Redirects, redirectToPB(r))
	}
	return resp, nil
}

// RouteWatcher returns the agent's RouteWatcher (the agent of a routing
// core).
func (c *Client) RouteWatcher() routing.RouteWatcher {
	return &remoteRouter{addr: c.addr, pb: agentpb.NewRouteWatcherClient(c.cc)}
}

type remoteRouter struct {
	addr string
	pb   agentpb.RouteWatcherClient
}

var _ routing.RouteWatcher = (*remoteRouter)(nil)

func (r *remoteRouter) Wait(ctx context.Context, e routing.Expect) (routing.Converged, error) {
	if err := e.Validate(); err != nil {
		return routing.Converged{}, err
	}
	resp, err := r.pb.Wait(ctx, &agentpb.Expect{Prefix: e.Prefix.String(), Via: addrText(e.Via), Device: e.Device, NotDevice: e.NotDevice})
	if err != nil {
		return routing.Converged{}, fromStatus(r.addr, "RouteWatcher.Wait", err)
	}
	rt := resp.GetRoute()
	c := routing.Converged{After: time.Duration(resp.GetAfterNanos()),
		Route: routing.Route{Device: rt.GetDevice(), Protocol: rt.GetProtocol()}}
	if c.Route.Prefix, err = netip.ParsePrefix(rt.GetPrefix()); err != nil {
		return c, fromStatus(r.addr, "RouteWatcher.Wait", invalid(routing.ErrInvalid, "route.prefix %q: %v", rt.GetPrefix(), err))
	}
	if c.Route.Via, err = parseAddr("route.via", rt.GetVia()); err != nil {
		return c, fromStatus(r.addr, "RouteWatcher.Wait", err)
	}
	return c, nil
}

func (r *remoteRouter) AddRedirect(ctx context.Context, rd routing.Redirect) error {
	if err := rd.Validate(); err != nil {
		return err
	}
	_, err := r.pb.AddRedirect(ctx, redirectToPB(rd))
	return fromStatus(r.addr, "RouteWatcher.AddRedirect", err)
}

func (r *remoteRouter) RemoveRedirect(ctx context.Context, prefix netip.Prefix) error {
	if !prefix.IsValid() {
		return fmt.Errorf("%w: prefix is not a valid prefix", routing.ErrInvalid)
	}
	_, err := r.pb.RemoveRedirect(ctx, &agentpb.RemoveRedirectRequest{Prefix: prefix.String()})
	return fromStatus(r.addr, "RouteWatcher.RemoveRedirect", err)
}

func (r *remoteRouter) Redirects(ctx context.Context) ([]routing.Redirect, error) {
	resp, err := r.pb.Redirects(ctx, &agentpb.RedirectsRequest{})
	if err != nil {
		return nil, fromStatus(r.addr, "RouteWatcher.Redirects", err)
	}
	out := make([]routing.Redirect, 0, len(resp.GetRedirects()))
	for _, pb := range resp.GetRedirects() {
		rd, err := redirectFromPB(pb)
		if err != nil {
			return nil, fromStatus(r.addr, "RouteWatcher.Redirects", err)
		}
		out = append(out, rd)
	}
	return out, nil
}
