package etcdjournal

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealift/sealift/migration"
)

// grant grants the controller's lease and starts renewing it.
func (j *Journal) grant(ctx context.Context) error {
	var resp *clientv3.LeaseGrantResponse
	var sent time.Time
	err := retry(ctx, j.attemptTimeout(), func(ctx context.Context) error {
		sent = time.Now()
		var err error
		resp, err = j.cli.Grant(ctx, int64(j.ttl/time.Second))
		return err
	})
	if err != nil {
		return fmt.Errorf("etcdjournal: grant the lease of controller %q: %w", j.name, err)
	}
	j.lease = resp.ID
	// etcd may raise a TTL to its minimum, never lower it: the shorter
	// one is the safe one to count with.
	j.ttl = min(j.ttl, time.Duration(resp.TTL)*time.Second)
	j.margin = max(j.ttl/5, 500*time.Millisecond)
	j.owning, j.end = context.WithCancelCause(context.Background())
	kctx, stop := context.WithCancel(context.Background())
	j.stop, j.kaDone = stop, make(chan struct{})
	j.log.Info("lease granted", "lease", fmt.Sprintf("%x", int64(j.lease)), "ttl", j.ttl, "margin", j.margin)
	go j.keepAlive(kctx, sent)
	return nil
}

// renewEvery is how often the lease is renewed: three tries (each
// bounded by it) before Owning would end.
func (j *Journal) renewEvery() time.Duration { return (j.ttl - j.margin) / 4 }

// attemptTimeout bounds one request to etcd, so that one lost on a dead
// connection is retried (on another member) in time.
func (j *Journal) attemptTimeout() time.Duration { return max(j.ttl/4, time.Second) }

type renewal struct {
	sent time.Time
	resp *clientv3.LeaseKeepAliveResponse
	err  error
}

// keepAlive renews the lease until ctx ends (Close) or Owning does:
// when TTL − margin has passed since the last renewal that succeeded
// was sent, or when etcd says the lease is gone.
func (j *Journal) keepAlive(ctx context.Context, lastOK time.Time) {
	defer close(j.kaDone)
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	valid := j.ttl - j.margin
	deadline := time.NewTimer(time.Until(lastOK.Add(valid)))
	defer deadline.Stop()
	tick := time.NewTicker(j.renewEvery())
	defer tick.Stop()
	results := make(chan renewal, 1)
	inflight := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			j.lost(ctx, fmt.Errorf("%w: controller %q: lease %x not renewed in time (the last renewal that succeeded was sent %s ago; TTL %s, margin %s)",
				migration.ErrNotOwner, j.name, int64(j.lease), time.Since(lastOK).Round(time.Millisecond), j.ttl, j.margin), true)
			return
		case <-tick.C:
			if inflight {
				continue
			}
			inflight = true
			wg.Add(1)
			go func() {
				defer wg.Done()
				sent := time.Now()
				actx, cancel := context.WithTimeout(ctx, j.renewEvery())
				resp, err := j.cli.KeepAliveOnce(actx, j.lease)
				cancel()
				results <- renewal{sent, resp, err}
			}()
		case r := <-results:
			inflight = false
			switch {
			case errors.Is(r.err, rpctypes.ErrLeaseNotFound):
				j.lost(ctx, fmt.Errorf("%w: controller %q: etcd says lease %x is gone (expired or revoked)",
					migration.ErrNotOwner, j.name, int64(j.lease)), false)
				return
			case r.err != nil:
				j.log.Warn("lease renewal failed", "lease", fmt.Sprintf("%x", int64(j.lease)),
					"since_last_ok", time.Since(lastOK).Round(time.Millisecond), "err", r.err)
			default:
				lastOK = r.sent
				ttl := min(j.ttl, time.Duration(r.resp.TTL)*time.Second)
				deadline.Reset(time.Until(lastOK.Add(ttl - j.margin)))
			}
		}
	}
}

// lost ends Owning with cause; if the lease may still live, it revokes
// it (best effort, until ctx ends or the TTL passes): what it owned goes
// to a standby as soon as etcd hears of it.
func (j *Journal) lost(ctx context.Context, cause error, revoke bool) {
	j.end(cause)
	j.log.Warn("stopped owning: writes are refused from now on", "cause", cause)
	if revoke {
		rctx, cancel := context.WithTimeout(ctx, j.ttl)
		defer cancel()
		if err := j.revoke(rctx); err != nil {
			j.log.Info("could not revoke the lease (it expires by itself)", "err", err)
		}
	}
}

// revoke revokes the lease (nil if it is gone already).
func (j *Journal) revoke(ctx context.Context) error {
	return retry(ctx, j.attemptTimeout(), func(ctx context.Context) error {
		_, err := j.cli.Revoke(ctx, j.lease)
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			return nil
		}
		return err
	})
}
