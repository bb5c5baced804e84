package agent

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/conn"
)

// WithConnAuditor serves a as the host's ConnAuditor.
func WithConnAuditor(a conn.ConnAuditor) Option { return func(s *Server) { s.auditor = a } }

func selectorToPB(s conn.Selector) *agentpb.Selector {
	pb := &agentpb.Selector{Host: s.Host}
	for _, p := range s.Addrs {
		pb.Addrs = append(pb.Addrs, p.String())
	}
	return pb
}

func selectorFromPB(pb *agentpb.Selector) (conn.Selector, error) {
	if pb == nil {
		return conn.Selector{}, invalid(conn.ErrInvalid, "selector is missing")
	}
	s := conn.Selector{Host: pb.GetHost()}
	for i, p := range pb.GetAddrs() {
		pr, err := netip.ParsePrefix(p)
		if err != nil {
			return s, invalid(conn.ErrInvalid, "selector.addrs[%d] %q: %v", i, p, err)
		}
		s.Addrs = append(s.Addrs, pr)
	}
	if err := s.Validate(); err != nil {
		return s, toStatus(err)
	}
	// The agent serves its own host: Selector.Host is the controller's
	// name for it (Environment.Host), not a namespace here; the backend
	// acts where it was configured (e.g. conntrack.WithHost).
	s.Host = ""
	return s, nil
}

func connToPB(c conn.Conn) *agentpb.Conn {
	return &agentpb.Conn{Proto: string(c.Proto), Local: c.Local.String(), Remote: c.Remote.String(), State: c.State,
		Device: c.Device, Ulp: c.ULP, Mark: c.Mark, Id: c.ID}
}

func connFromPB(i int, pb *agentpb.Conn) (conn.Conn, error) {
	c := conn.Conn{Proto: conn.Proto(pb.GetProto()), State: pb.GetState(), Device: pb.GetDevice(), ULP: pb.GetUlp(),
		Mark: pb.GetMark(), ID: pb.GetId()}
	if c.Proto != conn.TCP && c.Proto != conn.UDP {
		return c, invalid(conn.ErrInvalid, "conns[%d].proto %q (want %q or %q)", i, pb.GetProto(), conn.TCP, conn.UDP)
	}
	var err error
	if c.Local, err = netip.ParseAddrPort(pb.GetLocal()); err != nil {
		return c, invalid(conn.ErrInvalid, "conns[%d].local %q: %v", i, pb.GetLocal(), err)
	}
	if c.Remote, err = netip.ParseAddrPort(pb.GetRemote()); err != nil {
		return c, invalid(conn.ErrInvalid, "conns[%d].remote %q: %v", i, pb.GetRemote(), err)
	}
	return c, nil
}

// connServer serves a conn.ConnAuditor; requests are decoded and
// validated before the backend sees them.
type connServer struct {
	agentpb.UnimplementedConnAuditorServer
	a conn.ConnAuditor
}

func (s *connServer) List(ctx context.Context, req *agentpb.ConnListRequest) (*agentpb.ConnListResponse, error) {
	sel, err := selectorFromPB(req.GetSelector())
	if err != nil {
		return nil, err
	}
	cs, err := s.a.List(ctx, sel)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &agentpb.ConnListResponse{}
	for _, c := range cs {
		resp.Conns = append(resp.Conns, connToPB(c))
	}
	return resp, nil
}

func (s *connServer) Reset(ctx context.Context, req *agentpb.ConnResetRequest) (*agentpb.ConnResetResponse, error) {
	sel, err := selectorFromPB(req.GetSelector())
	if err != nil {
		return nil, err
	}
	cs := make([]conn.Conn, 0, len(req.GetConns()))
	for i, pb := range req.GetConns() {
		c, err := connFromPB(i, pb)
		if err != nil {
			return nil, err
		}
		cs = append(cs, c)
	}
	res, err := s.a.Reset(ctx, sel, cs)
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentpb.ConnResetResponse{ResetCount: int64(res.Reset), MissedCount: int64(res.Missed)}, nil
}

// ConnAuditor returns the agent's ConnAuditor.
func (c *Client) ConnAuditor() conn.ConnAuditor {
	return &remoteAuditor{addr: c.addr, pb: agentpb.NewConnAuditorClient(c.cc)}
}

type remoteAuditor struct {
	addr string
	pb   agentpb.ConnAuditorClient
}

var _ conn.ConnAuditor = (*remoteAuditor)(nil)

func (a *remoteAuditor) List(ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	resp, err := a.pb.List(ctx, &agentpb.ConnListRequest{Selector: selectorToPB(sel)})
	if err != nil {
		return nil, fromStatus(a.addr, "ConnAuditor.List", err)
	}
	out := make([]conn.Conn, 0, len(resp.GetConns()))
	for i, pb := range resp.GetConns() {
		c, err := connFromPB(i, pb)
		if err != nil {
			return nil, fmt.Errorf("%w: %s ConnAuditor.List: %w", ErrRemote, a.addr, fromStatus(a.addr, "decode", err))
		}
		out = append(out, c)
	}
	return out, nil
}

func (a *remoteAuditor) Reset(ctx context.Context, sel conn.Selector, conns []conn.Conn) (conn.ResetResult, error) {
	if err := sel.Validate(); err != nil {
		return conn.ResetResult{}, err
	}
	// As a local backend does: the error names the Go field
	// (conns[1].Proto), not its wire form, and nothing crosses.
	if err := conn.ValidateConns(conns); err != nil {
		return conn.ResetResult{}, err
	}
	req := &agentpb.ConnResetRequest{Selector: selectorToPB(sel)}
	for _, c := range conns {
		req.Conns = append(req.Conns, connToPB(c))
	}
	resp, err := a.pb.Reset(ctx, req)
	if err != nil {
		return conn.ResetResult{}, fromStatus(a.addr, "ConnAuditor.Reset", err)
	}
	return conn.ResetResult{Reset: int(resp.GetResetCount()), Missed: int(resp.GetMissedCount())}, nil
}
