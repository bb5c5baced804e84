package journaltest

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/migration"
)

// broken is a Journal with some methods replaced (nil: the real one's).
type broken struct {
	migration.Journal
	create     func(j migration.Journal, ctx context.Context, r migration.Record) error
	append     func(j migration.Journal, ctx context.Context, id string, es ...migration.Entry) error
	load       func(j migration.Journal, ctx context.Context, id string) (migration.Record, []migration.Entry, error)
	unfinished func(j migration.Journal, ctx context.Context) ([]migration.Record, error)
	finish     func(j migration.Journal, ctx context.Context, id string, o migration.Outcome, reason string) error
	list       func(l migration.Lister, ctx context.Context) ([]migration.Record, error)
}

// List is the real journal's (which must be a migration.Lister) or b.list.
func (b *broken) List(ctx context.Context) ([]migration.Record, error) {
	l := b.Journal.(migration.Lister)
	if b.list != nil {
		return b.list(l, ctx)
	}
	return l.List(ctx)
}

func (b *broken) Create(ctx context.Context, r migration.Record) error {
	if b.create != nil {
		return b.create(b.Journal, ctx, r)
	}
	return b.Journal.Create(ctx, r)
}

func (b *broken) Append(ctx context.Context, id string, es ...migration.Entry) error {
	if b.append != nil {
		return b.append(b.Journal, ctx, id, es...)
	}
	return b.Journal.Append(ctx, id, es...)
}

func (b *broken) Load(ctx context.Context, id string) (migration.Record, []migration.Entry, error) {
	if b.load != nil {
		return b.load(b.Journal, ctx, id)
	}
	return b.Journal.Load(ctx, id)
}

func (b *broken) Unfinished(ctx context.Context) ([]migration.Record, error) {
	if b.unfinished != nil {
		return b.unfinished(b.Journal, ctx)
	}
	return b.Journal.Unfinished(ctx)
}

func (b *broken) Finish(ctx context.Context, id string, o migration.Outcome, reason string) error {
	if b.finish != nil {
		return b.finish(b.Journal, ctx, id, o, reason)
	}
	return b.Journal.Finish(ctx, id, o, reason)
}

// created remembers the IDs a journal created, in order.
type created struct {
	mu  sync.Mutex
	ids []string
}

func (c *created) add(id string) {
	c.mu.Lock()
	c.ids = append(c.ids, id)
	c.mu.Unlock()
}

func (c *created) all() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.ids)
}

// tracking returns a journal that remembers what it created (in a
// created of its own), with the methods mk returns.
func tracking(mk func(c *created) broken) func(migration.Journal) migration.Journal {
	return func(j migration.Journal) migration.Journal {
		c := &created{}
		b := mk(c)
		b.Journal = j
		inner := b.create
		b.create = func(j migration.Journal, ctx context.Context, r migration.Record) error {
			var err error
			if inner != nil {
				err = inner(j, ctx, r)
			} else {
				err = j.Create(ctx, r)
			}
			if err == nil {
				c.add(r.ID)
			}
			return err
		}
		return &b
	}
}

func with(b broken) func(migration.Journal) migration.Journal {
	return func(j migration.Journal) migration.Journal {
		b := b
		b.Journal = j
		return &b
	}
}

// loadWith returns a journal whose Load changes what the real one says.
func loadWith(change func(r *migration.Record, es []migration.Entry) []migration.Entry) func(migration.Journal) migration.Journal {
	return with(broken{load: func(j migration.Journal, ctx context.Context, id string) (migration.Record, []migration.Entry, error) {
		r, es, err := j.Load(ctx, id)
		if err == nil {
			es = change(&r, es)
		}
		return r, es, err
	}})
}

// appendWith returns a journal whose Append changes the entries first.
func appendWith(change func(es []migration.Entry) []migration.Entry) func(migration.Journal) migration.Journal {
	return with(broken{append: func(j migration.Journal, ctx context.Context, id string, es ...migration.Entry) error {
		return j.Append(ctx, id, change(slices.Clone(es))...)
	}})
}

// strip returns err without its sentinel (same message).
func strip(err, sentinel error) error {
	if errors.Is(err, sentinel) {
		return errors.New(err.Error())
	}
	return err
}

