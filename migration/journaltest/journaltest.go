// Package journaltest is the conformance suite of the migration.Journal
// contract (Run) and of the ownership a migration.SharedJournal adds
// (RunShared): every promise the Migrator and Recover rely on, as
// MemJournal and BoltJournal keep it. migration's journals,
// migrationtest's SharedJournal and migration/etcdjournal run it; a
// program's own journal runs it the same way:
//
//	func TestConformance(t *testing.T) {
//		journaltest.Run(t, func(t testing.TB) migration.Journal {
//			j, err := myjournal.Open(filepath.Join(t.TempDir(), "j"))
//			require.NoError(t, err)
//			t.Cleanup(func() { j.Close() })
//			return j
//		})
//	}
//
// Each check opens a journal of its own (open must return an empty one
// each time it is called), so checks run in parallel. The suite's own
// test runs each check against journals broken on purpose: every check
// can fail.
package journaltest

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/migration"
)

// Open returns a new, empty journal (its cleanup registered on t).
type Open = func(t testing.TB) migration.Journal

// Run runs every check of the Journal suite as a parallel subtest of t.
func Run(t *testing.T, open Open) {
	t.Helper()
	conform.Run(t, checks, open)
}

var checks = []conform.Check[Open]{
	{Name: "CreateLoad", Run: createLoad},
	{Name: "ReusedID", Run: reusedID},
	{Name: "BusyVM", Run: busyVM},
	{Name: "AppendNumbers", Run: appendNumbers},
	{Name: "AppendNothing", Run: appendNothing},
	{Name: "AppendAllOrNothing", Run: appendAllOrNothing},
	{Name: "AppendUnknown", Run: appendUnknown},
	{Name: "LoadOwnEntries", Run: loadOwnEntries},
	{Name: "UnfinishedOldestFirst", Run: unfinishedOldestFirst},
	{Name: "FinishEnds", Run: finishEnds},
	{Name: "ListAll", Run: listAll},
}

// plan is a plan of vm with a few fields set (they must come back).
func plan(vm string) migration.Plan {
	return migration.Plan{VM: vm, From: "secure", To: "cloud",
		Addrs:        []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")},
		MaxBandwidth: 1 << 30}
}

func record(id, vm string, started time.Time) migration.Record {
	return migration.Record{ID: id, Plan: plan(vm), Started: started}
}

// entry is a journal line of block b; data are key, value pairs.
func entry(b migration.Block, ph migration.Phase, data ...string) migration.Entry {
	e := migration.Entry{Seq: 99, Time: time.Now(), Block: b, Phase: ph}
	for i := 0; i+1 < len(data); i += 2 {
		if e.Data == nil {
			e.Data = map[string]string{}
		}
		e.Data[data[i]] = data[i+1]
	}
	return e
}

func create(t testing.TB, j migration.Journal, r migration.Record) {
	t.Helper()
	require.NoError(t, j.Create(t.Context(), r), "Create %s (VM %s)", r.ID, r.Plan.VM)
}

func load(t testing.TB, j migration.Journal, id string) (migration.Record, []migration.Entry) {
	t.Helper()
	r, es, err := j.Load(t.Context(), id)
	require.NoError(t, err, "Load %s", id)
	return r, es
}

// entries returns the entries of id, failing t if any is misnumbered.
func entries(t testing.TB, j migration.Journal, id string) []migration.Entry {
	t.Helper()
	_, es := load(t, j, id)
	for i, e := range es {
		assert.Equal(t, uint64(i+1), e.Seq, "%s: entry %d of %d is numbered %d", id, i+1, len(es), e.Seq)
	}
	return es
}

func blocks(es []migration.Entry) []migration.Block {
	out := []migration.Block{}
	for _, e := range es {
		out = append(out, e.Block)
	}
	return out
}

func ids(rs []migration.Record) []string {
	out := []string{}
	for _, r := range rs {
		out = append(out, r.ID)
	}
	return out
}

func unfinished(t testing.TB, j migration.Journal) []string {
	t.Helper()
	rs, err := j.Unfinished(t.Context())
	require.NoError(t, err, "Unfinished")
	return ids(rs)
}

func noRecord(t testing.TB, j migration.Journal, id, what string) {
	t.Helper()
	_, _, err := j.Load(t.Context(), id)
	assert.ErrorIs(t, err, migration.ErrNoRecord, "%s: Load %s", what, id)
}

// A record comes back as it was created, with no entries; an unknown ID
// is ErrNoRecord.
func createLoad(t testing.TB, open Open) {
	j := open(t)
	started := time.Now().Add(-time.Minute)
	want := record("m1", "vm1", started)
	create(t, j, want)
	got, es := load(t, j, "m1")
	assert.Equal(t, "m1", got.ID)
	assert.Equal(t, want.Plan, got.Plan, "the plan comes back whole")
	assert.True(t, got.Started.Equal(started), "Started = %v, want %v", got.Started, started)
	assert.False(t, got.Done(), "a new record is unfinished (outcome %q)", got.Outcome)
	assert.True(t, got.Finished.IsZero(), "a new record has no Finished time")
	assert.Empty(t, es, "a new record has no entries")
	noRecord(t, j, "m2", "a migration never created")
}

