package etcdjournal

import (
	"context"
	"encoding/json"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealift/sealift/migration"
)

// Claim makes this controller the owner of unfinished migration id if
// no live controller owns it (nil if this one does; ErrBusy naming the
// owner if another does; ErrNoRecord if there is no such unfinished
// migration). The record's Owner becomes this controller's name.
func (j *Journal) Claim(ctx context.Context, id string) error {
	return j.write(ctx, func(ctx context.Context) error {
		rk, ok := j.recKey(id), j.ownKey(id)
		got, err := j.cli.Txn(ctx).Then(clientv3.OpGet(rk), clientv3.OpGet(ok)).Commit()
		if err != nil {
			return err
		}
		kv, own := first(got, 0), first(got, 1)
		if kv == nil {
			return fmt.Errorf("%w: no unfinished migration %q", migration.ErrNoRecord, id)
		}
		var r migration.Record
		if err := json.Unmarshal(kv.Value, &r); err != nil {
			return fmt.Errorf("etcdjournal: decode the record of migration %s: %w", id, err)
		}
		switch {
		case r.Done():
			return fmt.Errorf("%w: no unfinished migration %q (it ended %s)", migration.ErrNoRecord, id, r.Outcome)
		case j.mine(own):
			j.forget(id)
			return nil
		case own != nil && string(own.Value) == j.name:
			return fmt.Errorf("%w: migration %s of VM %q is owned by %q under an earlier lease (until it expires)",
				migration.ErrBusy, id, r.Plan.VM, own.Value)
		case own != nil:
			return fmt.Errorf("%w: migration %s of VM %q is owned by %q", migration.ErrBusy, id, r.Plan.VM, own.Value)
		}
		from := r.Owner
		r.Owner = j.name
		val, err := json.Marshal(r)
		if err != nil {
			return fmt.Errorf("etcdjournal: encode the record of migration %s: %w", id, err)
		}
		resp, err := j.cli.Txn(ctx).If(
			clientv3.Compare(clientv3.CreateRevision(ok), "=", 0),
			clientv3.Compare(clientv3.ModRevision(rk), "=", kv.ModRevision),
		).Then(
			clientv3.OpPut(ok, j.name, clientv3.WithLease(j.lease)),
			clientv3.OpPut(rk, string(val)),
		).Commit()
		if err != nil {
			return err
		}
		if !resp.Succeeded {
			return errRetry // the next try reads again, and says why
		}
		j.forget(id)
		j.log.Info("claimed a migration", "id", id, "vm", r.Plan.VM, "from_owner", from)
		return nil
	})
}

// mine reports whether kv is an own/ key this controller holds.
func (j *Journal) mine(kv *mvccpb.KeyValue) bool {
	return kv != nil && string(kv.Value) == j.name && kv.Lease == int64(j.lease)
}

// owner compares own/<id> with this controller's name and lease.
func (j *Journal) owner(id string) []clientv3.Cmp {
	k := j.ownKey(id)
	return []clientv3.Cmp{
		clientv3.Compare(clientv3.Value(k), "=", j.name),
		clientv3.Compare(clientv3.LeaseValue(k), "=", j.lease),
	}
}

// notOwner is the ErrNotOwner of a write to migration id whose own/ key
// is kv (nil: absent).
func (j *Journal) notOwner(id string, kv *mvccpb.KeyValue) error {
	switch {
	case kv == nil:
		return fmt.Errorf("%w: migration %s has no live owner (it finished, or its owner's lease ended); this controller is %q",
			migration.ErrNotOwner, id, j.name)
	case string(kv.Value) == j.name:
		return fmt.Errorf("%w: migration %s is owned by %q under another lease; this controller's is %x",
			migration.ErrNotOwner, id, j.name, int64(j.lease))
	}
	return fmt.Errorf("%w: migration %s is owned by %q; this controller is %q", migration.ErrNotOwner, id, kv.Value, j.name)
}
