package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/tunnel"
)

// WithLinkEnd serves e: this host's ends of secure links. Only public
// parts (tunnel.Public) cross the network; keys stay with e.
func WithLinkEnd(e tunnel.LinkEnd) Option { return func(s *Server) { s.ends = e } }

func tunnelEndToPB(e tunnel.End) *agentpb.TunnelEnd {
	pb := &agentpb.TunnelEnd{Host: e.Host, Underlay: addrText(e.Underlay), Port: uint32(e.Port), Mac: e.MAC}
	for _, p := range e.Protected {
		pb.Protected = append(pb.Protected, p.String())
	}
	return pb
}

func tunnelEndFromPB(field string, pb *agentpb.TunnelEnd) (tunnel.End, error) {
	e := tunnel.End{Host: pb.GetHost(), MAC: pb.GetMac()}
	if pb.GetPort() > 65535 {
		return e, invalid(tunnel.ErrInvalid, "%s.port %d out of range", field, pb.GetPort())
	}
	e.Port = uint16(pb.GetPort())
	if s := pb.GetUnderlay(); s != "" {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return e, invalid(tunnel.ErrInvalid, "%s.underlay %q: %v", field, s, err)
		}
		e.Underlay = a
	}
	for i, s := range pb.GetProtected() {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return e, invalid(tunnel.ErrInvalid, "%s.protected[%d] %q: %v", field, i, s, err)
		}
		e.Protected = append(e.Protected, p)
	}
	return e, nil
}

func linkSpecToPB(s tunnel.Spec) *agentpb.LinkSpec {
	return &agentpb.LinkSpec{Id: s.ID, Kind: string(s.Kind), Secure: tunnelEndToPB(s.Secure), Remote: tunnelEndToPB(s.Remote),
		ProxyArp: s.ProxyARP, Mtu: int64(s.MTU), NoSecureRoutes: s.NoSecureRoutes}
}

func linkSpecFromPB(pb *agentpb.LinkSpec) (tunnel.Spec, error) {
	if pb == nil {
		return tunnel.Spec{}, invalid(tunnel.ErrInvalid, "spec is missing")
	}
	s := tunnel.Spec{ID: pb.GetId(), Kind: tunnel.Kind(pb.GetKind()), ProxyARP: pb.GetProxyArp(), MTU: int(pb.GetMtu()),
		NoSecureRoutes: pb.GetNoSecureRoutes()}
	var err error
	if s.Secure, err = tunnelEndFromPB("spec.secure", pb.GetSecure()); err != nil {
		return s, err
	}
	if s.Remote, err = tunnelEndFromPB("spec.remote", pb.GetRemote()); err != nil {
		return s, err
	}
	if int64(s.MTU) != pb.GetMtu() {
		return s, invalid(tunnel.ErrInvalid, "spec.mtu %d out of range", pb.GetMtu())
	}
	if err := s.Validate(); err != nil {
		return s, toStatus(err)
	}
	return s, nil
}

func publicToPB(p tunnel.Public) *agentpb.Public {
	return &agentpb.Public{Key: p.Key, Endpoint: p.Endpoint.String()}
}

func publicFromPB(field string, pb *agentpb.Public) (tunnel.Public, error) {
	p := tunnel.Public{Key: pb.GetKey()}
	ep, err := netip.ParseAddrPort(pb.GetEndpoint())
	if err != nil {
		return p, invalid(tunnel.ErrInvalid, "%s.endpoint %q: %v", field, pb.GetEndpoint(), err)
	}
	p.Endpoint = ep
	if err := p.Validate(); err != nil {
		return p, toStatus(fmt.Errorf("%s: %w", field, err))
	}
	return p, nil
}

func roleFromPB(r string) (tunnel.Role, error) {
	switch tunnel.Role(r) {
	case tunnel.SecureRole, tunnel.RemoteRole:
		return tunnel.Role(r), nil
	}
	return "", invalid(tunnel.ErrInvalid, "role %q (want %q or %q)", r, tunnel.SecureRole, tunnel.RemoteRole)
}

