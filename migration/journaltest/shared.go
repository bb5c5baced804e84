package journaltest

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/migration"
)

// Store is one shared journal, empty when made, and its controllers.
type Store struct {
	// Controller returns the journal of the controller named name on
	// this store, with a live lease (called once per name).
	Controller func(name string) migration.SharedJournal
	// Expire ends j's lease as when its controller stops renewing it
	// (it crashed, or is cut off from the store). It returns once j's
	// Owning has ended and the store lets other controllers claim what
	// j owned.
	Expire func(j migration.SharedJournal)
}

// NewStore returns a new Store (its cleanup registered on t).
type NewStore = func(t testing.TB) Store

// Wait is how long a check waits for Orphans to send an ID, or to close
// its channel, before it fails.
var Wait = 10 * time.Second

// RunShared runs every check of the SharedJournal suite (ownership,
// Claim, Orphans, Owning) as a parallel subtest of t. A SharedJournal
// runs Run too: Run's journal is one controller's.
func RunShared(t *testing.T, newStore NewStore) {
	t.Helper()
	conform.Run(t, sharedChecks, newStore)
}

var sharedChecks = []conform.Check[NewStore]{
	{Name: "CreateSetsOwner", Run: createSetsOwner},
	{Name: "BusyNamesOwner", Run: busyNamesOwner},
	{Name: "NonOwnerRefused", Run: nonOwnerRefused},
	{Name: "ClaimLiveOwner", Run: claimLiveOwner},
	{Name: "ClaimUnknownOrFinished", Run: claimUnknownOrFinished},
	{Name: "ExpiredRefused", Run: expiredRefused},
	{Name: "OrphansBeforeCall", Run: orphansBeforeCall},
	{Name: "OrphansAfterCall", Run: orphansAfterCall},
	{Name: "OrphansOnlyOrphans", Run: orphansOnlyOrphans},
	{Name: "OrphansCloses", Run: orphansCloses},
	{Name: "TakeOver", Run: takeOver},
}

// Controller names, unlike anything else in a message.
const (
	alpha   = "ctl-alpha"
	bravo   = "ctl-bravo"
	charlie = "ctl-charlie"
)

// owned fails t unless id's record names owner.
func owned(t testing.TB, j migration.Journal, id, owner, what string) {
	t.Helper()
	r, _ := load(t, j, id)
	assert.Equal(t, owner, r.Owner, "%s: the owner of %s", what, id)
}

// ended reports whether ctx has ended.
func ended(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	default:
		return false
	}
}

// await reads ch until it sends want, and returns what it sent; it
// fails t if Wait passes first or ch closes.
func await(t testing.TB, ch <-chan string, want, what string) []string {
	t.Helper()
	var got []string
	timeout := time.After(Wait)
	for {
		select {
		case id, ok := <-ch:
			if !ok {
				t.Fatalf("%s: Orphans closed its channel before sending %s (it sent %q)", what, want, got)
			}
			got = append(got, id)
			if id == want {
				return got
			}
		case <-timeout:
			t.Fatalf("%s: Orphans did not send %s within %s (it sent %q)", what, want, Wait, got)
		}
	}
}

// orphans calls j.Orphans until the check ends.
func orphans(t testing.TB, j migration.SharedJournal) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	ch, err := j.Orphans(ctx)
	require.NoError(t, err, "Orphans")
	return ch
}

// notOwner fails t unless err wraps ErrNotOwner.
func notOwner(t testing.TB, err error, what string) {
	t.Helper()
	assert.ErrorIs(t, err, migration.ErrNotOwner, what)
}

// unchanged fails t unless id has n entries and no outcome.
func unchanged(t testing.TB, j migration.Journal, id string, n int, what string) {
	t.Helper()
	r, es := load(t, j, id)
	assert.Len(t, es, n, "%s: the entries of %s", what, id)
	assert.False(t, r.Done(), "%s: %s has an outcome (%s)", what, id, r.Outcome)
}

// Create makes the creating controller the owner, whatever the record
// said; every controller sees it.
func createSetsOwner(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	r := record("m1", "vm1", time.Now())
	r.Owner = charlie
	create(t, a, r)
	owned(t, a, "m1", alpha, "the creator's view")
	owned(t, b, "m1", alpha, "another controller's view")
	rs, err := b.Unfinished(t.Context())
	require.NoError(t, err)
	if assert.Len(t, rs, 1) {
		assert.Equal(t, alpha, rs[0].Owner, "Unfinished's record")
	}
}

