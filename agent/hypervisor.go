package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/hypervisor"
)

// WithHypervisor serves h as the host's Hypervisor.
func WithHypervisor(h hypervisor.Hypervisor) Option { return func(s *Server) { s.hv = h } }

func vmToPB(v hypervisor.VM) *agentpb.VM {
	pb := &agentpb.VM{Name: v.Name, Host: v.Host, State: string(v.State), MemoryBytes: v.MemoryBytes, Identity: v.Identity}
	for _, n := range v.NICs {
		pb.Nics = append(pb.Nics, &agentpb.NIC{Mac: n.MAC, Port: n.Port})
	}
	return pb
}

func vmFromPB(pb *agentpb.VM) (hypervisor.VM, error) {
	v := hypervisor.VM{Name: pb.GetName(), Host: pb.GetHost(), State: hypervisor.State(pb.GetState()), MemoryBytes: pb.GetMemoryBytes(),
		Identity: pb.GetIdentity()}
	if err := hypervisor.ValidName(v.Name); err != nil {
		return v, toStatus(fmt.Errorf("vm.name: %w", err))
	}
	switch v.State {
	case "", hypervisor.Running, hypervisor.Paused, hypervisor.Incoming, hypervisor.Shutoff:
	default:
		return v, invalid(hypervisor.ErrInvalid, "vm.state %q", pb.GetState())
	}
	for _, n := range pb.GetNics() {
		v.NICs = append(v.NICs, hypervisor.NIC{MAC: n.GetMac(), Port: n.GetPort()})
	}
	return v, nil
}

func endpointToPB(e hypervisor.Endpoint) *agentpb.Endpoint {
	return &agentpb.Endpoint{Vm: e.VM, Uri: e.URI, MigrateUri: e.MigrateURI}
}

func endpointFromPB(pb *agentpb.Endpoint) (hypervisor.Endpoint, error) {
	if pb == nil || pb.GetUri() == "" {
		return hypervisor.Endpoint{}, invalid(hypervisor.ErrInvalid, "to.uri is empty")
	}
	return hypervisor.Endpoint{VM: pb.GetVm(), URI: pb.GetUri(), MigrateURI: pb.GetMigrateUri()}, nil
}

func statsToPB(s hypervisor.Stats) *agentpb.Stats {
	pb := &agentpb.Stats{TotalNanos: int64(s.Total), DowntimeNanos: int64(s.Downtime), Bytes: s.Bytes}
	if !s.Switchover.IsZero() {
		pb.SwitchoverUnixNano = s.Switchover.UnixNano()
	}
	if !s.SwitchoverDone.IsZero() {
		pb.SwitchoverDoneUnixNano = s.SwitchoverDone.UnixNano()
	}
	return pb
}

func statsFromPB(pb *agentpb.Stats) hypervisor.Stats {
	s := hypervisor.Stats{Total: time.Duration(pb.GetTotalNanos()), Downtime: time.Duration(pb.GetDowntimeNanos()), Bytes: pb.GetBytes()}
	if n := pb.GetSwitchoverUnixNano(); n != 0 {
		s.Switchover = time.Unix(0, n)
	}
	if n := pb.GetSwitchoverDoneUnixNano(); n != 0 {
		s.SwitchoverDone = time.Unix(0, n)
	}
	return s
}

// hvServer serves a hypervisor.Hypervisor.
type hvServer struct {
	agentpb.UnimplementedHypervisorServer
	h hypervisor.Hypervisor
}

func validName(field, name string) error {
	if err := hypervisor.ValidName(name); err != nil {
		return toStatus(fmt.Errorf("%s: %w", field, err))
	}
	return nil
}

func (s *hvServer) Lookup(ctx context.Context, req *agentpb.LookupRequest) (*agentpb.VM, error) {
	if err := validName("name", req.GetName()); err != nil {
		return nil, err
	}
	v, err := s.h.Lookup(ctx, req.GetName())
	if err != nil {
		return nil, toStatus(err)
	}
	return vmToPB(v), nil
}

func (s *hvServer) PrepareIncoming(ctx context.Context, pb *agentpb.VM) (*agentpb.Endpoint, error) {
	v, err := vmFromPB(pb)
	if err != nil {
		return nil, err
	}
	e, err := s.h.PrepareIncoming(ctx, v)
	if err != nil {
		return nil, toStatus(err)
	}
	return endpointToPB(e), nil
}

func (s *hvServer) Resume(ctx context.Context, req *agentpb.VMName) (*agentpb.ResumeResponse, error) {
	if err := validName("name", req.GetName()); err != nil {
		return nil, err
	}
	return &agentpb.ResumeResponse{}, toStatus(s.h.Resume(ctx, req.GetName()))
}

func (s *hvServer) Abort(ctx context.Context, req *agentpb.VMName) (*agentpb.AbortResponse, error) {
	if err := validName("name", req.GetName()); err != nil {
		return nil, err
	}
	return &agentpb.AbortResponse{}, toStatus(s.h.Abort(ctx, req.GetName()))
}

