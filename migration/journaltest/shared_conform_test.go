package journaltest

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// world is one check's store: every controller it made, by name, and
// those whose lease it expired.
type world struct {
	mu      sync.Mutex
	byName  map[string]*migrationtest.SharedJournal
	expired map[string]bool
}

func (w *world) controller(name string) *migrationtest.SharedJournal {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.byName[name]
}

func (w *world) expiredNow() map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return maps.Clone(w.expired)
}

// brokenShared is a SharedJournal with some methods replaced (nil: the
// real one's).
type brokenShared struct {
	migration.SharedJournal
	w          *world
	create     func(b *brokenShared, ctx context.Context, r migration.Record) error
	append     func(b *brokenShared, ctx context.Context, id string, es ...migration.Entry) error
	load       func(b *brokenShared, ctx context.Context, id string) (migration.Record, []migration.Entry, error)
	unfinished func(b *brokenShared, ctx context.Context) ([]migration.Record, error)
	finish     func(b *brokenShared, ctx context.Context, id string, o migration.Outcome, reason string) error
	claim      func(b *brokenShared, ctx context.Context, id string) error
	orphans    func(b *brokenShared, ctx context.Context) (<-chan string, error)
	owning     func(b *brokenShared) context.Context
}

func (b *brokenShared) Create(ctx context.Context, r migration.Record) error {
	if b.create != nil {
		return b.create(b, ctx, r)
	}
	return b.SharedJournal.Create(ctx, r)
}

func (b *brokenShared) Append(ctx context.Context, id string, es ...migration.Entry) error {
	if b.append != nil {
		return b.append(b, ctx, id, es...)
	}
	return b.SharedJournal.Append(ctx, id, es...)
}

func (b *brokenShared) Load(ctx context.Context, id string) (migration.Record, []migration.Entry, error) {
	if b.load != nil {
		return b.load(b, ctx, id)
	}
	return b.SharedJournal.Load(ctx, id)
}

func (b *brokenShared) Unfinished(ctx context.Context) ([]migration.Record, error) {
	if b.unfinished != nil {
		return b.unfinished(b, ctx)
	}
	return b.SharedJournal.Unfinished(ctx)
}

func (b *brokenShared) Finish(ctx context.Context, id string, o migration.Outcome, reason string) error {
	if b.finish != nil {
		return b.finish(b, ctx, id, o, reason)
	}
	return b.SharedJournal.Finish(ctx, id, o, reason)
}

func (b *brokenShared) Claim(ctx context.Context, id string) error {
	if b.claim != nil {
		return b.claim(b, ctx, id)
	}
	return b.SharedJournal.Claim(ctx, id)
}

func (b *brokenShared) Orphans(ctx context.Context) (<-chan string, error) {
	if b.orphans != nil {
		return b.orphans(b, ctx)
	}
	return b.SharedJournal.Orphans(ctx)
}

func (b *brokenShared) Owning() context.Context {
	if b.owning != nil {
		return b.owning(b)
	}
	return b.SharedJournal.Owning()
}

// refusedOK turns an error wrapping sentinel into success.
func refusedOK(err, sentinel error) error {
	if errors.Is(err, sentinel) {
		return nil
	}
	return err
}

// filteredOrphans sends what the real Orphans sends for which keep
// (given the record and the controllers expired at the call) holds.
func filteredOrphans(keep func(r migration.Record, expiredAtCall map[string]bool) bool) func(b *brokenShared, ctx context.Context) (<-chan string, error) {
	return func(b *brokenShared, ctx context.Context) (<-chan string, error) {
		before := b.w.expiredNow()
		in, err := b.SharedJournal.Orphans(ctx)
		if err != nil {
			return nil, err
		}
		out := make(chan string)
		go func() {
			defer close(out)
			for id := range in {
				r, _, err := b.SharedJournal.Load(ctx, id)
				if err != nil || !keep(r, before) {
					continue
				}
				select {
				case out <- id:
				case <-ctx.Done():
					return
				}
			}
		}()
		return out, nil
	}
}

