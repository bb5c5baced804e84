package migration_test

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/tunnel"
)

// The steps of FIG. 3 in their exact order, for each branch.
func TestRunStepOrder(t *testing.T) {
	cases := []struct {
		name      string
		subnet    bool
		unsecured bool
		mode      migration.FenceMode
		link      tunnel.Kind
		want      []int
	}{
		{"vm only, nothing to reset", false, false, migration.FenceAtSwitchover, tunnel.WireGuard,
			[]int{310, 315, 325, 320, 335, 330, 345, 370, 355, 360, 375, 395}},
		{"vm only, unsecured conn", false, true, migration.FenceAtSwitchover, tunnel.WireGuard,
			[]int{310, 315, 325, 320, 335, 330, 345, 370, 355, 360, 365, 375, 395}},
		{"before-copy fence", false, true, migration.FenceBeforeCopy, tunnel.WireGuard,
			[]int{310, 315, 320, 325, 335, 330, 345, 355, 360, 365, 370, 375, 395}},
		{"subnet moved", true, true, migration.FenceAtSwitchover, tunnel.WireGuard,
			[]int{310, 315, 325, 320, 335, 340, 330, 345, 370, 355, 360, 365, 375, 380, 390, 395}},
		{"subnet moved, nothing to reset", true, false, migration.FenceBeforeCopy, tunnel.WireGuard,
			[]int{310, 315, 320, 325, 335, 340, 330, 345, 355, 360, 370, 375, 380, 390, 395}},
		{"xfrm link", false, true, migration.FenceAtSwitchover, tunnel.IPsec,
			[]int{310, 315, 325, 320, 335, 330, 345, 370, 355, 360, 365, 375, 395}},
		{"xfrm link, before-copy", false, true, migration.FenceBeforeCopy, tunnel.IPsec,
			[]int{310, 315, 320, 325, 335, 330, 345, 355, 360, 365, 370, 375, 395}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := migrationtest.NewSetup()
			p := s.Plan()
			if c.subnet {
				p = s.SubnetPlan()
			}
			p.FenceMode, p.Link = c.mode, c.link
			if c.unsecured {
				s.Cloud.Auditor.SetConns(plainConn, tlsConn)
			} else {
				s.Cloud.Auditor.SetConns(tlsConn)
			}
			m, j := journaled(t, s)
			rep, err := m.Run(context.Background(), p)
			require.NoError(t, err)
			// Steps are recorded when they end: the hook's steps (325,
			// 320, 335, 340) end inside 330.
			assert.Equal(t, c.want, blocks(rep))
			assert.Equal(t, c.subnet, rep.SubnetMoved)
			assert.Empty(t, rep.Warnings)
			checkEnd(t, s, j, rep, err, want{outcome: migration.Completed, host: "b", state: hypervisor.Running})
			if c.unsecured {
				assert.Equal(t, []conn.Conn{plainConn}, s.Cloud.Auditor.ResetConns(), "reset only the plaintext one")
			} else {
				assert.Empty(t, s.Cloud.Auditor.ResetConns(), "reset a secure connection")
			}
			links, err := s.Linker.List(context.Background())
			require.NoError(t, err)
			assert.Len(t, links, 1, "the VM's link only")
			if c.subnet {
				require.NotNil(t, rep.Redirect)
				if c.link == tunnel.WireGuard {
					spec, _ := s.Cloud.Fencer.Fenced("vm1")
					assert.Contains(t, spec.AllowVia, rep.Redirect.RemoteDevice, "the target fence lets the redirect tunnel through")
				}
				if assert.NotNil(t, rep.Converged) {
					assert.Equal(t, migrationtest.SiteVia, rep.Converged.Route.Via)
				}
				rd, err := s.Router.Redirects(context.Background())
				require.NoError(t, err)
				assert.Empty(t, rd, "redirect left")
			}
		})
	}
}

