package agent_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration/migrationtest"
)

var errBoom = errors.New("boom")

// hvPair serves the fake hypervisors of hosts a and b behind two agents
// (host-a, host-b) and returns the controller's remote handles.
func hvPair(t *testing.T) (*migrationtest.World, hypervisor.Hypervisor, hypervisor.Hypervisor) {
	t.Helper()
	p := newPKI(t)
	w := migrationtest.NewWorld()
	w.AddVM("a", "vm1", "tap-vm1", "52:54:00:00:00:01")
	now := time.Now()
	agentB, err := p.ca.Issue(agentpki.RoleAgent, "host-b", now.Add(-time.Minute), now.Add(time.Hour))
	require.NoError(t, err)
	addrA := p.serve(t, agent.WithHypervisor(w.Hypervisor("a")))
	addrB := p.serveAs(t, agentB, agent.WithHypervisor(w.Hypervisor("b")))
	return w, p.dial(t, addrA, p.ctl.TLS).Hypervisor(), p.dialAs(t, addrB, p.ctl.TLS, "host-b").Hypervisor()
}

// TestRemoteMigrate: a migration between two agents, driven from here:
// progress arrives, the hook runs here while the source is paused, the
// target stays paused until the controller resumes it, and the VM is
// never active in two places.
func TestRemoteMigrate(t *testing.T) {
	w, a, b := hvPair(t)
	ctx := context.Background()
	vm, err := a.Lookup(ctx, "vm1")
	require.NoError(t, err)
	assert.Equal(t, hypervisor.Running, vm.State)
	to, err := b.PrepareIncoming(ctx, vm)
	require.NoError(t, err)
	var progress atomic.Int32
	var atHook []hypervisor.State
	st, err := a.Migrate(ctx, "vm1", to, hypervisor.MigrateOptions{
		MaxDowntime: 30 * time.Millisecond,
		OnProgress:  func(hypervisor.Progress) { progress.Add(1) },
		AtSwitchover: func(context.Context) error {
			atHook = []hypervisor.State{w.State("a", "vm1"), w.State("b", "vm1")}
			return nil
		},
	})
	require.NoError(t, err)
	assert.Equal(t, []hypervisor.State{hypervisor.Paused, hypervisor.Incoming}, atHook, "source paused, target not yet, during the hook")
	assert.NotZero(t, progress.Load(), "progress reached the controller")
	assert.NotZero(t, st.Bytes)
	assert.False(t, st.Switchover.IsZero())
	assert.Equal(t, hypervisor.Paused, w.State("b", "vm1"), "no agent resumes a target on its own")
	require.NoError(t, b.Resume(ctx, "vm1"))
	assert.Equal(t, []string{"b"}, w.Where("vm1"))
	assert.Empty(t, w.Violations())
	_, err = a.Lookup(ctx, "vm1")
	assert.ErrorIs(t, err, hypervisor.ErrNotFound, "the sentinel crosses the network")
}

// TestRemoteHookFails: the controller's hook fails: the agent's backend
// cancels, the VM runs at the source, and the error says both what the
// hypervisor says (ErrSwitchoverHook) and what the hook said.
func TestRemoteHookFails(t *testing.T) {
	w, a, b := hvPair(t)
	ctx := context.Background()
	vm, err := a.Lookup(ctx, "vm1")
	require.NoError(t, err)
	to, err := b.PrepareIncoming(ctx, vm)
	require.NoError(t, err)
	_, err = a.Migrate(ctx, "vm1", to, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error { return errBoom }})
	assert.ErrorIs(t, err, hypervisor.ErrSwitchoverHook)
	assert.ErrorIs(t, err, errBoom)
	assert.Equal(t, hypervisor.Running, w.State("a", "vm1"))
	assert.Equal(t, []string{"a"}, w.Where("vm1"))
	_, err = a.Migrate(ctx, "vm1", to, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error { panic("hook bug") }})
	assert.ErrorIs(t, err, hypervisor.ErrSwitchoverHook)
	assert.ErrorContains(t, err, "hook bug")
	assert.Equal(t, []string{"a"}, w.Where("vm1"))
}

// TestControllerLostDuringSwitchover: the controller goes away while
// the source is paused waiting for its hook: the agent cancels the
// migration and the VM resumes at the source; the target never runs.
func TestControllerLostDuringSwitchover(t *testing.T) {
	w, a, b := hvPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	vm, err := a.Lookup(ctx, "vm1")
	require.NoError(t, err)
	to, err := b.PrepareIncoming(ctx, vm)
	require.NoError(t, err)
	_, err = a.Migrate(ctx, "vm1", to, hypervisor.MigrateOptions{AtSwitchover: func(context.Context) error {
		cancel() // the controller dies inside its hook
		time.Sleep(100 * time.Millisecond)
		return nil
	}})
	require.Error(t, err)
	require.Eventually(t, func() bool { return w.State("a", "vm1") == hypervisor.Running }, 5*time.Second, 10*time.Millisecond,
		"the VM must resume at the source")
	assert.Equal(t, []string{"a"}, w.Where("vm1"))
	assert.Empty(t, w.Violations())
}

// TestMigrateRefusesBadInput: a stream that does not start with a valid
// start message is refused before the backend is called.
func TestMigrateRefusesBadInput(t *testing.T) {
	p := newPKI(t)
	w := migrationtest.NewWorld()
	w.AddVM("a", "vm1", "tap-vm1", "52:54:00:00:00:01")
	addr := p.serve(t, agent.WithHypervisor(w.Hypervisor("a")))
	raw := agentpb.NewHypervisorClient(rawConn(t, p, addr))
	ctx := context.Background()
	for _, c := range []struct {
		first *agentpb.MigrateCall
		field string
	}{
		{&agentpb.MigrateCall{Call: &agentpb.MigrateCall_Switchover{Switchover: &agentpb.SwitchoverReply{}}}, "must be start"},
		{&agentpb.MigrateCall{Call: &agentpb.MigrateCall_Start{Start: &agentpb.MigrateStart{Name: "../x", To: &agentpb.Endpoint{Uri: "fake://b/vm1"}}}}, "start.name"},
		{&agentpb.MigrateCall{Call: &agentpb.MigrateCall_Start{Start: &agentpb.MigrateStart{Name: "vm1"}}}, "to.uri is empty"},
		{&agentpb.MigrateCall{Call: &agentpb.MigrateCall_Start{Start: &agentpb.MigrateStart{Name: "vm1", To: &agentpb.Endpoint{Uri: "fake://b/vm1"}, MaxDowntimeNanos: -1}}}, "MaxDowntime"},
	} {
		s, err := raw.Migrate(ctx)
		require.NoError(t, err)
		require.NoError(t, s.Send(c.first))
		_, err = s.Recv()
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.ErrorContains(t, err, c.field)
	}
	assert.Equal(t, hypervisor.Running, w.State("a", "vm1"))
	for _, c := range w.Calls() {
		assert.NotEqual(t, "Migrate", c.Method, "a refused stream reached the backend")
	}
}
