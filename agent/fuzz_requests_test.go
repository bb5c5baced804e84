package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// rec records the calls that reach a backend and whether what they got
// passes the contract's own validation.
type rec struct {
	calls []string
	bad   error
}

func (r *rec) call(name string, err error) {
	r.calls = append(r.calls, name)
	if err != nil && r.bad == nil {
		r.bad = fmt.Errorf("%s got input its contract refuses: %w", name, err)
	}
}

func nonEmpty(field, s string) error {
	if s == "" {
		return errors.New(field + " is empty")
	}
	return nil
}

func linkID(id string) error {
	if id == "" || len(id) > 8 {
		return fmt.Errorf("link id %q", id)
	}
	return nil
}

type recFencer struct{ *rec }

func (f recFencer) Fence(_ context.Context, s fence.Spec) error {
	f.call("Fence", s.Validate())
	return nil
}
func (f recFencer) Lift(_ context.Context, vm string) error {
	f.call("Lift", nonEmpty("vm", vm))
	return nil
}
func (f recFencer) List(context.Context) ([]fence.Fence, error) { f.call("List", nil); return nil, nil }
func (f recFencer) Release(_ context.Context, vm string) (int, error) {
	f.call("Release", nonEmpty("vm", vm))
	return 0, nil
}

type recAuditor struct{ *rec }

func (a recAuditor) List(_ context.Context, sel conn.Selector) ([]conn.Conn, error) {
	a.call("List", sel.Validate())
	return nil, nil
}

func (a recAuditor) Reset(_ context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
	a.call("Reset", errors.Join(sel.Validate(), conn.ValidateConns(cs)))
	return conn.ResetResult{}, nil
}

type recHypervisor struct{ *rec }

func (h recHypervisor) Lookup(_ context.Context, name string) (hypervisor.VM, error) {
	h.call("Lookup", hypervisor.ValidName(name))
	return hypervisor.VM{Name: name, State: hypervisor.Running}, nil
}

func (h recHypervisor) PrepareIncoming(_ context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
	h.call("PrepareIncoming", hypervisor.ValidName(vm.Name))
	return hypervisor.Endpoint{VM: vm.Name, URI: "tcp:192.0.2.1:4444"}, nil
}

func (h recHypervisor) Migrate(_ context.Context, name string, to hypervisor.Endpoint, o hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	h.call("Migrate", errors.Join(hypervisor.ValidName(name), nonEmpty("to.URI", to.URI), o.Validate()))
	return hypervisor.Stats{}, nil
}

func (h recHypervisor) Resume(_ context.Context, name string) error {
	h.call("Resume", hypervisor.ValidName(name))
	return nil
}

func (h recHypervisor) Abort(_ context.Context, name string) error {
	h.call("Abort", hypervisor.ValidName(name))
	return nil
}

type recRouter struct{ *rec }

func (r recRouter) Wait(_ context.Context, e routing.Expect) (routing.Converged, error) {
	r.call("Wait", e.Validate())
	return routing.Converged{}, nil
}

func (r recRouter) AddRedirect(_ context.Context, rd routing.Redirect) error {
	r.call("AddRedirect", rd.Validate())
	return nil
}

func (r recRouter) RemoveRedirect(_ context.Context, p netip.Prefix) error {
	var err error
	if !p.IsValid() {
		err = errors.New("invalid prefix")
	}
	r.call("RemoveRedirect", err)
	return nil
}

func (r recRouter) Redirects(context.Context) ([]routing.Redirect, error) {
	r.call("Redirects", nil)
	return nil, nil
}

type recEnd struct{ *rec }

func (e recEnd) Open(_ context.Context, s tunnel.Spec, role tunnel.Role) (tunnel.EndState, error) {
	var rerr error
	if role != tunnel.SecureRole && role != tunnel.RemoteRole {
		rerr = fmt.Errorf("role %q", role)
	}
	e.call("Open", errors.Join(s.Validate(), rerr))
	return tunnel.EndState{Spec: s, Role: role, Public: tunnel.Public{Key: "k", Endpoint: netip.MustParseAddrPort("192.0.2.1:51820")}}, nil
}

func (e recEnd) Connect(_ context.Context, id string, p tunnel.Public) error {
	e.call("Connect", errors.Join(linkID(id), p.Validate()))
	return nil
}

func (e recEnd) Activate(_ context.Context, id string) error {
	e.call("Activate", linkID(id))
	return nil
}
func (e recEnd) Verify(_ context.Context, id string) (tunnel.Proof, error) {
	e.call("Verify", linkID(id))
	return tunnel.Proof{}, nil
}
func (e recEnd) Close(_ context.Context, id string) error { e.call("Close", linkID(id)); return nil }
func (e recEnd) List(context.Context) ([]tunnel.EndState, error) {
	e.call("List", nil)
	return nil, nil
}

// migrateStream plays the controller's side of Migrate: one first
// message, then the end of the stream.
type migrateStream struct {
	grpc.ServerStream
	first *agentpb.MigrateCall
	sent  bool
}

