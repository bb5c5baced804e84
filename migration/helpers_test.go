package migration_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/tunnel"
)

var (
	errBoom   = errors.New("boom")
	plainConn = conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:7777"), Remote: netip.MustParseAddrPort("10.2.0.20:40000"), State: "ESTABLISHED"}
	tlsConn   = conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:443"), Remote: netip.MustParseAddrPort("10.2.0.20:40001"), State: "ESTABLISHED"}
)

func newMigrator(t testing.TB, s *migrationtest.Setup) *migration.Migrator {
	t.Helper()
	m, err := migration.New(s.Config)
	require.NoError(t, err)
	return m
}

// journaled returns a Migrator over s whose in-memory journal the test
// can read.
func journaled(t testing.TB, s *migrationtest.Setup) (*migration.Migrator, *migration.MemJournal) {
	t.Helper()
	j := migration.NewMemJournal()
	s.Config.Journal = j
	return newMigrator(t, s), j
}

func blocks(r *migration.Report) []int {
	var out []int
	for _, s := range r.Steps {
		out = append(out, int(s.Block))
	}
	return out
}

// faultsOf names every fake of s as the Recorder does.
func faultsOf(s *migrationtest.Setup) map[string]*migrationtest.Faults {
	return map[string]*migrationtest.Faults{
		"hv:a": &s.Secure.Hypervisor.Faults, "hv:b": &s.Cloud.Hypervisor.Faults,
		"fence:a": &s.Secure.Fencer.Faults, "fence:b": &s.Cloud.Fencer.Faults,
		"audit:a": &s.Secure.Auditor.Faults, "audit:b": &s.Cloud.Auditor.Faults,
		"link": &s.Linker.Faults, "routing": &s.Router.Faults,
	}
}

func callStrings(s *migrationtest.Setup) []string {
	var calls []string
	for _, c := range s.Calls() {
		calls = append(calls, c.String())
	}
	return calls
}

// want is where a migration must leave the world.
type want struct {
	outcome migration.Outcome
	host    string           // the one host where vm1 is active
	state   hypervisor.State // its state there
	// srcFenced: the source's fence is left behind (its lift failed).
	srcFenced bool
	// unfinished: the journal keeps the migration for Recover (the
	// rollback failed); else it holds the report's outcome and reason.
	unfinished bool
	// recovered: the report is Recover's; the journal also holds the
	// entries of the run that crashed (a step begun and never ended).
	recovered bool
}