var sharedMutants = []conform.Mutant[brokenShared]{
	{Name: "records name no owner", Caught: []string{"CreateSetsOwner"},
		Break: brokenShared{
			load: func(b *brokenShared, ctx context.Context, id string) (migration.Record, []migration.Entry, error) {
				r, es, err := b.SharedJournal.Load(ctx, id)
				r.Owner = ""
				return r, es, err
			},
			unfinished: func(b *brokenShared, ctx context.Context) ([]migration.Record, error) {
				rs, err := b.SharedJournal.Unfinished(ctx)
				for i := range rs {
					rs[i].Owner = ""
				}
				return rs, err
			}}},
	{Name: "ErrBusy names no owner", Caught: []string{"BusyNamesOwner", "ClaimLiveOwner"},
		Break: brokenShared{
			create: func(b *brokenShared, ctx context.Context, r migration.Record) error {
				if err := b.SharedJournal.Create(ctx, r); errors.Is(err, migration.ErrBusy) {
					return fmt.Errorf("%w: VM %q", migration.ErrBusy, r.Plan.VM)
				} else {
					return err
				}
			},
			claim: func(b *brokenShared, ctx context.Context, id string) error {
				if err := b.SharedJournal.Claim(ctx, id); errors.Is(err, migration.ErrBusy) {
					return fmt.Errorf("%w: migration %s", migration.ErrBusy, id)
				} else {
					return err
				}
			}}},
	{Name: "refused writes say nil (and write nothing)", Caught: []string{"NonOwnerRefused", "ExpiredRefused"},
		Break: brokenShared{
			create: func(b *brokenShared, ctx context.Context, r migration.Record) error {
				return refusedOK(b.SharedJournal.Create(ctx, r), migration.ErrNotOwner)
			},
			append: func(b *brokenShared, ctx context.Context, id string, es ...migration.Entry) error {
				return refusedOK(b.SharedJournal.Append(ctx, id, es...), migration.ErrNotOwner)
			},
			finish: func(b *brokenShared, ctx context.Context, id string, o migration.Outcome, reason string) error {
				return refusedOK(b.SharedJournal.Finish(ctx, id, o, reason), migration.ErrNotOwner)
			}}},
	{Name: "a non-owner's Append is written through the owner", Caught: []string{"NonOwnerRefused"},
		Break: brokenShared{
			append: func(b *brokenShared, ctx context.Context, id string, es ...migration.Entry) error {
				err := b.SharedJournal.Append(ctx, id, es...)
				if errors.Is(err, migration.ErrNotOwner) {
					if r, _, lerr := b.SharedJournal.Load(ctx, id); lerr == nil {
						if o := b.w.controller(r.Owner); o != nil {
							_ = o.Append(ctx, id, es...)
						}
					}
				}
				return err
			}}},
	{Name: "Claim of a live owner's migration says nil", Caught: []string{"ClaimLiveOwner"},
		Break: brokenShared{
			claim: func(b *brokenShared, ctx context.Context, id string) error {
				return refusedOK(b.SharedJournal.Claim(ctx, id), migration.ErrBusy)
			}}},
	{Name: "Claim of an unknown or finished migration says nil", Caught: []string{"ClaimUnknownOrFinished"},
		Break: brokenShared{
			claim: func(b *brokenShared, ctx context.Context, id string) error {
				return refusedOK(b.SharedJournal.Claim(ctx, id), migration.ErrNoRecord)
			}}},
	{Name: "Owning never ends", Caught: []string{"ExpiredRefused"},
		Break: brokenShared{owning: func(*brokenShared) context.Context { return context.Background() }}},
	{Name: "Orphans sends only those orphaned before the call", Caught: []string{"OrphansAfterCall"},
		Break: brokenShared{orphans: filteredOrphans(func(r migration.Record, expired map[string]bool) bool { return expired[r.Owner] })}},
	{Name: "Orphans sends only those orphaned after the call", Caught: []string{"OrphansBeforeCall"},
		Break: brokenShared{orphans: filteredOrphans(func(r migration.Record, expired map[string]bool) bool { return !expired[r.Owner] })}},
	{Name: "Orphans sends every unfinished migration first", Caught: []string{"OrphansOnlyOrphans"},
		Break: brokenShared{orphans: func(b *brokenShared, ctx context.Context) (<-chan string, error) {
			rs, err := b.SharedJournal.Unfinished(ctx)
			if err != nil {
				return nil, err
			}
			in, err := b.SharedJournal.Orphans(ctx)
			if err != nil {
				return nil, err
			}
			out := make(chan string)
			go func() {
				defer close(out)
				for _, r := range rs {
					select {
					case out <- r.ID:
					case <-ctx.Done():
						return
					}
				}
				for id := range in {
					select {
					case out <- id:
					case <-ctx.Done():
						return
					}
				}
			}()
			return out, nil
		}}},
	{Name: "Orphans never closes its channel", Caught: []string{"OrphansCloses"},
		Break: brokenShared{orphans: func(b *brokenShared, ctx context.Context) (<-chan string, error) {
			in, err := b.SharedJournal.Orphans(ctx)
			if err != nil {
				return nil, err
			}
			out := make(chan string)
			go func() {
				for id := range in {
					select {
					case out <- id:
					case <-ctx.Done():
					}
				}
			}()
			return out, nil
		}}},
	{Name: "Claim does nothing", Caught: []string{"TakeOver"},
		Break: brokenShared{claim: func(*brokenShared, context.Context, string) error { return nil }}},
	{Name: "the expired controller claims back (says nil)", Caught: []string{"TakeOver"},
		Break: brokenShared{claim: func(b *brokenShared, ctx context.Context, id string) error {
			return refusedOK(b.SharedJournal.Claim(ctx, id), migration.ErrNotOwner)
		}}},
}

// TestSuiteCatchesBrokenSharedJournals: each check of RunShared fails
// against migrationtest's SharedJournal broken on purpose.
func TestSuiteCatchesBrokenSharedJournals(t *testing.T) {
	conform.Mutants(t, sharedChecks, sharedMutants, func(m conform.Mutant[brokenShared]) NewStore {
		return func(testing.TB) Store {
			s := migrationtest.NewSharedStore()
			w := &world{byName: map[string]*migrationtest.SharedJournal{}, expired: map[string]bool{}}
			real := map[migration.SharedJournal]*migrationtest.SharedJournal{}
			return Store{
				Controller: func(name string) migration.SharedJournal {
					j := s.Controller(name)
					b := m.Break // a copy
					b.SharedJournal, b.w = j, w
					w.mu.Lock()
					w.byName[name] = j
					real[&b] = j
					w.mu.Unlock()
					return &b
				},
				Expire: func(j migration.SharedJournal) {
					w.mu.Lock()
					r := real[j]
					w.expired[r.Name()] = true
					w.mu.Unlock()
					r.Expire()
				},
			}
		}
	})
}

// The broken Orphans that send nothing make their checks wait this long.
func init() { Wait = 2 * time.Second }