func (s *migrateStream) Context() context.Context         { return context.Background() }
func (s *migrateStream) Send(*agentpb.MigrateEvent) error { return nil }
func (s *migrateStream) SetHeader(metadata.MD) error      { return nil }
func (s *migrateStream) Recv() (*agentpb.MigrateCall, error) {
	if s.sent {
		return nil, io.EOF
	}
	s.sent = true
	return s.first, nil
}

// request is one RPC the agent decodes: a message to fill from the
// fuzzer's bytes and the call of the server's handler with it.
type request struct {
	name string
	msg  func() proto.Message
	call func(ctx context.Context, r *rec, m proto.Message) error
}

var requests = []request{
	{"Fencer.Fence", func() proto.Message { return &agentpb.FenceRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&fencerServer{f: recFencer{r}}).Fence(ctx, m.(*agentpb.FenceRequest))
		return err
	}},
	{"Fencer.Lift", func() proto.Message { return &agentpb.LiftRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&fencerServer{f: recFencer{r}}).Lift(ctx, m.(*agentpb.LiftRequest))
		return err
	}},
	{"Fencer.Release", func() proto.Message { return &agentpb.ReleaseRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&fencerServer{f: recFencer{r}}).Release(ctx, m.(*agentpb.ReleaseRequest))
		return err
	}},
	{"ConnAuditor.List", func() proto.Message { return &agentpb.ConnListRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&connServer{a: recAuditor{r}}).List(ctx, m.(*agentpb.ConnListRequest))
		return err
	}},
	{"ConnAuditor.Reset", func() proto.Message { return &agentpb.ConnResetRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&connServer{a: recAuditor{r}}).Reset(ctx, m.(*agentpb.ConnResetRequest))
		return err
	}},
	{"Hypervisor.Lookup", func() proto.Message { return &agentpb.LookupRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&hvServer{h: recHypervisor{r}}).Lookup(ctx, m.(*agentpb.LookupRequest))
		return err
	}},
	{"Hypervisor.PrepareIncoming", func() proto.Message { return &agentpb.VM{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&hvServer{h: recHypervisor{r}}).PrepareIncoming(ctx, m.(*agentpb.VM))
		return err
	}},
	{"Hypervisor.Resume", func() proto.Message { return &agentpb.VMName{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&hvServer{h: recHypervisor{r}}).Resume(ctx, m.(*agentpb.VMName))
		return err
	}},
	{"Hypervisor.Abort", func() proto.Message { return &agentpb.VMName{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&hvServer{h: recHypervisor{r}}).Abort(ctx, m.(*agentpb.VMName))
		return err
	}},
	{"Hypervisor.Migrate", func() proto.Message { return &agentpb.MigrateCall{} }, func(_ context.Context, r *rec, m proto.Message) error {
		return (&hvServer{h: recHypervisor{r}}).Migrate(&migrateStream{first: m.(*agentpb.MigrateCall)})
	}},
	{"RouteWatcher.Wait", func() proto.Message { return &agentpb.Expect{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&routingServer{r: recRouter{r}}).Wait(ctx, m.(*agentpb.Expect))
		return err
	}},
	{"RouteWatcher.AddRedirect", func() proto.Message { return &agentpb.Redirect{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&routingServer{r: recRouter{r}}).AddRedirect(ctx, m.(*agentpb.Redirect))
		return err
	}},
	{"RouteWatcher.RemoveRedirect", func() proto.Message { return &agentpb.RemoveRedirectRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&routingServer{r: recRouter{r}}).RemoveRedirect(ctx, m.(*agentpb.RemoveRedirectRequest))
		return err
	}},
	{"LinkEnd.Open", func() proto.Message { return &agentpb.OpenEndRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&endServer{e: recEnd{r}}).Open(ctx, m.(*agentpb.OpenEndRequest))
		return err
	}},
	{"LinkEnd.Connect", func() proto.Message { return &agentpb.ConnectEndRequest{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&endServer{e: recEnd{r}}).Connect(ctx, m.(*agentpb.ConnectEndRequest))
		return err
	}},
	{"LinkEnd.Activate", func() proto.Message { return &agentpb.LinkID{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&endServer{e: recEnd{r}}).Activate(ctx, m.(*agentpb.LinkID))
		return err
	}},
	{"LinkEnd.Verify", func() proto.Message { return &agentpb.LinkID{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&endServer{e: recEnd{r}}).Verify(ctx, m.(*agentpb.LinkID))
		return err
	}},
	{"LinkEnd.Close", func() proto.Message { return &agentpb.LinkID{} }, func(ctx context.Context, r *rec, m proto.Message) error {
		_, err := (&endServer{e: recEnd{r}}).Close(ctx, m.(*agentpb.LinkID))
		return err
	}},
}

