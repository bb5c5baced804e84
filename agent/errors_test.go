package agent

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/tunnel"
)

// TestErrorsCrossWithEverySentinel: a backend's error that wraps several
// sentinels crosses with all of them (it kept only the first: a
// WireGuard end's Verify on a host that went away lost host.ErrNotFound
// and kept tunnel.ErrNotProven); the text names each once.
func TestErrorsCrossWithEverySentinel(t *testing.T) {
	local := fmt.Errorf("%w: end %q: %w", tunnel.ErrNotProven, "l1", fmt.Errorf("%w: %q", host.ErrNotFound, "sl-b"))
	st := toStatus(local)
	assert.Equal(t, codes.FailedPrecondition, status.Code(st), "the first sentinel's code")
	err := fromStatus("10.0.0.1:1", "LinkEnd.Verify", st)
	for _, want := range []error{ErrRemote, tunnel.ErrNotProven, host.ErrNotFound} {
		assert.ErrorIs(t, err, want)
	}
	assert.Equal(t, `agent: remote call failed: 10.0.0.1:1 LinkEnd.Verify: `+local.Error(), err.Error())

	// A sentinel the message does not name is named in the text.
	err = fromStatus("a", "M", status.Error(codes.DeadlineExceeded, "slow"))
	assert.ErrorIs(t, err, context.DeadlineExceeded)
	assert.EqualError(t, err, "agent: remote call failed: a M: context deadline exceeded: slow")
	err = fromStatus("a", "M", status.Error(codes.Unavailable, "down"))
	assert.False(t, errors.Is(err, context.DeadlineExceeded))
	assert.EqualError(t, err, "agent: remote call failed: a M: Unavailable: down")
}
