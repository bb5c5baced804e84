package etcdjournal

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealift/sealift/migration"
)

// Create records a new migration owned by this controller (r.Owner is
// set to its name): ErrBusy (naming the owner) if the VM has an
// unfinished migration, ErrInvalidPlan if the ID is taken.
func (j *Journal) Create(ctx context.Context, r migration.Record) error {
	r.Owner = j.name
	val, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("etcdjournal: encode the record of migration %s: %w", r.ID, err)
	}
	rk, vk, ok := j.recKey(r.ID), j.vmKey(r.Plan.VM), j.ownKey(r.ID)
	tried := false
	return j.write(ctx, func(ctx context.Context) error {
		retried := tried
		tried = true
		resp, err := j.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(rk), "=", 0),
			clientv3.Compare(clientv3.CreateRevision(vk), "=", 0),
		).Then(
			clientv3.OpPut(rk, string(val)),
			clientv3.OpPut(vk, r.ID),
			clientv3.OpPut(ok, j.name, clientv3.WithLease(j.lease)),
		).Else(
			clientv3.OpGet(rk),
			clientv3.OpGet(vk),
		).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			j.setLast(r.ID, 0)
			return nil
		}
		if kv := first(resp, 0); kv != nil {
			if retried && bytes.Equal(kv.Value, val) {
				j.setLast(r.ID, 0) // an earlier try of this Create did it
				return nil
			}
			return fmt.Errorf("%w: migration ID %q already in the journal", migration.ErrInvalidPlan, r.ID)
		}
		other := ""
		if kv := first(resp, 1); kv != nil {
			other = string(kv.Value)
		}
		return j.busy(ctx, r.Plan.VM, other)
	})
}

// busy is the ErrBusy of a Create of vm, whose unfinished migration is
// other: it names its owner.
func (j *Journal) busy(ctx context.Context, vm, other string) error {
	resp, err := j.cli.Txn(ctx).Then(clientv3.OpGet(j.ownKey(other)), clientv3.OpGet(j.recKey(other))).Commit()
	if err != nil {
		return err
	}
	if kv := first(resp, 0); kv != nil {
		return fmt.Errorf("%w: VM %q (migration %s unfinished, owner %q)", migration.ErrBusy, vm, other, kv.Value)
	}
	var o migration.Record
	if kv := first(resp, 1); kv != nil {
		_ = json.Unmarshal(kv.Value, &o)
	}
	return fmt.Errorf("%w: VM %q (migration %s unfinished, no live owner: controller %q's lease ended; a standby takes it over)",
		migration.ErrBusy, vm, other, o.Owner)
}

// Append adds es to migration id, numbered after its last entry, in one
// transaction that holds only while this controller owns it (else
// ErrNotOwner; ErrNoRecord for an unknown ID).
func (j *Journal) Append(ctx context.Context, id string, es ...migration.Entry) error {
	if len(es) == 0 {
		return nil
	}
	if len(es) > MaxAppend {
		return fmt.Errorf("%w: %d entries in one Append to migration %s, at most %d", ErrInvalid, len(es), id, MaxAppend)
	}
	mu := j.appending(id)
	mu.Lock()
	defer mu.Unlock()
	// n is the last Seq this Append numbers after: the one this
	// controller saw last, else read; it stays the same from try to try
	// (an earlier try whose reply was lost is then found at n+1), unless a
	// try finds n+1 taken by something else.
	n, known := j.lastSeq(id)
	var vals [][]byte
	tried := false
	return j.write(ctx, func(ctx context.Context) error {
		if !known {
			var err error
			if n, err = j.readLast(ctx, id); err != nil {
				return err
			}
			known, vals, tried = true, nil, false
		}
		if vals == nil {
			for i, e := range es {
				e.Seq = n + uint64(i) + 1
				v, err := json.Marshal(e)
				if err != nil {
					return fmt.Errorf("etcdjournal: encode entry %d of %d for migration %s: %w", i+1, len(es), id, err)
				}
				vals = append(vals, v)
			}
		}
		ops := make([]clientv3.Op, len(vals))
		for i, v := range vals {
			ops[i] = clientv3.OpPut(j.entryKey(id, n+uint64(i)+1), string(v))
		}
		next := j.entryKey(id, n+1)
		retried := tried
		tried = true
		resp, err := j.cli.Txn(ctx).
			If(append(j.owner(id), clientv3.Compare(clientv3.CreateRevision(next), "=", 0))...).
			Then(ops...).
			Else(clientv3.OpGet(j.ownKey(id)), clientv3.OpGet(j.recKey(id), clientv3.WithKeysOnly()), clientv3.OpGet(next)).
			Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			j.setLast(id, n+uint64(len(vals)))
			return nil
		}
		switch own, rec, at := first(resp, 0), first(resp, 1), first(resp, 2); {
		case rec == nil:
			return fmt.Errorf("%w: %q", migration.ErrNoRecord, id)
		case !j.mine(own):
			return j.notOwner(id, own)
		case retried && at != nil && bytes.Equal(at.Value, vals[0]):
			j.setLast(id, n+uint64(len(vals))) // an earlier try of this Append did it
			return nil
		}
		known = false // numbered past what this controller saw: read it again
		j.forget(id)
		return errRetry
	})
}