// checkEnd asserts the exactly-one-VM invariant, the fences, the links,
// the redirects and the journal that a migration ending as w leaves.
func checkEnd(t *testing.T, s *migrationtest.Setup, j migration.Journal, rep *migration.Report, err error, w want) {
	t.Helper()
	require.NotNil(t, rep, "no report (err %v)", err)
	require.Equal(t, w.outcome, rep.Outcome, "err %v, reason %q", err, rep.Reason)
	switch w.outcome {
	case migration.Completed:
		assert.NoError(t, err)
	case migration.RolledBack:
		if w.recovered { // Recover reports only what did not end well
			assert.NoError(t, err)
			break
		}
		assert.ErrorIs(t, err, migration.ErrRolledBack)
	case migration.StayedFenced:
		assert.ErrorIs(t, err, migration.ErrStayedFenced)
	case migration.Abandoned:
		assert.Error(t, err)
	}
	if w.outcome != migration.Completed {
		assert.NotEmpty(t, rep.Reason, "the report says why")
	}

	assert.Equal(t, []string{w.host}, s.Where("vm1"), "hosts where vm1 is active")
	assert.Equal(t, w.state, s.State(w.host, "vm1"), "vm1's state at %s", w.host)
	assert.Empty(t, s.Violations(), "vm1 active in two places")

	ctx := context.Background()
	links, lerr := s.Linker.List(ctx)
	require.NoError(t, lerr)
	redirects, rerr := s.Router.Redirects(ctx)
	require.NoError(t, rerr)
	_, fencedA := s.Secure.Fencer.Fenced("vm1")
	fb, fencedB := s.Cloud.Fencer.Fenced("vm1")
	assert.Equal(t, w.srcFenced, fencedA, "source fence left")
	switch w.outcome {
	case migration.RolledBack:
		assert.False(t, fencedB, "target fence left after a rollback")
		assert.Empty(t, links, "links left after a rollback")
		assert.Empty(t, redirects, "redirects left after a rollback")
	case migration.StayedFenced:
		if assert.True(t, fencedB, "target not fenced") {
			assert.Empty(t, fb.AllowVia, "the target's fence must be a full block")
			assert.False(t, fb.AllowIPsec, "the target's fence must be a full block, IPsec included")
			assert.NotEmpty(t, fb.Peers, "the full block keeps the peers guard")
			assert.Subset(t, migrationtest.Peers, fb.Peers)
		}
		assert.True(t, slices.ContainsFunc(links, func(l tunnel.Link) bool { return l.ID == rep.Link.ID }),
			"the VM's link %s is kept for whoever finishes the migration (links %v)", rep.Link.ID, links)
	case migration.Completed:
		if rep.Link.RemoteDevice != "" {
			if assert.True(t, fencedB, "a device link keeps the target fenced, open via the link") {
				assert.Equal(t, rep.Link.RemoteDevice, fb.AllowVia[0])
				assert.Contains(t, fb.AllowVia, "site0")
			}
		} else if assert.True(t, fencedB, "an XFRM link keeps the target fenced, open to IPsec-protected traffic") {
			// Block 370 with an XFRM link: the VM talks only by what the
			// policies protect (its traffic with non-peers stays blocked),
			// and the host's own packets to the peers leave only if IPsec
			// transforms them.
			assert.True(t, fb.AllowIPsec, "the target's fence after 370: AllowIPsec")
			assert.Equal(t, migrationtest.Peers, fb.Peers, "the target's fence after 370 guards the peers") // (no XFRM with a moved subnet)
			assert.Equal(t, []string{"site0"}, fb.AllowVia, "the environment's secure devices only (the link has none)")
		}
		i := slices.IndexFunc(links, func(l tunnel.Link) bool { return l.ID == rep.Link.ID })
		if assert.GreaterOrEqual(t, i, 0, "the VM's link is gone") {
			assert.True(t, links[i].Active, "the VM's link is not active")
		}
	}
	checkJournal(t, j, rep, w)
}

// checkJournal: the record holds the outcome (or stays unfinished), and
// every step of the report is journaled before and after it ran.
func checkJournal(t *testing.T, j migration.Journal, rep *migration.Report, w want) {
	t.Helper()
	rec, entries, err := j.Load(context.Background(), rep.ID)
	require.NoError(t, err)
	if w.unfinished {
		assert.False(t, rec.Done(), "journal record %+v: want unfinished, for Recover", rec)
	} else {
		assert.Equal(t, rep.Outcome, rec.Outcome, "journal outcome")
		assert.Equal(t, rep.Reason, rec.Reason, "journal reason")
	}
	open := map[migration.Block]int{}
	var ended []string
	for _, e := range entries {
		switch e.Phase {
		case migration.PhaseBegin:
			open[e.Block]++
		case migration.PhaseDone, migration.PhaseFail:
			assert.Positive(t, open[e.Block], "block %d ended (%s) without a begin", e.Block, e.Phase)
			open[e.Block]--
			ended = append(ended, fmt.Sprintf("%d:%v", e.Block, e.Phase == migration.PhaseFail))
		}
	}
	var steps []string
	for _, s := range rep.Steps {
		steps = append(steps, fmt.Sprintf("%d:%v", s.Block, s.Err != ""))
	}
	if w.recovered {
		require.GreaterOrEqual(t, len(ended), len(steps), "journaled step ends %v, report's steps %v", ended, steps)
		ended = ended[len(ended)-len(steps):]
	} else {
		for b, n := range open {
			assert.Zero(t, n, "block %d began %d more times than it ended", b, n)
		}
	}
	assert.Equal(t, steps, ended, "journaled step ends (block:failed) vs the report's steps")
}

func containsCall(calls []string, sub string) bool {
	return slices.ContainsFunc(calls, func(c string) bool { return strings.Contains(c, sub) })
}