var mutants = []conform.Mutant[func(migration.Journal) migration.Journal]{
	{Name: "Load loses the plan's addresses", Caught: []string{"CreateLoad"},
		Break: loadWith(func(r *migration.Record, es []migration.Entry) []migration.Entry { r.Plan.Addrs = nil; return es })},
	{Name: "Load of an unknown ID is an empty record", Caught: []string{"CreateLoad"},
		Break: with(broken{load: func(j migration.Journal, ctx context.Context, id string) (migration.Record, []migration.Entry, error) {
			r, es, err := j.Load(ctx, id)
			if errors.Is(err, migration.ErrNoRecord) {
				return migration.Record{ID: id}, nil, nil
			}
			return r, es, err
		}})},
	{Name: "a reused ID is ErrBusy", Caught: []string{"ReusedID"},
		Break: with(broken{create: func(j migration.Journal, ctx context.Context, r migration.Record) error {
			err := j.Create(ctx, r)
			if errors.Is(err, migration.ErrInvalidPlan) {
				return fmt.Errorf("%w: %s", migration.ErrBusy, strings.TrimPrefix(err.Error(), migration.ErrInvalidPlan.Error()))
			}
			return err
		}})},
	{Name: "ErrBusy names no VM", Caught: []string{"BusyVM"},
		Break: with(broken{create: func(j migration.Journal, ctx context.Context, r migration.Record) error {
			if err := j.Create(ctx, r); errors.Is(err, migration.ErrBusy) {
				return migration.ErrBusy
			} else {
				return err
			}
		}})},
	{Name: "a refused migration is stored anyway", Caught: []string{"BusyVM"},
		Break: with(broken{create: func(j migration.Journal, ctx context.Context, r migration.Record) error {
			err := j.Create(ctx, r)
			if errors.Is(err, migration.ErrBusy) {
				r.Plan.VM += "~"
				_ = j.Create(ctx, r)
			}
			return err
		}})},
	{Name: "Load numbers the entries from 0", Caught: []string{"AppendNumbers"},
		Break: loadWith(func(_ *migration.Record, es []migration.Entry) []migration.Entry {
			for i := range es {
				es[i].Seq--
			}
			return es
		})},
	{Name: "Append writes a batch backwards", Caught: []string{"AppendNumbers"},
		Break: appendWith(func(es []migration.Entry) []migration.Entry { slices.Reverse(es); return es })},
	{Name: "Append drops Data", Caught: []string{"AppendNumbers"},
		Break: appendWith(func(es []migration.Entry) []migration.Entry {
			for i := range es {
				es[i].Data = nil
			}
			return es
		})},
	{Name: "an empty Append writes a blank entry", Caught: []string{"AppendNothing"},
		Break: appendWith(func(es []migration.Entry) []migration.Entry {
			if len(es) == 0 {
				return []migration.Entry{{}}
			}
			return es
		})},
	{Name: "Append writes entry by entry", Caught: []string{"AppendAllOrNothing"},
		Break: with(broken{append: func(j migration.Journal, ctx context.Context, id string, es ...migration.Entry) error {
			for _, e := range es {
				if err := j.Append(ctx, id, e); err != nil {
					return err
				}
			}
			return nil
		}})},
	{Name: "Append to an unknown ID loses ErrNoRecord", Caught: []string{"AppendUnknown"},
		Break: with(broken{append: func(j migration.Journal, ctx context.Context, id string, es ...migration.Entry) error {
			return strip(j.Append(ctx, id, es...), migration.ErrNoRecord)
		}})},
	{Name: "Append to an unknown ID creates it", Caught: []string{"AppendUnknown"},
		Break: with(broken{append: func(j migration.Journal, ctx context.Context, id string, es ...migration.Entry) error {
			err := j.Append(ctx, id, es...)
			if errors.Is(err, migration.ErrNoRecord) {
				if err := j.Create(ctx, migration.Record{ID: id, Plan: migration.Plan{VM: "vm-" + id}}); err != nil {
					return err
				}
				return j.Append(ctx, id, es...)
			}
			return err
		}})},
	{Name: "Load mixes in the entries of IDs that begin alike", Caught: []string{"LoadOwnEntries"},
		Break: tracking(func(c *created) broken {
			return broken{load: func(j migration.Journal, ctx context.Context, id string) (migration.Record, []migration.Entry, error) {
				r, es, err := j.Load(ctx, id)
				for _, other := range c.all() {
					if other != id && strings.HasPrefix(other, id) {
						_, more, _ := j.Load(ctx, other)
						es = append(es, more...)
					}
				}
				return r, es, err
			}}
		})},
	{Name: "Unfinished in ID order", Caught: []string{"UnfinishedOldestFirst"},
		Break: with(broken{unfinished: func(j migration.Journal, ctx context.Context) ([]migration.Record, error) {
			rs, err := j.Unfinished(ctx)
			slices.SortFunc(rs, func(a, b migration.Record) int { return cmp.Compare(a.ID, b.ID) })
			return rs, err
		}})},
	{Name: "Unfinished lists finished migrations", Caught: []string{"UnfinishedOldestFirst", "FinishEnds"},
		Break: tracking(func(c *created) broken {
			return broken{unfinished: func(j migration.Journal, ctx context.Context) ([]migration.Record, error) {
				var rs []migration.Record
				for _, id := range c.all() {
					r, _, err := j.Load(ctx, id)
					if err != nil {
						return nil, err
					}
					rs = append(rs, r)
				}
				slices.SortStableFunc(rs, func(a, b migration.Record) int { return a.Started.Compare(b.Started) })
				return rs, nil
			}}
		})},
	{Name: "Finish keeps the VM busy", Caught: []string{"FinishEnds"},
		Break: func(j migration.Journal) migration.Journal {
			var mu sync.Mutex
			done := map[string]bool{}
			return &broken{Journal: j,
				create: func(j migration.Journal, ctx context.Context, r migration.Record) error {
					mu.Lock()
					busy := done[r.Plan.VM]
					mu.Unlock()
					if busy {
						return fmt.Errorf("%w: VM %q", migration.ErrBusy, r.Plan.VM)
					}
					return j.Create(ctx, r)
				},
				finish: func(j migration.Journal, ctx context.Context, id string, o migration.Outcome, reason string) error {
					r, _, err := j.Load(ctx, id)
					if err == nil {
						mu.Lock()
						done[r.Plan.VM] = true
						mu.Unlock()
					}
					return j.Finish(ctx, id, o, reason)
				}}
		}},
	{Name: "List leaves out finished records", Caught: []string{"ListAll"},
		Break: with(broken{list: func(l migration.Lister, ctx context.Context) ([]migration.Record, error) {
			rs, err := l.List(ctx)
			return slices.DeleteFunc(rs, migration.Record.Done), err
		}})},
	{Name: "List in ID order", Caught: []string{"ListAll"},
		Break: with(broken{list: func(l migration.Lister, ctx context.Context) ([]migration.Record, error) {
			rs, err := l.List(ctx)
			slices.SortFunc(rs, func(a, b migration.Record) int { return cmp.Compare(a.ID, b.ID) })
			return rs, err
		}})},
	{Name: "Finish forgets the reason", Caught: []string{"FinishEnds"},
		Break: loadWith(func(r *migration.Record, es []migration.Entry) []migration.Entry { r.Reason = ""; return es })},
	{Name: "Finish of an unknown ID succeeds", Caught: []string{"FinishEnds"},
		Break: with(broken{finish: func(j migration.Journal, ctx context.Context, id string, o migration.Outcome, reason string) error {
			if err := j.Finish(ctx, id, o, reason); !errors.Is(err, migration.ErrNoRecord) {
				return err
			}
			return nil
		}})},
}

// bolt opens a BoltJournal in t's temporary directory: it fails a batch
// whose entry JSON cannot encode, as a durable journal does.
func bolt(t testing.TB) migration.Journal {
	j, err := migration.OpenBoltJournal(filepath.Join(t.TempDir(), "j.db"))
	require.NoError(t, err)
	t.Cleanup(func() { j.Close() })
	return j
}

// TestSuiteCatchesBrokenJournals: each check of Run fails against a
// BoltJournal broken on purpose.
func TestSuiteCatchesBrokenJournals(t *testing.T) {
	conform.Mutants(t, checks, mutants, func(m conform.Mutant[func(migration.Journal) migration.Journal]) Open {
		return func(t testing.TB) migration.Journal { return m.Break(bolt(t)) }
	})
}
