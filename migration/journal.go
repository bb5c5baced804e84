package migration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// Phase of a journal entry.
type Phase string

const (
	PhaseBegin Phase = "begin"
	PhaseDone  Phase = "done"
	PhaseFail  Phase = "fail"
)

// Entry is one journal line: a step began, finished or failed. Every step
// has an entry before and after it runs, so a recovering controller knows
// what may have happened. The steps of the switchover hook (325, 320 in
// at-switchover mode, 335, 340), which run inside the VM's downtime, are
// written together in one Append at the hook's end: one fsync instead of
// one per entry. A crash inside the hook leaves none of them; Recover
// does not need them (it asks the hypervisors where the VM is and lists
// the links; every undo action is idempotent).
type Entry struct {
	Seq   uint64
	Time  time.Time
	Block Block
	Phase Phase
	// Data carries what recovery needs (endpoint URI, link IDs, ...).
	// Never keys.
	Data map[string]string `json:",omitempty"`
	Err  string            `json:",omitempty"`
}

// Record is one migration in the journal.
type Record struct {
	ID   string
	Plan Plan
	// Owner is the controller that runs the migration, in a journal
	// several controllers share (SharedJournal); "" in the others.
	Owner    string `json:",omitempty"`
	Started  time.Time
	Finished time.Time `json:",omitzero"`
	Outcome  Outcome   `json:",omitempty"`
	Reason   string    `json:",omitempty"`
}

// Done reports whether the migration has ended (any outcome).
func (r Record) Done() bool { return r.Outcome != "" }

// Journal stores migrations and their steps durably. Implementations must
// make Create atomic with respect to the VM: at most one unfinished
// migration per VM (else ErrBusy).
type Journal interface {
	Create(ctx context.Context, r Record) error
	// Append adds entries to migration id in one durable write: all of
	// them or none, numbered (Seq) in order. No entries: no write.
	Append(ctx context.Context, id string, es ...Entry) error
	Load(ctx context.Context, id string) (Record, []Entry, error)
	// Unfinished lists the records with no outcome, oldest first.
	Unfinished(ctx context.Context) ([]Record, error)
	Finish(ctx context.Context, id string, o Outcome, reason string) error
	Close() error
}

// Lister is a Journal that lists all its records, finished ones too,
// oldest first (for status views; MemJournal, BoltJournal and
// etcdjournal implement it).
type Lister interface {
	List(ctx context.Context) ([]Record, error)
}

// ErrNoRecord: the journal has no migration of that ID.
var ErrNoRecord = errors.New("migration: no such journal record")

// ErrNotOwner: a shared journal refused a write because this controller
// does not own the migration (any more): its lease expired, or another
// controller claimed it. A Migrator that gets it stops touching hosts.
var ErrNotOwner = errors.New("migration: this controller does not own the migration")

// SharedJournal is a Journal several controllers share (e.g.
// migration/etcdjournal). Each unfinished migration has one owner: the
// controller that created it (Create sets Record.Owner) or claimed it
// since, for as long as that controller's lease lives. Append and Finish
// hold only while the writer owns the migration (else ErrNotOwner), in
// the same atomic write; Create's ErrBusy names the VM's owner.
//
// A Migrator on a SharedJournal ties every host call of a run to Owning:
// when it ends, the run stops where it is (no rollback: the migration is
// another controller's now), its Report is Abandoned and its error wraps
// ErrNotOwner. Owning must end before the lease can expire on the
// journal's side, so that a standby never claims a migration whose old
// owner may still act.
type SharedJournal interface {
	Journal
	// Claim makes this controller the owner of unfinished migration id
	// if it has no live owner (nil if this controller owns it already;
	// ErrBusy naming the owner if another live controller does;
	// ErrNoRecord if there is no such unfinished migration).
	Claim(ctx context.Context, id string) error
	// Orphans sends the IDs of unfinished migrations that have no live
	// owner: those there are when it is called, then each whose owner goes
	// away, until ctx ends (then it closes the channel). An ID may come
	// more than once; Claim decides.
	Orphans(ctx context.Context) (<-chan string, error)
	// Owning ends when this controller may no longer act as an owner
	// (its lease expired, or could not be renewed in time).
	Owning() context.Context
}

// MemJournal is an in-memory Journal (for tests and programs that accept
// losing recovery across restarts).
type MemJournal struct {
	mu      sync.Mutex
	recs    map[string]*Record
	entries map[string][]Entry
	order   []string
}

// NewMemJournal returns an empty in-memory journal.
func NewMemJournal() *MemJournal {
	return &MemJournal{recs: map[string]*Record{}, entries: map[string][]Entry{}}
}

var _ Journal = (*MemJournal)(nil)

func (j *MemJournal) Create(_ context.Context, r Record) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.recs[r.ID]; ok {
		return fmt.Errorf("%w: migration ID %q already in the journal", ErrInvalidPlan, r.ID)
	}
	for _, id := range j.order {
		if o := j.recs[id]; !o.Done() && o.Plan.VM == r.Plan.VM {
			return fmt.Errorf("%w: VM %q (migration %s unfinished)", ErrBusy, r.Plan.VM, o.ID)
		}
	}
	rc := r
	j.recs[r.ID] = &rc
	j.order = append(j.order, r.ID)
	return nil
}

func (j *MemJournal) Append(_ context.Context, id string, es ...Entry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if _, ok := j.recs[id]; !ok {
		return fmt.Errorf("%w: %q", ErrNoRecord, id)
	}
	for _, e := range es {
		e.Seq = uint64(len(j.entries[id]) + 1)
		j.entries[id] = append(j.entries[id], e)
	}
	return nil
}

func (j *MemJournal) Load(_ context.Context, id string) (Record, []Entry, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.recs[id]
	if !ok {
		return Record{}, nil, fmt.Errorf("%w: %q", ErrNoRecord, id)
	}
	return *r, slices.Clone(j.entries[id]), nil
}

func (j *MemJournal) Unfinished(context.Context) ([]Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Record
	for _, id := range j.order {
		if r := j.recs[id]; !r.Done() {
			out = append(out, *r)
		}
	}
	return out, nil
}

// List returns every record, oldest first.
func (j *MemJournal) List(context.Context) ([]Record, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	out := make([]Record, 0, len(j.order))
	for _, id := range j.order {
		out = append(out, *j.recs[id])
	}
	return out, nil
}

func (j *MemJournal) Finish(_ context.Context, id string, o Outcome, reason string) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	r, ok := j.recs[id]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoRecord, id)
	}
	r.Outcome, r.Reason, r.Finished = o, reason, time.Now()
	return nil
}

func (j *MemJournal) Close() error { return nil }