// A reused migration ID is ErrInvalidPlan and changes nothing.
func reusedID(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	create(t, j, record("m1", "vm1", time.Now()))
	err := j.Create(ctx, record("m1", "vm9", time.Now()))
	assert.ErrorIs(t, err, migration.ErrInvalidPlan, "a reused ID")
	r, _ := load(t, j, "m1")
	assert.Equal(t, "vm1", r.Plan.VM, "the refused Create replaced the record")
	assert.NoError(t, j.Create(ctx, record("m2", "vm9", time.Now())), "vm9 is not busy: its Create was refused")
}

// At most one unfinished migration per VM: the second is ErrBusy, names
// the VM, and leaves no record.
func busyVM(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	create(t, j, record("m1", "vm-busy", time.Now()))
	err := j.Create(ctx, record("m2", "vm-busy", time.Now()))
	if assert.ErrorIs(t, err, migration.ErrBusy, "a second unfinished migration of the VM") {
		assert.Contains(t, err.Error(), "vm-busy", "ErrBusy names the VM")
	}
	noRecord(t, j, "m2", "the refused migration")
	assert.Equal(t, []string{"m1"}, unfinished(t, j))
	assert.NoError(t, j.Create(ctx, record("m3", "vm-other", time.Now())), "another VM")
}

// Entries are numbered 1..n in order, across Appends, whatever Seq the
// caller set; what they carry comes back.
func appendNumbers(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	create(t, j, record("m1", "vm1", time.Now()))
	first := entry(310, migration.PhaseBegin, "uri", "qemu+tls://b/system", "link", "l1234567")
	require.NoError(t, j.Append(ctx, "m1", first))
	fail := entry(335, migration.PhaseFail)
	fail.Err = "boom"
	require.NoError(t, j.Append(ctx, "m1", entry(325, migration.PhaseBegin), entry(325, migration.PhaseDone),
		entry(335, migration.PhaseBegin), fail), "one write of several entries")
	require.NoError(t, j.Append(ctx, "m1", entry(340, migration.PhaseBegin)))
	es := entries(t, j, "m1")
	require.Len(t, es, 6)
	assert.Equal(t, []migration.Block{310, 325, 325, 335, 335, 340}, blocks(es), "in the order written")
	assert.Equal(t, []migration.Phase{migration.PhaseBegin, migration.PhaseDone}, []migration.Phase{es[1].Phase, es[2].Phase})
	assert.Equal(t, first.Data, es[0].Data, "Data comes back")
	assert.Equal(t, "boom", es[4].Err, "Err comes back")
	assert.Equal(t, migration.PhaseFail, es[4].Phase)
	assert.True(t, es[0].Time.Equal(first.Time), "Time = %v, want %v", es[0].Time, first.Time)
}

// An Append of no entries writes nothing (and takes no number).
func appendNothing(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	create(t, j, record("m1", "vm1", time.Now()))
	require.NoError(t, j.Append(ctx, "m1", entry(310, migration.PhaseBegin), entry(310, migration.PhaseDone)))
	require.NoError(t, j.Append(ctx, "m1"), "no entries")
	require.NoError(t, j.Append(ctx, "m1", entry(315, migration.PhaseBegin)))
	assert.Equal(t, []migration.Block{310, 310, 315}, blocks(entries(t, j, "m1")))
}

// An Append writes all of its entries or none: one whose second entry
// cannot be stored (a Time past year 9999, which JSON cannot encode), or
// made with a context already ended, either fails having written
// nothing or succeeds having written every entry. Numbering goes on
// without a gap.
func appendAllOrNothing(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	create(t, j, record("m1", "vm1", time.Now()))
	require.NoError(t, j.Append(ctx, "m1", entry(310, migration.PhaseBegin)))
	bad := entry(325, migration.PhaseDone)
	bad.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)
	ended, cancel := context.WithCancel(ctx)
	cancel()
	for _, c := range []struct {
		what string
		ctx  context.Context
		es   []migration.Entry
	}{
		{"an entry that cannot be stored", ctx, []migration.Entry{entry(325, migration.PhaseBegin), bad, entry(335, migration.PhaseBegin)}},
		{"an ended context", ended, []migration.Entry{entry(340, migration.PhaseBegin), entry(340, migration.PhaseDone)}},
	} {
		before := len(entries(t, j, "m1"))
		err := j.Append(c.ctx, "m1", c.es...)
		after := len(entries(t, j, "m1"))
		if err != nil {
			assert.Equal(t, before, after, "%s: the Append failed (%v) but wrote %d of its %d entries", c.what, err, after-before, len(c.es))
		} else {
			assert.Equal(t, before+len(c.es), after, "%s: the Append succeeded but wrote %d of its %d entries", c.what, after-before, len(c.es))
		}
	}
	require.NoError(t, j.Append(ctx, "m1", entry(345, migration.PhaseBegin)))
	es := entries(t, j, "m1")
	assert.Equal(t, migration.Block(345), es[len(es)-1].Block, "the last entry")
}

