package migration

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BoltJournal is the default durable Journal: one bbolt file. Bucket
// "records" maps ID to the JSON Record; bucket "entries/<ID>" maps a
// big-endian sequence number to the JSON Entry. Each write (a Create, an
// Append of one or more entries, a Finish) is one fsynced transaction.
type BoltJournal struct{ db *bolt.DB }

var _ Journal = (*BoltJournal)(nil)

var bucketRecords = []byte("records")

// OpenBoltJournal opens (or creates) the journal file at path. Only one
// process may hold it open; a second open waits up to 2 s, then fails.
func OpenBoltJournal(path string) (*BoltJournal, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open journal %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketRecords)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init journal %s: %w", path, err)
	}
	return &BoltJournal{db: db}, nil
}

func entriesBucket(id string) []byte { return []byte("entries/" + id) }

func (j *BoltJournal) Create(_ context.Context, r Record) error {
	return j.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketRecords)
		if recs.Get([]byte(r.ID)) != nil {
			return fmt.Errorf("%w: migration ID %q already in the journal", ErrInvalidPlan, r.ID)
		}
		err := recs.ForEach(func(_, v []byte) error {
			var o Record
			if err := json.Unmarshal(v, &o); err != nil {
				return err
			}
			if !o.Done() && o.Plan.VM == r.Plan.VM {
				return fmt.Errorf("%w: VM %q (migration %s unfinished)", ErrBusy, r.Plan.VM, o.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if _, err := tx.CreateBucket(entriesBucket(r.ID)); err != nil {
			return err
		}
		return putJSON(recs, []byte(r.ID), r)
	})
}

func (j *BoltJournal) Append(_ context.Context, id string, es ...Entry) error {
	if len(es) == 0 {
		return nil
	}
	return j.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(entriesBucket(id))
		if b == nil {
			return fmt.Errorf("%w: %q", ErrNoRecord, id)
		}
		for _, e := range es {
			seq, err := b.NextSequence()
			if err != nil {
				return err
			}
			e.Seq = seq
			var k [8]byte
			binary.BigEndian.PutUint64(k[:], seq)
			if err := putJSON(b, k[:], e); err != nil {
				return err
			}
		}
		return nil
	})
}

func (j *BoltJournal) Load(_ context.Context, id string) (r Record, es []Entry, err error) {
	err = j.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(bucketRecords).Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: %q", ErrNoRecord, id)
		}
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		return tx.Bucket(entriesBucket(id)).ForEach(func(_, v []byte) error {
			var e Entry
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			es = append(es, e)
			return nil
		})
	})
	return r, es, err
}

func (j *BoltJournal) Unfinished(ctx context.Context) ([]Record, error) {
	all, err := j.List(ctx)
	out := slices.DeleteFunc(all, Record.Done)
	return out, err
}

// List returns every record, oldest first.
func (j *BoltJournal) List(context.Context) ([]Record, error) {
	var out []Record
	err := j.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRecords).ForEach(func(_, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			out = append(out, r)
			return nil
		})
	})
	sortByStart(out)
	return out, err
}

func (j *BoltJournal) Finish(_ context.Context, id string, o Outcome, reason string) error {
	return j.db.Update(func(tx *bolt.Tx) error {
		recs := tx.Bucket(bucketRecords)
		v := recs.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: %q", ErrNoRecord, id)
		}
		var r Record
		if err := json.Unmarshal(v, &r); err != nil {
			return err
		}
		r.Outcome, r.Reason, r.Finished = o, reason, time.Now()
		return putJSON(recs, []byte(id), r)
	})
}

// Close releases the file.
func (j *BoltJournal) Close() error { return j.db.Close() }

func putJSON(b *bolt.Bucket, k []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(k, data)
}
