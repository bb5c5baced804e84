package migrationtest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/sealift/sealift/migration"
)

// SharedStore is an in-memory journal that several controllers share,
// each through its own SharedJournal with a lease the test ends (Expire):
// what migration/etcdjournal is on an etcd cluster, for testing the
// Migrator's takeover logic (and a program's) without one.
type SharedStore struct {
	mu      sync.Mutex
	recs    map[string]*migration.Record
	entries map[string][]migration.Entry
	order   []string
	alive   map[string]bool // controller -> lease alive
	subs    []chan string   // Orphans subscribers
}

// NewSharedStore returns an empty store.
func NewSharedStore() *SharedStore {
	return &SharedStore{recs: map[string]*migration.Record{}, entries: map[string][]migration.Entry{}, alive: map[string]bool{}}
}

// Controller returns controller name's journal, with a live lease.
func (s *SharedStore) Controller(name string) *SharedJournal {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.alive[name] = true
	ctx, cancel := context.WithCancelCause(context.Background())
	return &SharedJournal{s: s, name: name, owning: ctx, end: cancel}
}

// SharedJournal is one controller's view of a SharedStore.
type SharedJournal struct {
	s      *SharedStore
	name   string
	owning context.Context
	end    context.CancelCauseFunc
}

var (
	_ migration.SharedJournal = (*SharedJournal)(nil)
	_ migration.Lister        = (*SharedJournal)(nil)
)

// Name is the controller's name (Record.Owner of what it owns).
func (j *SharedJournal) Name() string { return j.name }

// Expire ends the controller's lease: Owning ends first, then its
// unfinished migrations become orphans (Orphans sends them).
func (j *SharedJournal) Expire() {
	j.end(fmt.Errorf("controller %q: lease expired", j.name))
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.alive[j.name] {
		return
	}
	s.alive[j.name] = false
	for _, id := range s.order {
		if r := s.recs[id]; !r.Done() && r.Owner == j.name {
			s.notify(id)
		}
	}
}

func (s *SharedStore) notify(id string) {
	for _, c := range s.subs {
		select {
		case c <- id:
		default: // a slow subscriber misses it; Unfinished still lists it
		}
	}
}

// mine checks, under s.mu, that j owns migration id with a live lease.
func (j *SharedJournal) mine(id string) error {
	r, ok := j.s.recs[id]
	if !ok {
		return fmt.Errorf("%w: %q", migration.ErrNoRecord, id)
	}
	if !j.s.alive[j.name] || r.Owner != j.name {
		return fmt.Errorf("%w: migration %s is owned by %q, this controller is %q (lease alive: %v)",
			migration.ErrNotOwner, id, r.Owner, j.name, j.s.alive[j.name])
	}
	return nil
}

func (j *SharedJournal) Create(_ context.Context, r migration.Record) error {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.alive[j.name] {
		return fmt.Errorf("%w: controller %q has no live lease", migration.ErrNotOwner, j.name)
	}
	if _, ok := s.recs[r.ID]; ok {
		return fmt.Errorf("%w: migration ID %q already in the journal", migration.ErrInvalidPlan, r.ID)
	}
	for _, id := range s.order {
		if o := s.recs[id]; !o.Done() && o.Plan.VM == r.Plan.VM {
			return fmt.Errorf("%w: VM %q (migration %s unfinished, owner %q)", migration.ErrBusy, r.Plan.VM, o.ID, o.Owner)
		}
	}
	rc := r
	rc.Owner = j.name
	s.recs[r.ID] = &rc
	s.order = append(s.order, r.ID)
	return nil
}

func (j *SharedJournal) Append(_ context.Context, id string, es ...migration.Entry) error {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := j.mine(id); err != nil {
		return err
	}
	for _, e := range es {
		e.Seq = uint64(len(s.entries[id]) + 1)
		s.entries[id] = append(s.entries[id], e)
	}
	return nil
}

func (j *SharedJournal) Load(_ context.Context, id string) (migration.Record, []migration.Entry, error) {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok {
		return migration.Record{}, nil, fmt.Errorf("%w: %q", migration.ErrNoRecord, id)
	}
	return *r, slices.Clone(s.entries[id]), nil
}

func (j *SharedJournal) Unfinished(context.Context) ([]migration.Record, error) {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []migration.Record
	for _, id := range s.order {
		if r := s.recs[id]; !r.Done() {
			out = append(out, *r)
		}
	}
	return out, nil
}

// List returns every record, oldest first.
func (j *SharedJournal) List(context.Context) ([]migration.Record, error) {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]migration.Record, 0, len(s.order))
	for _, id := range s.order {
		out = append(out, *s.recs[id])
	}
	return out, nil
}

func (j *SharedJournal) Finish(_ context.Context, id string, o migration.Outcome, reason string) error {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := j.mine(id); err != nil {
		return err
	}
	r := s.recs[id]
	r.Outcome, r.Reason, r.Finished = o, reason, time.Now()
	return nil
}

// Close does nothing: the lease lives until Expire (as a controller
// killed with kill -9 leaves it to expire).
func (j *SharedJournal) Close() error { return nil }

func (j *SharedJournal) Claim(_ context.Context, id string) error {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok || r.Done() {
		return fmt.Errorf("%w: no unfinished migration %q", migration.ErrNoRecord, id)
	}
	if !s.alive[j.name] {
		return fmt.Errorf("%w: controller %q has no live lease", migration.ErrNotOwner, j.name)
	}
	switch {
	case r.Owner == j.name:
		return nil
	case s.alive[r.Owner]:
		return fmt.Errorf("%w: migration %s of VM %q is owned by %q", migration.ErrBusy, id, r.Plan.VM, r.Owner)
	}
	r.Owner = j.name
	return nil
}

func (j *SharedJournal) Orphans(ctx context.Context) (<-chan string, error) {
	s := j.s
	in := make(chan string, 64)
	var now []string
	s.mu.Lock()
	for _, id := range s.order {
		if r := s.recs[id]; !r.Done() && !s.alive[r.Owner] {
			now = append(now, id)
		}
	}
	s.subs = append(s.subs, in)
	s.mu.Unlock()
	out := make(chan string)
	go func() {
		defer close(out)
		defer func() {
			s.mu.Lock()
			s.subs = slices.DeleteFunc(s.subs, func(c chan string) bool { return c == in })
			s.mu.Unlock()
		}()
		for _, id := range now {
			select {
			case out <- id:
			case <-ctx.Done():
				return
			}
		}
		for {
			select {
			case <-ctx.Done():
				return
			case id := <-in:
				select {
				case out <- id:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

func (j *SharedJournal) Owning() context.Context { return j.owning }

// OwnerAlive reports whether migration id has an owner whose lease lives.
func (j *SharedJournal) OwnerAlive(_ context.Context, id string) (bool, error) {
	s := j.s
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.recs[id]
	if !ok {
		return false, fmt.Errorf("%w: %q", migration.ErrNoRecord, id)
	}
	return !r.Done() && s.alive[r.Owner], nil
}
