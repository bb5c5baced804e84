package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// remoteSetup puts every host's backends of a migrationtest.Setup (the
// in-memory fakes) behind an agent of its own, over mutual TLS on
// loopback, and builds the Migrator's Environments from the clients:
// package migration sees contracts, nothing else.
func remoteSetup(t *testing.T, s *migrationtest.Setup) { remoteSetupB(t, s) }

// remoteSetupB is remoteSetup for tests and benchmarks.
func remoteSetupB(t testing.TB, s *migrationtest.Setup) { remoteSetupWith(t, s, nil) }

// remoteSetupWith is remoteSetup with extra options for the agent of
// each host ("host-a", "host-b", "core"), if extra is not nil.
func remoteSetupWith(t testing.TB, s *migrationtest.Setup, extra func(name string) []agent.Option) {
	t.Helper()
	p := newPKI(t)
	ctx := context.Background()
	now := time.Now()
	client := func(name string, opts ...agent.Option) *agent.Client {
		id, err := p.ca.Issue(agentpki.RoleAgent, name, now.Add(-time.Minute), now.Add(time.Hour))
		require.NoError(t, err)
		if extra != nil {
			opts = append(opts, extra(name)...)
		}
		return p.dialAs(t, p.serveAs(t, id, opts...), p.ctl.TLS, name)
	}
	for env, local := range map[string]migrationtest.Env{"secure": s.Secure, "cloud": s.Cloud} {
		e := s.Config.Environments[env]
		var f fence.Fencer = local.Fencer
		c := client("host-"+e.Host, agent.WithHypervisor(local.Hypervisor), agent.WithFencer(f), agent.WithConnAuditor(local.Auditor))
		rf, err := c.Fencer(ctx)
		require.NoError(t, err)
		e.Hypervisor, e.Fencer, e.Auditor = c.Hypervisor(), rf, c.ConnAuditor()
		if e.Core != nil {
			core := *e.Core
			core.Routing = client("core", agent.WithRouteWatcher(s.Router)).RouteWatcher()
			e.Core = &core
		}
		s.Config.Environments[env] = e
	}
}

// TestMigratorOverAgents: the Migrator, unchanged, moves a VM between
// hosts whose backends are behind agents: every branch (both fence
// modes, both link kinds, subnet moved or not) completes with the VM
// running at the target only, never active in two places; the
// connections are audited and reset through the target's agent.
func TestMigratorOverAgents(t *testing.T) {
	for _, mode := range []migration.FenceMode{migration.FenceAtSwitchover, migration.FenceBeforeCopy} {
		for _, subnet := range []bool{false, true} {
			name := string(mode)
			if subnet {
				name += "/subnet"
			}
			t.Run(name, func(t *testing.T) {
				s := migrationtest.NewSetup()
				plain := conn.Conn{Proto: conn.TCP, State: "ESTABLISHED"}
				plain.Local, plain.Remote = mustAddrPort("10.1.0.10:7777"), mustAddrPort("10.2.0.20:40000")
				s.Cloud.Auditor.SetConns(plain)
				remoteSetup(t, s)
				m, err := migration.New(s.Config)
				require.NoError(t, err)
				p := s.Plan()
				if subnet {
					p = s.SubnetPlan()
				}
				p.FenceMode = mode
				rep, err := m.Run(context.Background(), p)
				require.NoError(t, err)
				assert.Equal(t, migration.Completed, rep.Outcome, rep.Reason)
				assert.Equal(t, []string{"b"}, s.World.Where("vm1"))
				assert.Equal(t, hypervisor.Running, s.World.State("b", "vm1"))
				assert.Empty(t, s.World.Violations())
				assert.Equal(t, []conn.Conn{plain}, s.Cloud.Auditor.ResetConns(), "reset through the target's agent")
				_, srcFenced := s.Secure.Fencer.Fenced("vm1")
				assert.False(t, srcFenced, "the source fence was lifted")
				assert.Equal(t, subnet, rep.SubnetMoved)
				if subnet {
					assert.NotNil(t, rep.Converged, "the core's agent saw the route")
				}
			})
		}
	}
}

// TestMigratorOverAgentsHookFails: a failure inside the switchover hook
// (the source's agent refuses the fence) rolls back over the network:
// the VM runs at the source, nothing is left fenced.
func TestMigratorOverAgentsHookFails(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Secure.Fencer.FailOn("Fence", 0, errBoom)
	remoteSetup(t, s)
	m, err := migration.New(s.Config)
	require.NoError(t, err)
	rep, err := m.Run(context.Background(), s.Plan())
	require.Error(t, err)
	assert.Equal(t, migration.RolledBack, rep.Outcome)
	assert.Equal(t, []string{"a"}, s.World.Where("vm1"))
	assert.Equal(t, hypervisor.Running, s.World.State("a", "vm1"))
	assert.Empty(t, s.World.Violations())
	_, fenced := s.Secure.Fencer.Fenced("vm1")
	assert.False(t, fenced)
	_, fenced = s.Cloud.Fencer.Fenced("vm1")
	assert.False(t, fenced)
}

// TestBatchOverAgents: RunBatch, unchanged, moves three VMs of a subnet
// at once through the agents (concurrent switchover hooks over the
// network): all at the target, the members' routes in the core's agent
// gone after convergence.
func TestBatchOverAgents(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	b := s.Batch(3)
	remoteSetup(t, s)
	m, err := migration.New(s.Config)
	require.NoError(t, err)
	rep, err := m.RunBatch(ctx, b)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rep.Outcome, rep.Reason)
	for _, r := range rep.Reports {
		assert.Equal(t, migration.Completed, r.Outcome, r.Reason)
		assert.Equal(t, []string{"b"}, s.World.Where(r.VM))
	}
	assert.NotNil(t, rep.Converged, "the core's agent saw the route")
	rd, err := s.Router.Redirects(ctx)
	require.NoError(t, err)
	assert.Empty(t, rd)
	assert.Empty(t, s.World.Violations())
}
