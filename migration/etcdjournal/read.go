package etcdjournal

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealift/sealift/migration"
)

// Load returns migration id's record and entries (one consistent read).
func (j *Journal) Load(ctx context.Context, id string) (migration.Record, []migration.Entry, error) {
	var r migration.Record
	var es []migration.Entry
	err := j.read(ctx, func(ctx context.Context) error {
		resp, err := j.cli.Txn(ctx).Then(
			clientv3.OpGet(j.recKey(id)),
			clientv3.OpGet(j.entries(id), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)),
		).Commit()
		if err != nil {
			return err
		}
		kv := first(resp, 0)
		if kv == nil {
			return fmt.Errorf("%w: %q", migration.ErrNoRecord, id)
		}
		r, es = migration.Record{}, nil
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return fmt.Errorf("etcdjournal: decode the record of migration %s: %w", id, err)
		}
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			var e migration.Entry
			if err := json.Unmarshal(kv.Value, &e); err != nil {
				return fmt.Errorf("etcdjournal: decode an entry of migration %s: %w", id, err)
			}
			es = append(es, e)
		}
		return nil
	})
	return r, es, err
}

// Unfinished lists the migrations with no outcome, oldest first: those
// the vm/ keys name.
func (j *Journal) Unfinished(ctx context.Context) ([]migration.Record, error) {
	var out []migration.Record
	err := j.read(ctx, func(ctx context.Context) error {
		out = nil
		resp, err := j.cli.Get(ctx, j.vmPrefix(), clientv3.WithPrefix())
		if err != nil {
			return err
		}
		const chunk = 64 // of etcd's 128 operations in a transaction
		for kvs := range slices.Chunk(resp.Kvs, chunk) {
			ops := make([]clientv3.Op, len(kvs))
			for i, kv := range kvs {
				ops[i] = clientv3.OpGet(j.recKey(string(kv.Value)))
			}
			got, err := j.cli.Txn(ctx).Then(ops...).Commit()
			if err != nil {
				return err
			}
			for i := range ops {
				kv := first(got, i)
				if kv == nil {
					continue
				}
				var r migration.Record
				if err := json.Unmarshal(kv.Value, &r); err != nil {
					return fmt.Errorf("etcdjournal: decode a record: %w", err)
				}
				if !r.Done() { // it may have finished since the list
					out = append(out, r)
				}
			}
		}
		return nil
	})
	sortByStart(out)
	return out, err
}