// Fail closed. Before the secure link is proven, the target's fence lets
// the VM talk through the link's own devices at most (they encrypt
// everything and carry nothing until the link is activated in the
// switchover hook); a device-less (XFRM) link keeps a full block until
// after the proof. The source is fenced while the VM leaves it.
func TestFailClosedOrder(t *testing.T) {
	for _, kind := range []tunnel.Kind{tunnel.WireGuard, tunnel.IPsec} {
		t.Run(string(kind), func(t *testing.T) {
			s := migrationtest.NewSetup()
			p := s.Plan()
			p.Link = kind
			rep, err := newMigrator(t, s).Run(context.Background(), p)
			require.NoError(t, err)
			calls := callStrings(s)
			at := func(sub string) int {
				i := slices.IndexFunc(calls, func(c string) bool { return strings.Contains(c, sub) })
				require.GreaterOrEqual(t, i, 0, "no call %q", sub)
				return i
			}
			dump := strings.Join(calls, "\n")
			// In the hook the link is activated beside the source's fence
			// (the VM is paused; the target is fenced): their order is
			// free, both come before the resume.
			migrate, fenceA, activate, resume, verify := at("hv:a.Migrate"), at("fence:a.Fence(vm1"), at("link.Activate"), at("hv:b.Resume"), at("link.Verify")
			assert.True(t, migrate < fenceA && migrate < activate && fenceA < resume && activate < resume && resume < verify,
				"want Migrate < {source fenced, link activated} < resume < verify; calls:\n%s", dump)
			allowed := map[string]bool{"": true, rep.Link.RemoteDevice: true, "site0": true}
			for i, c := range calls[:verify] {
				if v, ok := strings.CutPrefix(c, "fence:b.Fence(vm1 via="); ok {
					for _, d := range strings.Split(strings.TrimSuffix(v, ")"), ",") {
						assert.False(t, !allowed[d] || kind == tunnel.IPsec && d != "",
							"call %d, before the link was proven: %s (link device %q)\n%s", i, c, rep.Link.RemoteDevice, dump)
					}
				}
				assert.False(t, strings.HasPrefix(c, "fence:b.Lift"), "target fence lifted before the link was proven:\n%s", dump)
			}
			assert.Less(t, at("fence:b.Fence(vm1"), migrate, "incoming VM not fenced before the migration:\n%s", dump)
		})
	}
}

// A second Run for the same VM while one is going is refused.
func TestBusy(t *testing.T) {
	s := migrationtest.NewSetup()
	p := s.Plan()
	s.Cloud.Auditor.SetConns()
	// entered has room for the first Verify's word: it may come before
	// this goroutine waits for it (it did, under -race, and hung).
	entered, release := make(chan struct{}, 1), make(chan struct{})
	s.Config.Linkers[tunnel.WireGuard] = blockingLinker{s.Linker, entered, release}
	m := newMigrator(t, s)
	done := make(chan error)
	go func() { _, err := m.Run(context.Background(), p); done <- err }()
	<-entered
	_, err := m.Run(context.Background(), p)
	assert.ErrorIs(t, err, migration.ErrBusy, "second Run")
	close(release)
	require.NoError(t, <-done)
	// After it finished the VM can move again (back).
	back := p
	back.From, back.To = "cloud", "secure"
	s.Secure.Auditor.SetConns()
	_, err = m.Run(context.Background(), back)
	assert.NoError(t, err, "migrate back")
}

type blockingLinker struct {
	*migrationtest.Linker
	entered, release chan struct{}
}

func (b blockingLinker) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.release
	return b.Linker.Verify(ctx, id)
}

