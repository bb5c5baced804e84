package etcdjournal

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealift/sealift/internal/etcdlab"
	"github.com/sealift/sealift/migration"
)

// lossyKV loses the reply of the next `lose` transactions that wrote:
// etcd applied them, the caller hears a timeout.
type lossyKV struct {
	clientv3.KV
	lose atomic.Int32
}

func (k *lossyKV) Txn(ctx context.Context) clientv3.Txn { return &lossyTxn{Txn: k.KV.Txn(ctx), kv: k} }

type lossyTxn struct {
	clientv3.Txn
	kv     *lossyKV
	writes bool
}

func (t *lossyTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }

func (t *lossyTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	for _, op := range ops {
		t.writes = t.writes || op.IsPut() || op.IsDelete()
	}
	t.Txn = t.Txn.Then(ops...)
	return t
}

func (t *lossyTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.Txn = t.Txn.Else(ops...); return t }

func (t *lossyTxn) Commit() (*clientv3.TxnResponse, error) {
	resp, err := t.Txn.Commit()
	if err == nil && resp.Succeeded && t.writes && t.kv.lose.Load() > 0 {
		t.kv.lose.Add(-1)
		return nil, context.DeadlineExceeded
	}
	return resp, err
}

// A write whose reply is lost is tried again, and the try recognizes it:
// each write happens once and returns nil.
func TestLostRepliesWriteOnce(t *testing.T) {
	c := etcdlab.Start(t, 3)
	cli := c.Client(t)
	lossy := &lossyKV{KV: cli.KV}
	cli.KV = lossy
	a := open(t, cli, "ctl-a", WithTTL(testTTL))
	b := open(t, cli, "ctl-b", WithTTL(testTTL))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	lost := func(what string, fn func() error) {
		t.Helper()
		lossy.lose.Store(1)
		require.NoError(t, fn(), what)
		require.Zero(t, lossy.lose.Load(), "%s: no reply was lost", what)
	}

	lost("Create", func() error { return a.Create(ctx, record("m1", "vm1")) })
	lost("Append", func() error {
		return a.Append(ctx, "m1", entry(310, migration.PhaseBegin), entry(310, migration.PhaseDone))
	})
	lost("Append", func() error { return a.Append(ctx, "m1", entry(315, migration.PhaseBegin)) })
	_, es, err := a.Load(ctx, "m1")
	require.NoError(t, err)
	assert.Equal(t, []uint64{1, 2, 3}, seqs(es), "each entry once")

	assert.ErrorIs(t, a.Create(ctx, record("m1", "vm9")), migration.ErrInvalidPlan, "a taken ID is still refused")
	assert.ErrorIs(t, b.Create(ctx, record("m2", "vm1")), migration.ErrBusy, "a busy VM is still refused")

	expire(t, cli, a)
	lost("Claim", func() error { return b.Claim(ctx, "m1") })
	lost("Append", func() error { return b.Append(ctx, "m1", entry(320, migration.PhaseBegin)) })
	lost("Finish", func() error { return b.Finish(ctx, "m1", migration.RolledBack, "taken over") })
	r, es, err := b.Load(ctx, "m1")
	require.NoError(t, err)
	assert.Equal(t, []uint64{1, 2, 3, 4}, seqs(es), "each entry once")
	assert.Equal(t, migration.RolledBack, r.Outcome)
	assert.Equal(t, "ctl-b", r.Owner)
	require.NoError(t, b.Create(ctx, record("m3", "vm1")), "the VM is free")
}

func seqs(es []migration.Entry) []uint64 {
	var out []uint64
	for _, e := range es {
		out = append(out, e.Seq)
	}
	return out
}
