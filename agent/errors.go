package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// sentinels are the contracts' errors that cross the network: the agent
// names each one its backend's error wraps (an agentpb.ErrorReason per
// sentinel in the status details: an error may wrap several, e.g.
// tunnel.ErrNotProven and host.ErrNotFound), the client wraps the same
// sentinels again, so errors.Is works on a remote backend's error as on
// a local one's.
var sentinels = []struct {
	name string
	err  error
	code codes.Code
}{
	{"fence.ErrInvalid", fence.ErrInvalid, codes.InvalidArgument},
	{"fence.ErrNoPort", fence.ErrNoPort, codes.NotFound},
	{"fence.ErrNotFenced", fence.ErrNotFenced, codes.FailedPrecondition},
	{"fence.ErrUnsupported", fence.ErrUnsupported, codes.Unimplemented},
	{"conn.ErrInvalid", conn.ErrInvalid, codes.InvalidArgument},
	{"routing.ErrInvalid", routing.ErrInvalid, codes.InvalidArgument},
	{"routing.ErrNoRedirect", routing.ErrNoRedirect, codes.NotFound},
	{"hypervisor.ErrInvalid", hypervisor.ErrInvalid, codes.InvalidArgument},
	{"hypervisor.ErrNotFound", hypervisor.ErrNotFound, codes.NotFound},
	{"hypervisor.ErrExists", hypervisor.ErrExists, codes.AlreadyExists},
	{"hypervisor.ErrState", hypervisor.ErrState, codes.FailedPrecondition},
	{"hypervisor.ErrUnreachable", hypervisor.ErrUnreachable, codes.Unavailable},
	{"hypervisor.ErrSwitchoverHook", hypervisor.ErrSwitchoverHook, codes.Aborted},
	{"hypervisor.ErrAborted", hypervisor.ErrAborted, codes.Aborted},
	{"hypervisor.ErrMigration", hypervisor.ErrMigration, codes.Internal},
	{"tunnel.ErrInvalid", tunnel.ErrInvalid, codes.InvalidArgument},
	{"tunnel.ErrExists", tunnel.ErrExists, codes.AlreadyExists},
	{"tunnel.ErrNoLink", tunnel.ErrNoLink, codes.NotFound},
	{"tunnel.ErrNotProven", tunnel.ErrNotProven, codes.FailedPrecondition},
	{"tunnel.ErrKernelUnsupported", tunnel.ErrKernelUnsupported, codes.Unimplemented},
	{"host.ErrNotFound", host.ErrNotFound, codes.NotFound},
}

// ErrRemote wraps every error a remote backend returned (besides its
// sentinel, if it had one), and failures to reach the agent.
var ErrRemote = errors.New("agent: remote call failed")

// toStatus turns a backend's error into a gRPC status that names its
// sentinels (its code is the first one's); context errors keep their
// codes.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	var st *status.Status
	for _, s := range sentinels {
		if !errors.Is(err, s.err) {
			continue
		}
		if st == nil {
			st = status.New(s.code, err.Error())
		}
		withReason, derr := st.WithDetails(&agentpb.ErrorReason{Sentinel: s.name})
		if derr == nil {
			st = withReason
		}
	}
	if st == nil {
		return status.Error(codes.Unknown, err.Error())
	}
	return st.Err()
}

// invalid is the status for a request that does not decode: it names
// the field and the value, and the contract's ErrInvalid (sentinel),
// which the client wraps again.
func invalid(sentinel error, format string, args ...any) error {
	return toStatus(fmt.Errorf("%w: %s", sentinel, fmt.Sprintf(format, args...)))
}

// fromStatus turns an RPC error back into a Go error wrapping ErrRemote,
// the sentinels it names (if any) and the context's error for those
// codes.
func fromStatus(agentAddr, method string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%w: %s %s: %w", ErrRemote, agentAddr, method, err)
	}
	var wrapped []error
	for _, d := range st.Details() {
		if r, ok := d.(*agentpb.ErrorReason); ok {
			for _, s := range sentinels {
				if s.name == r.GetSentinel() {
					wrapped = append(wrapped, s.err)
				}
			}
		}
	}
	switch st.Code() {
	case codes.Canceled:
		wrapped = append(wrapped, context.Canceled)
	case codes.DeadlineExceeded:
		wrapped = append(wrapped, context.DeadlineExceeded)
	}
	if len(wrapped) == 0 {
		return fmt.Errorf("%w: %s %s: %s: %s", ErrRemote, agentAddr, method, st.Code(), st.Message())
	}
	text := st.Message()
	for i := len(wrapped) - 1; i >= 0; i-- {
		if w := wrapped[i].Error(); !strings.Contains(text, w) { // the backend's message names it, mostly
			text = w + ": " + text
		}
	}
	return &remoteError{msg: fmt.Sprintf("%v: %s %s: %s", ErrRemote, agentAddr, method, text), is: append([]error{ErrRemote}, wrapped...)}
}

// remoteError is a remote backend's error: its text, and ErrRemote and
// the sentinels it wraps.
type remoteError struct {
	msg string
	is  []error
}

func (e *remoteError) Error() string   { return e.msg }
func (e *remoteError) Unwrap() []error { return e.is }