// A second controller's Create of the same VM is ErrBusy and names the
// VM and its owner.
func busyNamesOwner(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	create(t, a, record("m1", "vm-shared", time.Now()))
	err := b.Create(t.Context(), record("m2", "vm-shared", time.Now()))
	if assert.ErrorIs(t, err, migration.ErrBusy, "another controller's migration of the VM") {
		assert.Contains(t, err.Error(), "vm-shared", "ErrBusy names the VM")
		assert.Contains(t, err.Error(), alpha, "ErrBusy names the owner")
	}
	noRecord(t, b, "m2", "the refused migration")
}

// Append and Finish by a controller that does not own the migration are
// ErrNotOwner and write nothing; the owner goes on.
func nonOwnerRefused(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	ctx := t.Context()
	create(t, a, record("m1", "vm1", time.Now()))
	require.NoError(t, a.Append(ctx, "m1", entry(310, migration.PhaseBegin)))
	notOwner(t, b.Append(ctx, "m1", entry(315, migration.PhaseBegin)), "Append by another controller")
	notOwner(t, b.Finish(ctx, "m1", migration.Completed, ""), "Finish by another controller")
	unchanged(t, a, "m1", 1, "after the refused writes")
	owned(t, a, "m1", alpha, "after the refused writes")
	require.NoError(t, a.Append(ctx, "m1", entry(315, migration.PhaseBegin)), "the owner's Append")
	assert.Equal(t, []migration.Block{310, 315}, blocks(entries(t, a, "m1")))
	require.NoError(t, a.Finish(ctx, "m1", migration.Completed, ""), "the owner's Finish")
}

// Claim of a migration a live controller owns is ErrBusy naming it (nil
// for the owner itself) and changes nothing.
func claimLiveOwner(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	ctx := t.Context()
	create(t, a, record("m1", "vm1", time.Now()))
	err := b.Claim(ctx, "m1")
	if assert.ErrorIs(t, err, migration.ErrBusy, "Claim of a live controller's migration") {
		assert.Contains(t, err.Error(), alpha, "ErrBusy names the owner")
	}
	assert.NoError(t, a.Claim(ctx, "m1"), "the owner's own Claim")
	owned(t, b, "m1", alpha, "after the Claims")
	notOwner(t, b.Append(ctx, "m1", entry(310, migration.PhaseBegin)), "Append by the refused claimant")
	assert.NoError(t, a.Append(ctx, "m1", entry(310, migration.PhaseBegin)), "the owner's Append")
}

// Claim of an unknown or a finished migration is ErrNoRecord.
func claimUnknownOrFinished(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	ctx := t.Context()
	assert.ErrorIs(t, b.Claim(ctx, "nope"), migration.ErrNoRecord, "Claim of a migration never created")
	create(t, a, record("m1", "vm1", time.Now()))
	require.NoError(t, a.Finish(ctx, "m1", migration.Completed, ""))
	assert.ErrorIs(t, b.Claim(ctx, "m1"), migration.ErrNoRecord, "Claim of a finished migration")
	r, _ := load(t, b, "m1")
	assert.Equal(t, migration.Completed, r.Outcome, "after the refused Claim")
}

// Once its lease has expired, a controller's Owning has ended and its
// writes are ErrNotOwner: nothing written, nothing created.
func expiredRefused(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a := s.Controller(alpha)
	ctx := t.Context()
	create(t, a, record("m1", "vm1", time.Now()))
	require.NoError(t, a.Append(ctx, "m1", entry(310, migration.PhaseBegin)))
	assert.False(t, ended(a.Owning()), "Owning ended while the lease lives (cause: %v)", context.Cause(a.Owning()))
	s.Expire(a)
	assert.True(t, ended(a.Owning()), "Owning has not ended after the lease expired")
	notOwner(t, a.Append(ctx, "m1", entry(315, migration.PhaseBegin)), "Append after the lease expired")
	notOwner(t, a.Finish(ctx, "m1", migration.Completed, ""), "Finish after the lease expired")
	notOwner(t, a.Create(ctx, record("m2", "vm2", time.Now())), "Create after the lease expired")
	unchanged(t, a, "m1", 1, "after the refused writes")
	noRecord(t, a, "m2", "the refused Create")
}