func TestEventsAndJournal(t *testing.T) {
	s := migrationtest.NewSetup()
	m, j := journaled(t, s)
	ev, cancel := m.Subscribe(256)
	rep, err := m.Run(context.Background(), s.Plan())
	cancel()
	require.NoError(t, err)
	var started, finished, progress int
	var first, last migration.Event
	for e := range ev {
		if first == nil {
			first = e
		}
		switch e.(type) {
		case migration.StepStarted:
			started++
		case migration.StepFinished:
			finished++
		case migration.MigrationProgress:
			progress++
		}
		last = e
	}
	assert.Equal(t, len(rep.Steps), started, "StepStarted events")
	assert.Equal(t, len(rep.Steps), finished, "StepFinished events")
	assert.NotZero(t, progress, "MigrationProgress events")
	if assert.IsType(t, migration.Started{}, first) {
		assert.Equal(t, rep.ID, first.(migration.Started).ID)
		assert.Equal(t, "vm1", first.(migration.Started).Plan.VM)
	}
	if assert.IsType(t, migration.Finished{}, last) {
		assert.Equal(t, migration.Completed, last.(migration.Finished).Outcome)
		assert.Same(t, rep, last.(migration.Finished).Report)
	}
	assert.Zero(t, m.Dropped())
	// Every step is journaled before and after, and the record is done.
	checkJournal(t, j, rep, want{outcome: migration.Completed})
}

func tunnelKind(s string) tunnel.Kind { return tunnel.Kind(s) }

// A plaintext flow the source saw but the target has not yet (its
// endpoints were in TCP backoff during the blackout) is reset at the
// target all the same; one both saw is reset once.
func TestAuditMergesSourceAndTargetLists(t *testing.T) {
	s := migrationtest.NewSetup()
	onlyAtSource := plainConn
	onlyAtSource.Remote = netip.MustParseAddrPort("10.2.0.20:40002")
	onlyAtSource.ID = 77
	both := plainConn
	both.ID = 5
	s.Secure.Auditor.SetConns(onlyAtSource, both, tlsConn)
	s.Cloud.Auditor.SetConns(plainConn)
	rep, err := newMigrator(t, s).Run(context.Background(), s.Plan())
	require.NoError(t, err)
	assert.Len(t, rep.Audit.Reset, 2, "one reset per flow")
	assert.Len(t, rep.Audit.Kept, 1, "the TLS one kept")
	var remotes []string
	for _, c := range s.Cloud.Auditor.ResetConns() {
		remotes = append(remotes, c.Remote.String())
		if c.Remote == onlyAtSource.Remote {
			assert.Zero(t, c.ID, "source entry ID passed to the target's auditor")
		}
	}
	slices.Sort(remotes)
	assert.Equal(t, []string{"10.2.0.20:40000", "10.2.0.20:40002"}, remotes, "target reset")
}

// A hypervisor that creates the incoming instance only as the migration
// begins (libvirt): the target is fenced in the switchover hook, before
// it can run; if that fails, the migration rolls back.
func TestLazyIncomingFencedInHook(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Hypervisor.LazyIncoming = true
	rep, err := newMigrator(t, s).Run(context.Background(), s.Plan())
	require.NoError(t, err)
	calls := callStrings(s)
	at := func(sub string) int {
		return slices.IndexFunc(calls, func(c string) bool { return strings.Contains(c, sub) })
	}
	fenceB, migrate, resume := at("fence:b.Fence(vm1 via="+rep.Link.RemoteDevice), at("hv:a.Migrate"), at("hv:b.Resume")
	assert.True(t, migrate >= 0 && migrate < fenceB && fenceB < resume,
		"want the target fenced inside the migration, before resume:\n%s", strings.Join(calls, "\n"))
	spec, ok := s.Cloud.Fencer.Fenced("vm1")
	assert.True(t, ok)
	assert.Equal(t, "tap-vm1", spec.Port, "the target's port is named as at the source")

	s = migrationtest.NewSetup()
	s.Cloud.Hypervisor.LazyIncoming = true
	s.Cloud.Fencer.FailOn("Fence", 1, errBoom)
	m, j := journaled(t, s)
	rep, err = m.Run(context.Background(), s.Plan())
	assert.ErrorIs(t, err, errBoom)
	checkEnd(t, s, j, rep, err, want{outcome: migration.RolledBack, host: "a", state: hypervisor.Running})
}

