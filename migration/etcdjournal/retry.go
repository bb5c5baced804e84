package etcdjournal

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/raft/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/migration"
)

// errRetry: a try found the journal other than it expected (a number
// taken, a record changed meanwhile): the next try reads it again.
var errRetry = errors.New("etcdjournal: changed meanwhile")

// transient reports whether err may not happen on a next try: etcd or
// the connection was unavailable, or the try's time ran out (its
// outcome is then unknown: every try is idempotent).
func transient(err error) bool {
	if errors.Is(err, errRetry) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	switch code {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Internal:
		return true
	case codes.Unknown:
		// What raft said, passed on as is: the request did not enter the
		// log (the member is stopping, or its leader hands over).
		s, ok := status.FromError(err)
		return ok && (s.Message() == raft.ErrStopped.Error() || s.Message() == raft.ErrProposalDropped.Error())
	}
	return false
}

// retry runs try, each bounded by timeout, until it succeeds, fails in a
// way that is not transient, or ctx ends.
func retry(ctx context.Context, timeout time.Duration, try func(ctx context.Context) error) error {
	backoff := 20 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, timeout)
		err := try(tctx)
		cancel()
		if err == nil || !transient(err) {
			return err
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last try: %w)", ctx.Err(), err)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last try: %w)", ctx.Err(), err)
		case <-t.C:
		}
		backoff = min(2*backoff, 500*time.Millisecond)
	}
}

// write runs the tries of a write: none once Owning has ended
// (ErrNotOwner, without trying); a lease etcd no longer has ends Owning.
func (j *Journal) write(ctx context.Context, try func(ctx context.Context) error) error {
	if err := j.live(); err != nil {
		return err
	}
	err := retry(ctx, j.attemptTimeout(), func(ctx context.Context) error {
		if err := j.live(); err != nil {
			return err
		}
		return try(ctx)
	})
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		cause := fmt.Errorf("%w: controller %q: etcd says lease %x is gone (expired or revoked)",
			migration.ErrNotOwner, j.name, int64(j.lease))
		j.end(cause)
		return cause
	}
	return err
}

// read runs the tries of a read.
func (j *Journal) read(ctx context.Context, try func(ctx context.Context) error) error {
	return retry(ctx, j.attemptTimeout(), try)
}