// Orphans sends the migrations orphaned before it was called.
func orphansBeforeCall(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	create(t, a, record("m1", "vm1", time.Now()))
	s.Expire(a)
	await(t, orphans(t, b), "m1", "a migration orphaned before the call")
}

// Orphans sends the migrations orphaned after it was called.
func orphansAfterCall(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	create(t, a, record("m1", "vm1", time.Now()))
	ch := orphans(t, b)
	s.Expire(a)
	await(t, ch, "m1", "a migration orphaned after the call")
}

// Orphans sends neither a migration a live controller owns (its caller
// or another) nor a finished one.
func orphansOnlyOrphans(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b, c := s.Controller(alpha), s.Controller(bravo), s.Controller(charlie)
	ctx := t.Context()
	create(t, a, record("m-gone", "vm1", time.Now()))
	create(t, a, record("m-done", "vm2", time.Now()))
	require.NoError(t, a.Finish(ctx, "m-done", migration.Completed, ""))
	create(t, b, record("m-b", "vm3", time.Now()))
	create(t, c, record("m-c", "vm4", time.Now()))
	s.Expire(a)
	ch := orphans(t, b)
	got := await(t, ch, "m-gone", "the orphan")
	quiet := time.After(300 * time.Millisecond)
	for more := true; more; {
		select {
		case id := <-ch:
			got = append(got, id)
		case <-quiet:
			more = false
		}
	}
	got = slices.DeleteFunc(got, func(id string) bool { return id == "m-gone" || id == "" })
	assert.Empty(t, got, "Orphans sent migrations that are no orphans")
}

// Orphans closes its channel once its context ends.
func orphansCloses(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b := s.Controller(alpha), s.Controller(bravo)
	create(t, a, record("m1", "vm1", time.Now()))
	s.Expire(a)
	ctx, cancel := context.WithCancel(t.Context())
	ch, err := b.Orphans(ctx)
	require.NoError(t, err)
	cancel()
	timeout := time.After(Wait)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-timeout:
			t.Fatalf("Orphans did not close its channel within %s of its context's end", Wait)
		}
	}
}

// Another controller claims a migration whose owner's lease expired and
// finishes it: numbering goes on, the old owner cannot claim it back,
// and the VM may migrate again.
func takeOver(t testing.TB, newStore NewStore) {
	s := newStore(t)
	a, b, c := s.Controller(alpha), s.Controller(bravo), s.Controller(charlie)
	ctx := t.Context()
	create(t, a, record("m1", "vm1", time.Now()))
	require.NoError(t, a.Append(ctx, "m1", entry(310, migration.PhaseBegin), entry(310, migration.PhaseDone)))
	s.Expire(a)
	require.NoError(t, b.Claim(ctx, "m1"), "Claim of an orphan")
	owned(t, c, "m1", bravo, "after the Claim")
	assert.NoError(t, b.Claim(ctx, "m1"), "the new owner's Claim again")
	assert.Error(t, a.Claim(ctx, "m1"), "Claim by the expired controller")
	err := c.Claim(ctx, "m1")
	if assert.ErrorIs(t, err, migration.ErrBusy, "Claim of the new owner's migration") {
		assert.Contains(t, err.Error(), bravo, "ErrBusy names the new owner")
	}
	owned(t, c, "m1", bravo, "after the refused Claims")
	require.NoError(t, b.Append(ctx, "m1", entry(315, migration.PhaseBegin)), "the new owner's Append")
	assert.Equal(t, []migration.Block{310, 310, 315}, blocks(entries(t, b, "m1")), "numbering goes on")
	require.NoError(t, b.Finish(ctx, "m1", migration.RolledBack, "taken over"), "the new owner's Finish")
	r, _ := load(t, c, "m1")
	assert.Equal(t, migration.RolledBack, r.Outcome)
	assert.Empty(t, unfinished(t, c))
	assert.NoError(t, c.Create(ctx, record("m2", "vm1", time.Now())), "vm1 may migrate again")
}
