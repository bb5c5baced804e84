package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// TestBatchCommand: `sealift batch`'s flags make the batch, its members'
// concurrent events are lines led by their run's ID, the batch's end is
// a line of its own, the reports and the batch's line go to stdout, and
// the exit code is 0 when every member completed (one rolled back: 3).
// The Migrator is over the in-memory fakes (agents are main_test's).
func TestBatchCommand(t *testing.T) {
	run := func(fail bool) (int, string, string) {
		s := migrationtest.NewSetup()
		s.Batch(2) // vm2 at a, the core's route; the flags say the batch
		if fail {
			s.Secure.Hypervisor.FailOn("Migrate", 2, hypervisor.ErrMigration)
		}
		m, err := migration.New(s.Config)
		require.NoError(t, err)
		fs, f := newFlags("batch")
		require.NoError(t, fs.Parse([]string{"-from", "secure", "-to", "cloud", "-subnet", migrationtest.Subnet.String(),
			"-via", migrationtest.SiteVia.String(), "-parallel", "1", "-peer", migrationtest.Peers[1].String(),
			"-vm", "vm1=10.1.0.10/32", "-vm", "vm2=10.1.0.11/32"}))
		var out, errs bytes.Buffer
		code := runBatch(context.Background(), m, f, &out, &errs, false)
		return code, out.String(), errs.String()
	}
	code, out, errs := run(false)
	require.Equal(t, exitOK, code, "stdout:\n%s\nstderr:\n%s", out, errs)
	var id string
	for _, l := range strings.Split(strings.TrimSpace(errs), "\n") {
		before, rest, ok := strings.Cut(l, ": ")
		require.True(t, ok, "a line without its run's ID: %q", l)
		if strings.HasPrefix(rest, "batch finished: ") {
			id = before
		}
	}
	require.NotEmpty(t, id, "no batch end line:\n%s", errs)
	assert.Contains(t, errs, id+"-1: block 330 migrate done")
	assert.Contains(t, errs, id+"-2: block 330 migrate done")
	assert.Contains(t, errs, id+": batch finished: "+id+" completed (members "+id+"-1, "+id+"-2)")
	assert.Contains(t, out, "vm1 "+id+"-1: completed")
	assert.Contains(t, out, "vm2 "+id+"-2: completed")
	assert.Contains(t, out, "batch "+id+": completed")

	code, out, errs = run(true)
	assert.Equal(t, exitRolledBack, code, "stdout:\n%s\nstderr:\n%s", out, errs)
	assert.Contains(t, out, ": partial")
}
