package migration_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/tunnel"
)

type crashCase struct {
	fake, method string
	want         migration.Outcome
	host         string
}

// A controller that dies mid-run leaves an unfinished journal; a new
// Migrator over the same bbolt file finishes it, in every branch.
func TestCrashRecovery(t *testing.T) {
	cases := []crashCase{
		{"link", "Prepare", migration.RolledBack, "a"},
		{"fence:a", "Fence", migration.RolledBack, "a"},       // in the switchover hook, or 320 before copy
		{"link", "Activate", migration.RolledBack, "a"},       // source paused, or the redirect at 315
		{"hv:b", "Resume", migration.Completed, "b"},          // VM complete at b, paused
		{"link", "Verify", migration.Completed, "b"},          // VM running at b, fenced
		{"audit:b", "Reset", migration.Completed, "b"},        //
		{"routing", "Wait", migration.Completed, "b"},         // subnet: redirect in place
		{"routing", "AddRedirect", migration.RolledBack, "a"}, // in the hook
	}
	for _, c := range cases {
		for _, v := range variants() {
			if !v.subnet && c.fake == "routing" || v.link == tunnel.WireGuard && !v.subnet {
				continue // WireGuard: with a moved subnet; XFRM: without (TestXFRMRedirectRefused)
			}
			t.Run(c.fake+"."+c.method+"/"+v.String(), func(t *testing.T) { crashAndRecover(t, c, v) })
		}
	}
}

func crashAndRecover(t *testing.T, c crashCase, v variant) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "journal.db")
	s := migrationtest.NewSetup()
	s.Cloud.Auditor.SetConns(plainConn)
	j, err := migration.OpenBoltJournal(path)
	require.NoError(t, err)
	s.Config.Journal = j
	p := v.plan(s)
	f := faultsOf(s)[c.fake]
	f.CrashOn(c.method, 1)
	m1 := newMigrator(t, s)
	done := make(chan struct{})
	go func() { defer close(done); m1.Run(ctx, p) }()
	<-done
	require.Equal(t, 1, f.Injected(), "the crash happened")
	require.NoError(t, m1.Close()) // the process is gone; its file lock too

	j2, err := migration.OpenBoltJournal(path)
	require.NoError(t, err)
	defer j2.Close()
	un, err := j2.Unfinished(ctx)
	require.NoError(t, err)
	require.Len(t, un, 1, "unfinished after the crash")
	f.ClearFaults()
	s.Config.Journal = j2
	m2 := newMigrator(t, s)
	reps, err := m2.Recover(ctx)
	require.Len(t, reps, 1, "recovered (err %v)", err)
	w := want{outcome: c.want, host: c.host, state: hypervisor.Running, recovered: true}
	checkEnd(t, s, j2, reps[0], err, w)
	un, err = j2.Unfinished(ctx)
	require.NoError(t, err)
	assert.Empty(t, un, "still unfinished")
	if c.want == migration.Completed {
		rd, err := s.Router.Redirects(ctx)
		require.NoError(t, err)
		assert.Empty(t, rd, "redirect left after rolling forward")
		links, err := s.Linker.List(ctx)
		require.NoError(t, err)
		assert.Len(t, links, 1, "the redirect tunnel is closed, the VM's link kept")
	}
	// Nothing more to do the second time.
	reps, err = m2.Recover(ctx)
	assert.NoError(t, err, "second Recover")
	assert.Empty(t, reps, "second Recover")
}
