package agent

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/fence"
)

// fencerServer serves a fence.Fencer. Every request is decoded and
// validated (fence.Spec.Validate) before the backend sees it: bad input
// gets InvalidArgument naming the field and value, and nothing is touched.
type fencerServer struct {
	agentpb.UnimplementedFencerServer
	f fence.Fencer
}

func (s *fencerServer) Info(context.Context, *agentpb.FencerInfoRequest) (*agentpb.FencerInfo, error) {
	_, holder := s.f.(fence.Holder)
	return &agentpb.FencerInfo{Holder: holder}, nil
}

func (s *fencerServer) Fence(ctx context.Context, req *agentpb.FenceRequest) (*agentpb.FenceResponse, error) {
	spec, err := specFromPB(req.GetSpec())
	if err != nil {
		return nil, err
	}
	return &agentpb.FenceResponse{}, toStatus(s.f.Fence(ctx, spec))
}

func (s *fencerServer) Lift(ctx context.Context, req *agentpb.LiftRequest) (*agentpb.LiftResponse, error) {
	if req.GetVm() == "" {
		return nil, invalid(fence.ErrInvalid, "vm is empty")
	}
	return &agentpb.LiftResponse{}, toStatus(s.f.Lift(ctx, req.GetVm()))
}

func (s *fencerServer) List(ctx context.Context, _ *agentpb.ListRequest) (*agentpb.ListResponse, error) {
	fs, err := s.f.List(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &agentpb.ListResponse{}
	for _, f := range fs {
		resp.Fences = append(resp.Fences, fenceToPB(f))
	}
	return resp, nil
}

func (s *fencerServer) Release(ctx context.Context, req *agentpb.ReleaseRequest) (*agentpb.ReleaseResponse, error) {
	h, ok := s.f.(fence.Holder)
	if !ok {
		return nil, status.Error(codes.Unimplemented, "agent: this host's fencer does not hold")
	}
	if req.GetVm() == "" {
		return nil, invalid(fence.ErrInvalid, "vm is empty")
	}
	n, err := h.Release(ctx, req.GetVm())
	if err != nil {
		return nil, toStatus(err)
	}
	return &agentpb.ReleaseResponse{Sent: int64(n)}, nil
}