// readLast returns the Seq of migration id's last entry (0: none).
func (j *Journal) readLast(ctx context.Context, id string) (uint64, error) {
	resp, err := j.cli.Get(ctx, j.entries(id), clientv3.WithLastKey()...)
	if err != nil || len(resp.Kvs) == 0 {
		return 0, err
	}
	k := string(resp.Kvs[0].Key)
	n, err := strconv.ParseUint(strings.TrimPrefix(k, j.entries(id)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("etcdjournal: migration %s: an entry's key has no number: %w", id, err)
	}
	return n, nil
}

// Finish records the outcome of migration id and frees its VM, in one
// transaction that holds only while this controller owns it.
func (j *Journal) Finish(ctx context.Context, id string, o migration.Outcome, reason string) error {
	finished := time.Now()
	var want []byte
	return j.write(ctx, func(ctx context.Context) error {
		rk, ok := j.recKey(id), j.ownKey(id)
		got, err := j.cli.Txn(ctx).Then(clientv3.OpGet(rk), clientv3.OpGet(ok)).Commit()
		if err != nil {
			return err
		}
		kv, own := first(got, 0), first(got, 1)
		switch {
		case kv == nil:
			return fmt.Errorf("%w: %q", migration.ErrNoRecord, id)
		case want != nil && bytes.Equal(kv.Value, want):
			j.done(id) // an earlier try of this Finish did it
			return nil
		case !j.mine(own):
			return j.notOwner(id, own)
		}
		var r migration.Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return fmt.Errorf("etcdjournal: decode the record of migration %s: %w", id, err)
		}
		r.Outcome, r.Reason, r.Finished = o, reason, finished
		if want, err = json.Marshal(r); err != nil {
			return fmt.Errorf("etcdjournal: encode the record of migration %s: %w", id, err)
		}
		resp, err := j.cli.Txn(ctx).
			If(append(j.owner(id), clientv3.Compare(clientv3.ModRevision(rk), "=", kv.ModRevision))...).
			Then(clientv3.OpPut(rk, string(want)), clientv3.OpDelete(j.vmKey(r.Plan.VM)), clientv3.OpDelete(ok)).
			Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return errRetry // the next try reads again, and says why
		}
		j.done(id)
		return nil
	})
}

// first returns the first key-value of the i-th response of a
// transaction's branch (nil if none).
func first(resp *clientv3.TxnResponse, i int) *mvccpb.KeyValue {
	if i >= len(resp.Responses) {
		return nil
	}
	rr := resp.Responses[i].GetResponseRange()
	if rr == nil || len(rr.Kvs) == 0 {
		return nil
	}
	return rr.Kvs[0]
}

// The numbering this controller saw.

func (j *Journal) lastSeq(id string) (uint64, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	n, ok := j.last[id]
	return n, ok
}

func (j *Journal) setLast(id string, n uint64) {
	j.mu.Lock()
	j.last[id] = n
	j.mu.Unlock()
}

func (j *Journal) forget(id string) {
	j.mu.Lock()
	delete(j.last, id)
	j.mu.Unlock()
}

// done forgets a migration that ended.
func (j *Journal) done(id string) {
	j.mu.Lock()
	delete(j.last, id)
	delete(j.appends, id)
	j.mu.Unlock()
}

// appending returns the lock that makes this controller's Appends to
// migration id one at a time.
func (j *Journal) appending(id string) *sync.Mutex {
	j.mu.Lock()
	defer j.mu.Unlock()
	mu, ok := j.appends[id]
	if !ok {
		mu = &sync.Mutex{}
		j.appends[id] = mu
	}
	return mu
}