func endStateToPB(e tunnel.EndState) *agentpb.EndState {
	return &agentpb.EndState{Spec: linkSpecToPB(e.Spec), Role: string(e.Role), Backend: e.Backend, Device: e.Device,
		Public: publicToPB(e.Public), Connected: e.Connected, Active: e.Active}
}

func endStateFromPB(pb *agentpb.EndState) (tunnel.EndState, error) {
	e := tunnel.EndState{Backend: pb.GetBackend(), Device: pb.GetDevice(), Connected: pb.GetConnected(), Active: pb.GetActive()}
	var err error
	if e.Spec, err = linkSpecFromPB(pb.GetSpec()); err != nil {
		return e, err
	}
	if e.Role, err = roleFromPB(pb.GetRole()); err != nil {
		return e, err
	}
	if e.Public, err = publicFromPB("public", pb.GetPublic()); err != nil {
		return e, err
	}
	return e, nil
}

// listedEndFromPB decodes an end as List reports it. A host can find an
// end in its kernel with no record of its spec or public key (an agent
// restarted without a state dir), which recovery must still be able to
// close: its ID, kind and role must be valid; a spec or public part that
// does not decode is left out.
func listedEndFromPB(pb *agentpb.EndState) (tunnel.EndState, error) {
	if e, err := endStateFromPB(pb); err == nil {
		return e, nil
	}
	sp := pb.GetSpec()
	e := tunnel.EndState{Spec: tunnel.Spec{ID: sp.GetId(), Kind: tunnel.Kind(sp.GetKind())},
		Backend: pb.GetBackend(), Device: pb.GetDevice(), Connected: pb.GetConnected(), Active: pb.GetActive()}
	if err := validID(e.Spec.ID); err != nil {
		return e, err
	}
	if e.Spec.Kind != tunnel.WireGuard && e.Spec.Kind != tunnel.IPsec {
		return e, invalid(tunnel.ErrInvalid, "spec.kind %q", e.Spec.Kind)
	}
	var err error
	if e.Role, err = roleFromPB(pb.GetRole()); err != nil {
		return e, err
	}
	if p, err := publicFromPB("public", pb.GetPublic()); err == nil {
		e.Public = p
	}
	return e, nil
}

func validID(id string) error {
	if id == "" || len(id) > 8 {
		return invalid(tunnel.ErrInvalid, "id %q must be 1 to 8 characters", id)
	}
	return nil
}

// endServer serves a tunnel.LinkEnd.
type endServer struct {
	agentpb.UnimplementedLinkEndServer
	e tunnel.LinkEnd
}

func (s *endServer) Open(ctx context.Context, req *agentpb.OpenEndRequest) (*agentpb.EndState, error) {
	spec, err := linkSpecFromPB(req.GetSpec())
	if err != nil {
		return nil, err
	}
	role, err := roleFromPB(req.GetRole())
	if err != nil {
		return nil, err
	}
	st, err := s.e.Open(ctx, spec, role)
	if err != nil {
		return nil, toStatus(err)
	}
	return endStateToPB(st), nil
}

func (s *endServer) Connect(ctx context.Context, req *agentpb.ConnectEndRequest) (*agentpb.ConnectEndResponse, error) {
	if err := validID(req.GetId()); err != nil {
		return nil, err
	}
	peer, err := publicFromPB("peer", req.GetPeer())
	if err != nil {
		return nil, err
	}
	return &agentpb.ConnectEndResponse{}, toStatus(s.e.Connect(ctx, req.GetId(), peer))
}

func (s *endServer) Activate(ctx context.Context, req *agentpb.LinkID) (*agentpb.ActivateEndResponse, error) {
	if err := validID(req.GetId()); err != nil {
		return nil, err
	}
	return &agentpb.ActivateEndResponse{}, toStatus(s.e.Activate(ctx, req.GetId()))
}