// An Append to an unknown migration is ErrNoRecord and creates nothing.
func appendUnknown(t testing.TB, open Open) {
	j := open(t)
	err := j.Append(t.Context(), "nope", entry(310, migration.PhaseBegin))
	assert.ErrorIs(t, err, migration.ErrNoRecord, "Append to a migration never created")
	noRecord(t, j, "nope", "after an Append to it")
	assert.Empty(t, unfinished(t, j), "Unfinished")
}

// Load returns a migration's own entries, not those of a migration whose
// ID begins with its ID.
func loadOwnEntries(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	want := map[string][]migration.Block{"m1": {310}, "m10": {315, 320}, "m1/x": {325, 330, 335}}
	for i, id := range []string{"m1", "m10", "m1/x"} {
		create(t, j, record(id, "vm"+string(rune('a'+i)), time.Now()))
		var es []migration.Entry
		for _, b := range want[id] {
			es = append(es, entry(b, migration.PhaseBegin))
		}
		require.NoError(t, j.Append(ctx, id, es...), "Append to %s", id)
	}
	for id, bs := range want {
		assert.Equal(t, bs, blocks(entries(t, j, id)), "entries of %s", id)
	}
}

// Unfinished lists the migrations with no outcome, oldest (Started)
// first, whatever their IDs.
func unfinishedOldestFirst(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	t0 := time.Now().Add(-time.Hour)
	for i, id := range []string{"m-c", "m-a", "m-d", "m-b"} {
		create(t, j, record(id, "vm"+id, t0.Add(time.Duration(i)*time.Second)))
	}
	require.NoError(t, j.Finish(ctx, "m-d", migration.Completed, ""))
	rs, err := j.Unfinished(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"m-c", "m-a", "m-b"}, ids(rs), "the unfinished ones, oldest first")
	for _, r := range rs {
		assert.Equal(t, "vm"+r.ID, r.Plan.VM, "the plan of %s", r.ID)
	}
}

// Finish records the outcome, the reason and the time; the migration is
// no longer unfinished, keeps its entries, and its VM may migrate again.
// An unknown ID is ErrNoRecord.
func finishEnds(t testing.TB, open Open) {
	j := open(t)
	ctx := t.Context()
	t0 := time.Now()
	create(t, j, record("m1", "vm1", t0))
	create(t, j, record("m2", "vm2", t0.Add(time.Second)))
	require.NoError(t, j.Append(ctx, "m1", entry(310, migration.PhaseBegin), entry(310, migration.PhaseFail)))
	require.NoError(t, j.Finish(ctx, "m1", migration.RolledBack, "why"))
	r, es := load(t, j, "m1")
	assert.Equal(t, migration.RolledBack, r.Outcome)
	assert.Equal(t, "why", r.Reason)
	assert.True(t, r.Done())
	assert.False(t, r.Finished.IsZero(), "Finish sets Finished")
	assert.WithinDuration(t, time.Now(), r.Finished, time.Minute, "Finished")
	assert.Len(t, es, 2, "the entries stay")
	assert.Equal(t, []string{"m2"}, unfinished(t, j))
	assert.NoError(t, j.Create(ctx, record("m3", "vm1", time.Now())), "vm1 may migrate again")
	assert.ErrorIs(t, j.Create(ctx, record("m4", "vm2", time.Now())), migration.ErrBusy, "vm2 is still busy")
	assert.ErrorIs(t, j.Finish(ctx, "nope", migration.Completed, ""), migration.ErrNoRecord, "Finish of a migration never created")
	noRecord(t, j, "nope", "after a Finish of it")
}

// A journal that lists (migration.Lister) lists every record, finished
// ones too, oldest first, whatever their IDs.
func listAll(t testing.TB, open Open) {
	j := open(t)
	l, ok := j.(migration.Lister)
	if !ok {
		t.Skipf("%T is not a migration.Lister", j)
	}
	ctx := t.Context()
	t0 := time.Now().Add(-time.Hour)
	for i, id := range []string{"m-c", "m-a", "m-b"} {
		create(t, j, record(id, "vm"+id, t0.Add(time.Duration(i)*time.Second)))
	}
	require.NoError(t, j.Finish(ctx, "m-a", migration.Completed, "done"))
	rs, err := l.List(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"m-c", "m-a", "m-b"}, ids(rs), "every record, oldest first")
	for _, r := range rs {
		assert.Equal(t, r.ID == "m-a", r.Done(), "%s: outcome %q", r.ID, r.Outcome)
		assert.Equal(t, "vm"+r.ID, r.Plan.VM, "the plan of %s", r.ID)
	}
}