// errStreamLost is the hook's error when the controller's stream ends
// before it answered the switchover: the migration is cancelled.
var errStreamLost = errors.New("agent: the controller's stream ended during the switchover")

// errControllerCancelled is the backend's context's cause when the
// controller closes its side of the stream before the result: its
// Migrate's context ended, the migration is cancelled.
var errControllerCancelled = errors.New("agent: the controller cancelled the migration")

// Migrate runs the backend's Migrate for the controller's stream; see
// the service's comment in hypervisor.proto. The controller closing its
// side before the result (its Migrate's context ended) cancels the
// backend's Migrate, whose own outcome (ErrAborted, the VM running on at
// the source) is the stream's status: the controller waits for it.
func (s *hvServer) Migrate(stream agentpb.Hypervisor_MigrateServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	start := first.GetStart()
	if start == nil {
		return invalid(hypervisor.ErrInvalid, "the first message of Migrate must be start")
	}
	if err := validName("start.name", start.GetName()); err != nil {
		return err
	}
	to, err := endpointFromPB(start.GetTo())
	if err != nil {
		return err
	}
	opts := hypervisor.MigrateOptions{MaxBandwidth: start.GetMaxBandwidth(), MaxDowntime: time.Duration(start.GetMaxDowntimeNanos())}
	if err := opts.Validate(); err != nil {
		return toStatus(err)
	}
	ctx := stream.Context()

	var sendMu sync.Mutex
	send := func(ev *agentpb.MigrateEvent) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(ev)
	}
	// Progress must not block the backend: at most a few wait, the rest
	// are dropped (each is a snapshot; the next one supersedes it).
	progress := make(chan hypervisor.Progress, 4)
	progressDone := make(chan struct{})
	go func() {
		defer close(progressDone)
		for p := range progress {
			_ = send(&agentpb.MigrateEvent{Event: &agentpb.MigrateEvent_Progress{Progress: &agentpb.Progress{
				ElapsedNanos: int64(p.Elapsed), Transferred: p.Transferred, Remaining: p.Remaining, Total: p.Total, Pass: int64(p.Pass)}}})
		}
	}()
	opts.OnProgress = func(p hypervisor.Progress) {
		select {
		case progress <- p:
		default:
		}
	}
	// The controller's answers (and the end of its stream).
	replies := make(chan *agentpb.SwitchoverReply, 1)
	lost := make(chan struct{})
	go func() {
		defer close(lost)
		for {
			m, err := stream.Recv()
			if err != nil {
				return
			}
			if r := m.GetSwitchover(); r != nil {
				select {
				case replies <- r:
				default:
				}
			}
		}
	}()
	if start.GetHook() {
		opts.AtSwitchover = func(hctx context.Context) error {
			if err := send(&agentpb.MigrateEvent{Event: &agentpb.MigrateEvent_Switchover{Switchover: &agentpb.Switchover{}}}); err != nil {
				return fmt.Errorf("%w: %v", errStreamLost, err)
			}
			select {
			case r := <-replies:
				if r.GetError() != "" {
					return errors.New(r.GetError())
				}
				return nil
			case <-lost:
				return errStreamLost
			case <-hctx.Done():
				return hctx.Err()
			}
		}
	}
	mctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-lost:
			cancel(errControllerCancelled)
		case <-mctx.Done():
		}
	}()
	st, merr := s.h.Migrate(mctx, start.GetName(), to, opts)
	close(progress)
	<-progressDone
	if merr != nil {
		return toStatus(merr)
	}
	return send(&agentpb.MigrateEvent{Event: &agentpb.MigrateEvent_Result{Result: statsToPB(st)}})
}

// Hypervisor returns the agent's Hypervisor.
func (c *Client) Hypervisor() hypervisor.Hypervisor {
	return &remoteHV{addr: c.addr, pb: agentpb.NewHypervisorClient(c.cc)}
}

type remoteHV struct {
	addr string
	pb   agentpb.HypervisorClient
}

var _ hypervisor.Hypervisor = (*remoteHV)(nil)

func (h *remoteHV) Lookup(ctx context.Context, name string) (hypervisor.VM, error) {
	if err := hypervisor.ValidName(name); err != nil {
		return hypervisor.VM{}, err
	}
	pb, err := h.pb.Lookup(ctx, &agentpb.LookupRequest{Name: name})
	if err != nil {
		return hypervisor.VM{}, fromStatus(h.addr, "Hypervisor.Lookup", err)
	}
	v, err := vmFromPB(pb)
	return v, fromStatus(h.addr, "Hypervisor.Lookup", err)
}

func (h *remoteHV) PrepareIncoming(ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
	if err := hypervisor.ValidName(vm.Name); err != nil {
		return hypervisor.Endpoint{}, err
	}
	pb, err := h.pb.PrepareIncoming(ctx, vmToPB(vm))
	if err != nil {
		return hypervisor.Endpoint{}, fromStatus(h.addr, "Hypervisor.PrepareIncoming", err)
	}
	e, err := endpointFromPB(pb)
	return e, fromStatus(h.addr, "Hypervisor.PrepareIncoming", err)
}