// List returns every record, finished ones too, oldest first (one
// consistent read, in pages).
func (j *Journal) List(ctx context.Context) ([]migration.Record, error) {
	var out []migration.Record
	err := j.read(ctx, func(ctx context.Context) error {
		out = nil
		from, end := j.prefix+"m/", clientv3.GetPrefixRangeEnd(j.prefix+"m/")
		var rev int64
		for {
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := j.cli.Get(ctx, from, opts...)
			if err != nil {
				return err
			}
			rev = resp.Header.Revision
			for _, kv := range resp.Kvs {
				var r migration.Record
				if err := json.Unmarshal(kv.Value, &r); err != nil {
					return fmt.Errorf("etcdjournal: decode a record: %w", err)
				}
				out = append(out, r)
			}
			if !resp.More || len(resp.Kvs) == 0 {
				return nil
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	})
	sortByStart(out)
	return out, err
}

// listPage is how many records one read of List returns.
var listPage int64 = 256

// sortByStart sorts rs oldest first (then by ID).
func sortByStart(rs []migration.Record) {
	slices.SortStableFunc(rs, func(a, b migration.Record) int {
		return cmp.Or(a.Started.Compare(b.Started), cmp.Compare(a.ID, b.ID))
	})
}

// Orphans sends the IDs of the unfinished migrations whose owner's lease
// has ended: those there are now, then each whose own/ key etcd deletes
// (a lease that expires or is revoked), until ctx ends. If the watch
// fails (etcd compacted what it had to replay, the member lost its
// leader), it lists them again: an ID may come more than once.
func (j *Journal) Orphans(ctx context.Context) (<-chan string, error) {
	ids, rev, err := j.orphansNow(ctx)
	if err != nil {
		return nil, fmt.Errorf("etcdjournal: list the orphans: %w", err)
	}
	out := make(chan string)
	go j.watchOrphans(ctx, out, ids, rev)
	return out, nil
}

// orphansNow returns the unfinished migrations with no own/ key, and the
// revision at which that was true.
func (j *Journal) orphansNow(ctx context.Context) (ids []string, rev int64, err error) {
	err = j.read(ctx, func(ctx context.Context) error {
		resp, err := j.cli.Txn(ctx).Then(
			clientv3.OpGet(j.vmPrefix(), clientv3.WithPrefix()),
			clientv3.OpGet(j.ownPrefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly()),
		).Commit()
		if err != nil {
			return err
		}
		owned := map[string]bool{}
		for _, kv := range resp.Responses[1].GetResponseRange().Kvs {
			if id, ok := j.idOfOwnKey(string(kv.Key)); ok {
				owned[id] = true
			}
		}
		ids = nil
		for _, kv := range resp.Responses[0].GetResponseRange().Kvs {
			if id := string(kv.Value); !owned[id] {
				ids = append(ids, id)
			}
		}
		rev = resp.Header.Revision
		return nil
	})
	return ids, rev, err
}

func (j *Journal) watchOrphans(ctx context.Context, out chan<- string, ids []string, rev int64) {
	defer close(out)
	backoff := 50 * time.Millisecond
	for {
		for _, id := range ids {
			select {
			case out <- id:
			case <-ctx.Done():
				return
			}
		}
		err := j.watchDeletes(ctx, out, rev)
		if ctx.Err() != nil {
			return
		}
		j.log.Info("orphans: the watch ended; listing again", "err", err)
		for {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, 2*time.Second)
			if ids, rev, err = j.orphansNow(ctx); err == nil {
				break
			}
			j.log.Warn("orphans: list failed", "err", err)
		}
	}
}

// watchDeletes sends the ID of each unfinished migration whose own/ key
// is deleted after revision rev, until the watch ends (its error).
func (j *Journal) watchDeletes(ctx context.Context, out chan<- string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := j.cli.Watch(wctx, j.ownPrefix(), clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithFilterPut())
	for wr := range wch {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type != mvccpb.DELETE {
				continue
			}
			id, ok := j.idOfOwnKey(string(ev.Kv.Key))
			if !ok || j.finished(ctx, id) {
				continue // a Finish deletes the key too
			}
			select {
			case out <- id:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	return fmt.Errorf("etcdjournal: the watch of %s closed", j.ownPrefix())
}

// finished reports whether migration id has ended or is gone (false if
// that cannot be read: Claim decides).
func (j *Journal) finished(ctx context.Context, id string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*j.attemptTimeout())
	defer cancel()
	var done bool
	err := j.read(ctx, func(ctx context.Context) error {
		resp, err := j.cli.Get(ctx, j.recKey(id))
		if err != nil {
			return err
		}
		done = len(resp.Kvs) == 0
		if !done {
			var r migration.Record
			done = json.Unmarshal(resp.Kvs[0].Value, &r) == nil && r.Done()
		}
		return nil
	})
	return err == nil && done
}

// OwnerAlive reports whether unfinished migration id has an owner whose
// lease lives (false: an orphan, which a standby will claim).
func (j *Journal) OwnerAlive(ctx context.Context, id string) (bool, error) {
	var alive bool
	err := j.read(ctx, func(ctx context.Context) error {
		resp, err := j.cli.Get(ctx, j.ownKey(id), clientv3.WithCountOnly())
		if err != nil {
			return err
		}
		alive = resp.Count > 0
		return nil
	})
	return alive, err
}