func (s *endServer) Verify(ctx context.Context, req *agentpb.LinkID) (*agentpb.Proof, error) {
	if err := validID(req.GetId()); err != nil {
		return nil, err
	}
	p, err := s.e.Verify(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	pb := &agentpb.Proof{TxPackets: p.TxPackets, RxPackets: p.RxPackets, TxBytes: p.TxBytes, RxBytes: p.RxBytes, Detail: p.Detail}
	if !p.Handshake.IsZero() {
		pb.HandshakeUnixNano = p.Handshake.UnixNano()
	}
	return pb, nil
}

func (s *endServer) Close(ctx context.Context, req *agentpb.LinkID) (*agentpb.CloseEndResponse, error) {
	if err := validID(req.GetId()); err != nil {
		return nil, err
	}
	return &agentpb.CloseEndResponse{}, toStatus(s.e.Close(ctx, req.GetId()))
}

func (s *endServer) List(ctx context.Context, _ *agentpb.ListEndsRequest) (*agentpb.ListEndsResponse, error) {
	es, err := s.e.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &agentpb.ListEndsResponse{}
	for _, e := range es {
		resp.Ends = append(resp.Ends, endStateToPB(e))
	}
	return resp, nil
}

// LinkEnd returns the agent's link ends (tunnel.Pair composes two).
func (c *Client) LinkEnd() tunnel.LinkEnd {
	return &remoteEnd{addr: c.addr, pb: agentpb.NewLinkEndClient(c.cc)}
}

type remoteEnd struct {
	addr string
	pb   agentpb.LinkEndClient
}

var _ tunnel.LinkEnd = (*remoteEnd)(nil)

func (r *remoteEnd) Open(ctx context.Context, spec tunnel.Spec, role tunnel.Role) (tunnel.EndState, error) {
	if err := spec.Validate(); err != nil {
		return tunnel.EndState{}, err
	}
	pb, err := r.pb.Open(ctx, &agentpb.OpenEndRequest{Spec: linkSpecToPB(spec), Role: string(role)})
	if err != nil {
		return tunnel.EndState{}, fromStatus(r.addr, "LinkEnd.Open", err)
	}
	st, err := endStateFromPB(pb)
	return st, fromStatus(r.addr, "LinkEnd.Open", err)
}

func (r *remoteEnd) Connect(ctx context.Context, id string, peer tunnel.Public) error {
	if err := peer.Validate(); err != nil {
		return err
	}
	_, err := r.pb.Connect(ctx, &agentpb.ConnectEndRequest{Id: id, Peer: publicToPB(peer)})
	return fromStatus(r.addr, "LinkEnd.Connect", err)
}

func (r *remoteEnd) Activate(ctx context.Context, id string) error {
	_, err := r.pb.Activate(ctx, &agentpb.LinkID{Id: id})
	return fromStatus(r.addr, "LinkEnd.Activate", err)
}

func (r *remoteEnd) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	pb, err := r.pb.Verify(ctx, &agentpb.LinkID{Id: id})
	if err != nil {
		return tunnel.Proof{}, fromStatus(r.addr, "LinkEnd.Verify", err)
	}
	p := tunnel.Proof{TxPackets: pb.GetTxPackets(), RxPackets: pb.GetRxPackets(), TxBytes: pb.GetTxBytes(),
		RxBytes: pb.GetRxBytes(), Detail: pb.GetDetail()}
	if n := pb.GetHandshakeUnixNano(); n != 0 {
		p.Handshake = time.Unix(0, n)
	}
	return p, nil
}

func (r *remoteEnd) Close(ctx context.Context, id string) error {
	_, err := r.pb.Close(ctx, &agentpb.LinkID{Id: id})
	return fromStatus(r.addr, "LinkEnd.Close", err)
}

func (r *remoteEnd) List(ctx context.Context) ([]tunnel.EndState, error) {
	resp, err := r.pb.List(ctx, &agentpb.ListEndsRequest{})
	if err != nil {
		return nil, fromStatus(r.addr, "LinkEnd.List", err)
	}
	out := make([]tunnel.EndState, 0, len(resp.GetEnds()))
	for _, pb := range resp.GetEnds() {
		st, err := listedEndFromPB(pb)
		if err != nil {
			return nil, fromStatus(r.addr, "LinkEnd.List", err)
		}
		out = append(out, st)
	}
	return out, nil
}
