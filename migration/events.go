package migration

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/sealift/sealift/hypervisor"
)

// Event is something a subscriber hears about a migration: one of
// Started, StepStarted, StepFinished, MigrationProgress, Finished. Every
// run (Run, and each migration Recover or Standby takes on) has exactly
// one Started first and one Finished last.
type Event interface{ MigrationID() string }

// Started: a run began (Run once the journal holds the migration;
// Recovery: Recover or Standby took an unfinished one on).
type Started struct {
	ID       string
	Plan     Plan
	Recovery bool
	At       time.Time
}

// StepStarted: a block of FIG. 3 began.
type StepStarted struct {
	ID    string
	Block Block
	At    time.Time
}

// StepFinished: a block ended, with its duration and error (if any).
type StepFinished struct {
	ID       string
	Block    Block
	Duration time.Duration
	Err      error
}

// MigrationProgress relays the hypervisor's progress (bytes, remaining).
type MigrationProgress struct {
	ID string
	hypervisor.Progress
}

// Finished: the run ended with this outcome (Abandoned also when the
// controller lost its ownership: the journal then keeps the migration for
// another). Report is the run's report (shared: read it, do not change
// it).
type Finished struct {
	ID      string
	Outcome Outcome
	Reason  string
	Report  *Report
}

// BatchFinished: a batch's own record ended (RunBatch; Recover or
// Standby for a batch a stopped controller left). Each member's run has
// its own Started and Finished before it; Members are their migration
// IDs, in the order of the batch's plans. Report is the batch's (shared:
// read it, do not change it): its redirect tunnel is gone if its block
// 390 succeeded or the outcome is RolledBack; a Partial batch keeps it.
type BatchFinished struct {
	ID       string
	Outcome  Outcome
	Members  []string
	Recovery bool
	Report   *BatchReport
}

func (e Started) MigrationID() string           { return e.ID }
func (e BatchFinished) MigrationID() string     { return e.ID }
func (e StepStarted) MigrationID() string       { return e.ID }
func (e StepFinished) MigrationID() string      { return e.ID }
func (e MigrationProgress) MigrationID() string { return e.ID }
func (e Finished) MigrationID() string          { return e.ID }

// bus fans events out to subscribers without ever blocking the migration:
// a subscriber whose buffer is full misses the event, and Dropped counts it.
type bus struct {
	mu      sync.Mutex
	subs    map[int]chan Event
	next    int
	dropped atomic.Uint64
}

// Subscribe returns a channel of events with the given buffer and a
// function that unsubscribes and closes the channel.
func (m *Migrator) Subscribe(buffer int) (<-chan Event, func()) {
	b := &m.bus
	ch := make(chan Event, buffer)
	b.mu.Lock()
	if b.subs == nil {
		b.subs = map[int]chan Event{}
	}
	id := b.next
	b.next++
	b.subs[id] = ch
	b.mu.Unlock()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			b.mu.Lock()
			delete(b.subs, id)
			b.mu.Unlock()
			close(ch)
		})
	}
}

// Dropped is the number of events subscribers missed (full buffers).
func (m *Migrator) Dropped() uint64 { return m.bus.dropped.Load() }

func (b *bus) emit(e Event) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, ch := range b.subs {
		select {
		case ch <- e:
		default:
			b.dropped.Add(1)
		}
	}
}