// validRequests are one well-formed message per request (the seeds).
func validRequests() map[string]proto.Message {
	spec := &agentpb.LinkSpec{Id: "l1", Kind: "wireguard",
		Secure: &agentpb.TunnelEnd{Host: "a", Underlay: "10.255.1.1", Protected: []string{"10.2.0.0/24"}},
		Remote: &agentpb.TunnelEnd{Host: "b", Underlay: "203.0.113.1", Protected: []string{"10.1.0.10/32"}}}
	sel := &agentpb.Selector{Addrs: []string{"10.1.0.10/32"}}
	return map[string]proto.Message{
		"Fencer.Fence":      &agentpb.FenceRequest{Spec: &agentpb.FenceSpec{Vm: "vm1", Port: "vm0", Addrs: []string{"10.1.0.10"}}},
		"Fencer.Lift":       &agentpb.LiftRequest{Vm: "vm1"},
		"Fencer.Release":    &agentpb.ReleaseRequest{Vm: "vm1"},
		"ConnAuditor.List":  &agentpb.ConnListRequest{Selector: sel},
		"ConnAuditor.Reset": &agentpb.ConnResetRequest{Selector: sel, Conns: []*agentpb.Conn{{Proto: "tcp", Local: "10.1.0.10:7777", Remote: "10.2.0.20:40000"}}},
		"Hypervisor.Lookup": &agentpb.LookupRequest{Name: "vm1"},
		"Hypervisor.PrepareIncoming": &agentpb.VM{Name: "vm1", MemoryBytes: 128 << 20,
			Nics: []*agentpb.NIC{{Mac: "52:54:00:00:00:01", Port: "tap0"}}},
		"Hypervisor.Resume": &agentpb.VMName{Name: "vm1"},
		"Hypervisor.Abort":  &agentpb.VMName{Name: "vm1"},
		"Hypervisor.Migrate": &agentpb.MigrateCall{Call: &agentpb.MigrateCall_Start{Start: &agentpb.MigrateStart{
			Name: "vm1", To: &agentpb.Endpoint{Vm: "vm1", Uri: "tcp:203.0.113.1:4444"}, MaxDowntimeNanos: 30e6}}},
		"RouteWatcher.Wait":           &agentpb.Expect{Prefix: "10.1.0.0/24", Via: "100.64.0.2"},
		"RouteWatcher.AddRedirect":    &agentpb.Redirect{Prefix: "10.1.0.0/24", Device: "wg0"},
		"RouteWatcher.RemoveRedirect": &agentpb.RemoveRedirectRequest{Prefix: "10.1.0.0/24"},
		"LinkEnd.Open":                &agentpb.OpenEndRequest{Spec: spec, Role: "secure"},
		"LinkEnd.Connect": &agentpb.ConnectEndRequest{Id: "l1", Peer: &agentpb.Public{Key: "a2V5",
			Endpoint: "203.0.113.1:51820"}},
		"LinkEnd.Activate": &agentpb.LinkID{Id: "l1"},
		"LinkEnd.Verify":   &agentpb.LinkID{Id: "l1"},
		"LinkEnd.Close":    &agentpb.LinkID{Id: "l1"},
	}
}

// FuzzRequests: whatever bytes a client sends as any request the agent
// decodes, the agent either passes its backend input that the
// backend's contract accepts, or refuses it with InvalidArgument before
// the backend is called: bad input from the network touches nothing.
// (go test -fuzz FuzzRequests ./agent/ explores; the seeds — one valid
// message per request, and each with a byte flipped — run with every go
// test.)
func FuzzRequests(f *testing.F) {
	valid := validRequests()
	for i, r := range requests {
		m, ok := valid[r.name]
		if !ok {
			f.Fatalf("no valid seed for %s", r.name)
		}
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(i), b)
		for _, at := range []int{len(b) / 3, len(b) / 2, len(b) - 1} {
			mut := append([]byte(nil), b...)
			mut[at] ^= 0x21
			f.Add(uint8(i), mut)
		}
		f.Add(uint8(i), []byte{})
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		req := requests[int(which)%len(requests)]
		m := req.msg()
		if proto.Unmarshal(data, m) != nil {
			return // gRPC refuses what does not decode, before the handler
		}
		r := &rec{}
		err := req.call(context.Background(), r, m)
		if err != nil {
			if c := status.Code(err); c != codes.InvalidArgument {
				t.Fatalf("%s: refused with %v, want InvalidArgument: %v", req.name, c, err)
			}
			if len(r.calls) > 0 {
				t.Fatalf("%s: refused (%v) after calling the backend: %v", req.name, err, r.calls)
			}
			return
		}
		if r.bad != nil {
			t.Fatalf("%s: %v", req.name, r.bad)
		}
	})
}

// TestValidRequestsAccepted: the seeds are accepted (or the fuzzer would
// only ever see refusals), and reach their backend.
func TestValidRequestsAccepted(t *testing.T) {
	valid := validRequests()
	for _, req := range requests {
		r := &rec{}
		if err := req.call(context.Background(), r, valid[req.name]); err != nil {
			t.Errorf("%s: %v", req.name, err)
			continue
		}
		if len(r.calls) == 0 || r.bad != nil {
			t.Errorf("%s: backend calls %v, bad input %v", req.name, r.calls, r.bad)
		}
	}
}