// A migration the hypervisor reports done, whose guest is gone from the
// target by the end (it crashed), is not "completed": the report says
// the VM was lost.
func TestVMLostAfterResumeIsReported(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Hypervisor.FailOn("Lookup", 3, hypervisor.ErrNotFound) // 1: at 310, 2: at 315, 3: at 395
	m, j := journaled(t, s)
	rep, err := m.Run(context.Background(), s.Plan())
	require.NotNil(t, rep)
	assert.Equal(t, migration.Abandoned, rep.Outcome)
	assert.Contains(t, rep.Reason, "no longer found")
	assert.ErrorIs(t, err, migration.ErrVMLost)
	assert.Equal(t, 1, s.Cloud.Hypervisor.Injected())
	checkJournal(t, j, rep, want{outcome: migration.Abandoned})
}

// The target's fence guards the peers (nothing to them leaves the target
// host but through the link) from block 315 on, after block 370 and after
// a stay-fenced end, with either kind of link. An XFRM link has no
// device: until 370 its fence is a full block (with the guard: Verify's
// probes and the ESP packets go to the hosts' underlay addresses, not to
// the peers); from 370 on it lets IPsec-protected traffic through
// (AllowIPsec), which also lets the guard pass what IPsec transforms.
func TestTargetFenceGuardsPeers(t *testing.T) {
	for _, link := range []tunnel.Kind{tunnel.WireGuard, tunnel.IPsec} {
		t.Run(string(link), func(t *testing.T) {
			s := migrationtest.NewSetup()
			p := s.Plan()
			p.Link = link
			var at315, atVerify fence.Spec
			s.Secure.Hypervisor.OnCall("Migrate", 1, func() { at315, _ = s.Cloud.Fencer.Fenced("vm1") })
			s.Linker.OnCall("Verify", 1, func() { atVerify, _ = s.Cloud.Fencer.Fenced("vm1") })
			m, err := migration.New(s.Config)
			require.NoError(t, err)
			_, err = m.Run(context.Background(), p)
			require.NoError(t, err)
			after, fenced := s.Cloud.Fencer.Fenced("vm1")
			for name, spec := range map[string]fence.Spec{"block 315": at315, "Verify (345)": atVerify} {
				assert.Equal(t, migrationtest.Peers, spec.Peers, "%s: guarded", name)
				assert.False(t, spec.AllowIPsec, "%s: IPsec-protected traffic let through before 370", name)
			}
			require.True(t, fenced, "the target stays fenced after 370")
			assert.Equal(t, migrationtest.Peers, after.Peers, "and guarded after block 370")
			if link == tunnel.IPsec {
				assert.Empty(t, at315.AllowVia, "an XFRM link: a full block until 370")
				assert.Empty(t, atVerify.AllowVia)
				assert.True(t, after.AllowIPsec, "an XFRM link after 370: IPsec-protected traffic only")
				assert.Equal(t, []string{"site0"}, after.AllowVia, "and the environment's secure devices")
			} else {
				assert.NotEmpty(t, after.AllowVia)
				assert.False(t, after.AllowIPsec, "a device link's fence does not trust XFRM")
			}

			// A migration that ends stayed-fenced keeps the guard with the
			// full block.
			s2 := migrationtest.NewSetup()
			s2.Linker.FailOn("Verify", 0, tunnel.ErrNotProven)
			m2, err := migration.New(s2.Config)
			require.NoError(t, err)
			p2 := s2.Plan()
			p2.Link = link
			_, err = m2.Run(context.Background(), p2)
			require.ErrorIs(t, err, migration.ErrStayedFenced)
			blocked, ok := s2.Cloud.Fencer.Fenced("vm1")
			require.True(t, ok)
			assert.Empty(t, blocked.AllowVia)
			assert.False(t, blocked.AllowIPsec)
			assert.Equal(t, migrationtest.Peers, blocked.Peers)
		})
	}
}