func (h *remoteHV) Resume(ctx context.Context, name string) error {
	if err := hypervisor.ValidName(name); err != nil {
		return err
	}
	_, err := h.pb.Resume(ctx, &agentpb.VMName{Name: name})
	return fromStatus(h.addr, "Hypervisor.Resume", err)
}

func (h *remoteHV) Abort(ctx context.Context, name string) error {
	if err := hypervisor.ValidName(name); err != nil {
		return err
	}
	_, err := h.pb.Abort(ctx, &agentpb.VMName{Name: name})
	return fromStatus(h.addr, "Hypervisor.Abort", err)
}

// abortWait bounds how long Migrate waits, once its context ended, for
// the agent's outcome before it cuts the stream.
const abortWait = 30 * time.Second

// Migrate runs the migration at the agent and the hook here, at the
// switchover event. A hook that fails (or panics) is answered with its
// error: the agent's backend cancels, the VM resumes at the source, and
// the returned error wraps both hypervisor.ErrSwitchoverHook and the
// hook's own error. When ctx ends, Migrate tells the agent (it closes
// its side of the stream; a hook under way is answered with an error)
// and returns, as a local backend does, the backend's outcome, once the
// VM runs on at the source, wrapping hypervisor.ErrAborted; an agent
// that does not answer within abortWait has its stream cut.
func (h *remoteHV) Migrate(ctx context.Context, name string, to hypervisor.Endpoint, opts hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	if err := hypervisor.ValidName(name); err != nil {
		return hypervisor.Stats{}, err
	}
	if err := opts.Validate(); err != nil {
		return hypervisor.Stats{}, err
	}
	if to.URI == "" {
		return hypervisor.Stats{}, fmt.Errorf("%w: to.URI is empty", hypervisor.ErrInvalid)
	}
	// The stream outlives ctx (see above); cut ends it.
	sctx, cut := context.WithCancel(context.WithoutCancel(ctx))
	defer cut()
	stream, err := h.pb.Migrate(sctx)
	if err != nil {
		return hypervisor.Stats{}, fromStatus(h.addr, "Hypervisor.Migrate", err)
	}
	var sendMu sync.Mutex // Send and CloseSend, from here and the watcher
	send := func(m *agentpb.MigrateCall) error {
		sendMu.Lock()
		defer sendMu.Unlock()
		return stream.Send(m)
	}
	start := &agentpb.MigrateStart{Name: name, To: endpointToPB(to), MaxBandwidth: opts.MaxBandwidth,
		MaxDowntimeNanos: int64(opts.MaxDowntime), Hook: opts.AtSwitchover != nil}
	if err := send(&agentpb.MigrateCall{Call: &agentpb.MigrateCall_Start{Start: start}}); err != nil {
		_, rerr := stream.Recv() // the real error is the stream's status
		return hypervisor.Stats{}, fromStatus(h.addr, "Hypervisor.Migrate", rerr)
	}
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-done:
			return
		case <-ctx.Done():
		}
		sendMu.Lock()
		_ = stream.CloseSend()
		sendMu.Unlock()
		select {
		case <-done:
		case <-time.After(abortWait):
			cut()
		}
	}()
	var hookErr error
	for {
		ev, err := stream.Recv()
		if err != nil {
			err = fromStatus(h.addr, "Hypervisor.Migrate", err)
			if hookErr != nil {
				err = fmt.Errorf("%w (the hook: %w)", err, hookErr)
			}
			if cerr := ctx.Err(); cerr != nil && !errors.Is(err, hypervisor.ErrAborted) {
				err = fmt.Errorf("%w: %w: %w", hypervisor.ErrAborted, cerr, err)
			}
			return hypervisor.Stats{}, err
		}
		switch e := ev.GetEvent().(type) {
		case *agentpb.MigrateEvent_Progress:
			if opts.OnProgress != nil {
				p := e.Progress
				opts.OnProgress(hypervisor.Progress{Elapsed: time.Duration(p.GetElapsedNanos()), Transferred: p.GetTransferred(),
					Remaining: p.GetRemaining(), Total: p.GetTotal(), Pass: int(p.GetPass())})
			}
		case *agentpb.MigrateEvent_Switchover:
			if opts.AtSwitchover == nil {
				continue
			}
			hookErr = hypervisor.RunHook(ctx, opts.AtSwitchover)
			if hookErr == nil && ctx.Err() != nil { // no "continue" for a migration whose context ended
				hookErr = fmt.Errorf("the controller's context ended: %w", ctx.Err())
			}
			reply := &agentpb.SwitchoverReply{}
			if hookErr != nil {
				reply.Error = hookErr.Error()
			}
			if err := send(&agentpb.MigrateCall{Call: &agentpb.MigrateCall_Switchover{Switchover: reply}}); err != nil {
				continue // the stream's status follows
			}
		case *agentpb.MigrateEvent_Result:
			sendMu.Lock()
			_ = stream.CloseSend()
			sendMu.Unlock()
			return statsFromPB(e.Result), nil
		}
	}
}
