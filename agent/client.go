package agent

import (
	"context"
	"crypto/tls"
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/fence"
)

// Client is a controller's connection to one agent.
type Client struct {
	addr string
	cc   *grpc.ClientConn
}

// Dial connects (lazily, as gRPC does) to the agent at addr over tlsConf
// (agentpki.ClientConfig: the controller's certificate, and the agent's
// identity it expects). opts are added to gRPC's (interceptors, ...);
// the transport stays tlsConf's.
func Dial(addr string, tlsConf *tls.Config, opts ...grpc.DialOption) (*Client, error) {
	if tlsConf == nil {
		return nil, ErrNoTLS
	}
	opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(tlsConf)))
	cc, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: dial %s: %w", ErrRemote, addr, err)
	}
	return &Client{addr: addr, cc: cc}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.cc.Close() }

// Fencer returns the agent's Fencer. It asks the agent what its backend
// can do: where the backend holds, the result is a fence.Holder too, so
// the Migrator treats a remote backend as it treats a local one.
func (c *Client) Fencer(ctx context.Context) (fence.Fencer, error) {
	pb := agentpb.NewFencerClient(c.cc)
	info, err := pb.Info(ctx, &agentpb.FencerInfoRequest{})
	if err != nil {
		return nil, fromStatus(c.addr, "Fencer.Info", err)
	}
	f := &remoteFencer{addr: c.addr, pb: pb}
	if info.GetHolder() {
		return &remoteHolder{f}, nil
	}
	return f, nil
}

// remoteFencer is fence.Fencer over an agent. Input is validated here
// too, so bad input fails before anything crosses the network.
type remoteFencer struct {
	addr string
	pb   agentpb.FencerClient
}

func (f *remoteFencer) Fence(ctx context.Context, spec fence.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	_, err := f.pb.Fence(ctx, &agentpb.FenceRequest{Spec: specToPB(spec)})
	return fromStatus(f.addr, "Fence", err)
}

func (f *remoteFencer) Lift(ctx context.Context, vm string) error {
	if vm == "" {
		return fmt.Errorf("%w: vm is empty", fence.ErrInvalid)
	}
	_, err := f.pb.Lift(ctx, &agentpb.LiftRequest{Vm: vm})
	return fromStatus(f.addr, "Lift", err)
}

func (f *remoteFencer) List(ctx context.Context) ([]fence.Fence, error) {
	resp, err := f.pb.List(ctx, &agentpb.ListRequest{})
	if err != nil {
		return nil, fromStatus(f.addr, "List", err)
	}
	out := make([]fence.Fence, 0, len(resp.GetFences()))
	for i, pb := range resp.GetFences() {
		fc, err := fenceFromPB(pb)
		if err != nil {
			return nil, fmt.Errorf("%w: %s List: fences[%d]: %w", ErrRemote, f.addr, i, fromStatus(f.addr, "List", err))
		}
		out = append(out, fc)
	}
	return out, nil
}

// remoteHolder is a remoteFencer whose backend holds.
type remoteHolder struct{ *remoteFencer }

func (f *remoteHolder) Release(ctx context.Context, vm string) (int, error) {
	if vm == "" {
		return 0, fmt.Errorf("%w: vm is empty", fence.ErrInvalid)
	}
	resp, err := f.pb.Release(ctx, &agentpb.ReleaseRequest{Vm: vm})
	if err != nil {
		return 0, fromStatus(f.addr, "Release", err)
	}
	return int(resp.GetSent()), nil
}

var (
	_ fence.Fencer = (*remoteFencer)(nil)
	_ fence.Holder = (*remoteHolder)(nil)
)
