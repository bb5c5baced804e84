package agent_test

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nshv"
	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// TestMigratorOverAgentsRealBackends: FIG. 3 end to end with every host's
// backends behind its agent, over mutual TLS: real nftables fences,
// conntrack, WireGuard link ends made on their hosts (tunnel.Hosts at the
// controller), and internal/nshv's VM (a namespace whose port moves
// between the hosts' bridges). The controller holds no key and no
// device. The VM ends at B only, its peer at A reaches it through the
// link, nothing of the VM's subnet crosses the wan in clear (a control
// leak proves the capture counts), and the source keeps no fence. The
// controller's and the agents' metrics, scraped over HTTP, say so too.
func TestMigratorOverAgentsRealBackends(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	// An idle neighbour on B's bridge keeps its carrier up while the
	// incoming port is replaced (see ipsec's migrate_guest_test).
	nb := l.Prefix + "-nbb"
	require.NoError(t, l.AddHost(nb))
	require.NoError(t, l.Endpoint(nb, l.B, "nb0", "br0", "10.1.0.30/24", lab.Gateway))
	now := time.Now()
	agentMetrics := map[string]string{} // each agent's /metrics URL
	w := newRealAgents(t, l, func(name string) []agent.Option {
		reg := prometheus.NewPedanticRegistry()
		agentMetrics[name] = serveMetrics(t, reg)
		return []agent.Option{agent.WithMetrics(reg)}
	})
	hv, clients, m := w.hv, w.clients, w.m
	ctx := context.Background()
	creg := prometheus.NewPedanticRegistry()
	ctl, err := metrics.New(creg)
	require.NoError(t, err)
	wctx, stopWatch := context.WithCancel(ctx)
	watched := ctl.Watch(wctx, m)
	ctlMetrics := serveMetrics(t, creg)

	wan, err := lab.StartCaptureWith(l.WAN, lab.CaptureOptions{IngressOnly: true, Classify: &lab.Classifier{
		Watch:    []netip.Prefix{lab.VMSubnet},
		Underlay: []netip.Addr{lab.AUplink, lab.CoreToA, lab.CoreWAN, lab.WANCore, lab.WANB, lab.BUnderlay},
	}})
	require.NoError(t, err)
	t.Cleanup(func() { wan.Stop() })
	require.NoError(t, lab.SendControl(l.Peer, lab.BUnderlay, []byte("sealift-control")))
	require.Eventually(t, func() bool { return wan.Snapshot().Watched == 1 }, 5*time.Second, 10*time.Millisecond,
		"the control leak was not counted: the capture could not fail")
	time.Sleep(100 * time.Millisecond)
	base := wan.Snapshot()
	require.Equal(t, 1, base.Watched, "exactly the control: %v", base.Samples)

	n, err := lab.Ping(l.Peer, lab.VMAddr, 3, time.Second)
	require.NoError(t, err)
	require.Equal(t, 3, n, "the VM answers at A first")
	rep, err := m.Run(ctx, migration.Plan{VM: "vm1", From: "a", To: "b", Link: tunnel.WireGuard,
		Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}, Peers: []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32)}})
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rep.Outcome, rep.Reason)
	assert.Equal(t, l.B, hv.At(), "the VM runs at B")
	n, err = lab.Ping(l.Peer, lab.VMAddr, 5, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "the peer reaches the VM through the link")
	st := wan.Snapshot()
	assert.Equal(t, base.Watched, st.Watched, "a packet with the VM's subnet crossed the wan in clear: %v", st.Samples)
	assert.Equal(t, base.ByKind["unknown"], st.ByKind["unknown"], "frames of no expected kind on the wan: %v", st.Samples)
	assert.NotZero(t, st.ByKind["wireguard"], "the link's traffic was seen on the wan")
	assert.Zero(t, st.Dropped)
	fa, err := clients["host-a"].Fencer(ctx)
	require.NoError(t, err)
	fs, err := fa.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, fs, "the source keeps a fence")
	t.Logf("switchover hook %v, downtime %v, link %s/%s", rep.Migration.SwitchoverDone.Sub(rep.Migration.Switchover),
		rep.Migration.Downtime, rep.Link.SecureDevice, rep.Link.RemoteDevice)

	// The metrics, scraped over HTTP as Prometheus would: the controller's
	// (every event observed once the watch has drained) and each agent's.
	stopWatch()
	<-watched
	c := scrapeMetrics(t, ctlMetrics)
	assert.Equal(t, 1.0, val(t, c, `sealift_migrations_total{fence_mode="at-switchover",link="wireguard",outcome="completed"}`))
	assert.Equal(t, 0.0, val(t, c, `sealift_migrations_in_progress`))
	assert.Equal(t, 1.0, val(t, c, `sealift_migration_downtime_seconds_count`))
	assert.InDelta(t, rep.Migration.Downtime.Seconds(), val(t, c, `sealift_migration_downtime_seconds_sum`), 1e-9, "the hypervisor's downtime")
	assert.InDelta(t, rep.Migration.SwitchoverDone.Sub(rep.Migration.Switchover).Seconds(),
		val(t, c, `sealift_migration_switchover_hook_seconds_sum`), 1e-9, "the hook")
	assert.Equal(t, float64(rep.Migration.Bytes), val(t, c, `sealift_migration_bytes_total`))
	assert.Equal(t, 0.0, val(t, c, `sealift_migration_remaining_bytes`))
	for _, st := range rep.Steps {
		assert.Equal(t, 1.0, val(t, c, fmt.Sprintf(`sealift_step_duration_seconds_count{block="%d",step="%s"}`, st.Block, st.Name)), "block %d", st.Block)
	}
	assert.Equal(t, float64(len(rep.Audit.Kept)), val(t, c, `sealift_connections_kept_total`))
	sa, sb := scrapeMetrics(t, agentMetrics["host-a"]), scrapeMetrics(t, agentMetrics["host-b"])
	assert.Equal(t, 1.0, val(t, sa, `sealift_agent_rpc_duration_seconds_count{code="OK",method="/sealift.agent.v1.Hypervisor/Migrate"}`), "A's migration stream")
	assert.Equal(t, 0.0, val(t, sb, `sealift_agent_rpc_duration_seconds_count{code="OK",method="/sealift.agent.v1.Hypervisor/Migrate"}`))
	assert.Equal(t, 0.0, val(t, sa, `sealift_agent_fences`), "A lifted its fence")
	assert.Equal(t, 1.0, val(t, sb, `sealift_agent_fences`), "B keeps the VM fenced, open via the link")
	assert.Equal(t, 1.0, val(t, sa, `sealift_agent_link_ends{active="true",kind="wireguard",role="secure"}`))
	assert.Equal(t, 1.0, val(t, sb, `sealift_agent_link_ends{active="true",kind="wireguard",role="remote"}`))
	for _, dir := range []string{"rx", "tx"} {
		k := fmt.Sprintf(`sealift_agent_link_bytes_total{direction="%s",kind="wireguard",link="%s"}`, dir, rep.Link.ID)
		assert.Greater(t, val(t, sb, k), 5*84.0, "B's end: the pings crossed it (%s)", k)
	}
	assert.InDelta(t, float64(time.Now().Unix()), val(t, sb, fmt.Sprintf(`sealift_agent_link_last_handshake_timestamp_seconds{link="%s"}`, rep.Link.ID)),
		float64(time.Since(now)/time.Second)+2, "B's end: a handshake during the test")
}

// realAgents is nshv's VM (vm1) running at A, an agent per host ("host-a"
// in A, "host-b" in B) over mutual TLS on loopback with real nft fences,
// conntrack and WireGuard link ends, and a Migrator over their clients
// (environments "a" and "b", hosts named as the controller knows them).
type realAgents struct {
	hv      *nshv.Cluster
	clients map[string]*agent.Client
	m       *migration.Migrator
}

// newRealAgents builds realAgents in l; extra, if set, adds options to
// each agent by name.
func newRealAgents(t *testing.T, l *lab.Lab, extra func(name string) []agent.Option) realAgents {
	t.Helper()
	hv := nshv.New("vm1", l.VM, "eth0")
	a, b := hv.Host(l.A, "vm0", "br0"), hv.Host(l.B, "vmb0", "br0")
	require.NoError(t, hv.Start(a))
	p := newPKI(t)
	now := time.Now()
	ctx := context.Background()
	clients := map[string]*agent.Client{}
	for name, host := range map[string]struct {
		ns string
		hv hypervisor.Hypervisor
	}{"host-a": {l.A, a}, "host-b": {l.B, b}} {
		id, err := p.ca.Issue(agentpki.RoleAgent, name, now.Add(-time.Minute), now.Add(time.Hour))
		require.NoError(t, err)
		opts := []agent.Option{agent.WithHypervisor(host.hv), agent.WithFencer(nft.New(nft.WithHost(host.ns))),
			agent.WithConnAuditor(conntrack.New(conntrack.WithHost(host.ns))),
			agent.WithLinkEnd(wireguard.NewEnd(host.ns, wireguard.WithBackend(wireguard.Userspace)))}
		if extra != nil {
			opts = append(opts, extra(name)...)
		}
		clients[name] = p.dialAs(t, p.serveAs(t, id, opts...), p.ctl.TLS, name)
	}
	env := func(name string, underlay netip.Addr) migration.Environment {
		c := clients[name]
		f, err := c.Fencer(ctx)
		require.NoError(t, err)
		return migration.Environment{Hypervisor: c.Hypervisor(), Fencer: f, Auditor: c.ConnAuditor(), Host: name, Underlay: underlay}
	}
	m, err := migration.New(migration.Config{
		// Hosts are named as the controller knows them, not by namespace:
		// each agent acts in its own.
		Environments: map[string]migration.Environment{"a": env("host-a", lab.AUplink), "b": env("host-b", lab.BUnderlay)},
		Linkers: map[tunnel.Kind]tunnel.SecureLinker{tunnel.WireGuard: tunnel.NewHosts(map[string]tunnel.LinkEnd{
			"host-a": clients["host-a"].LinkEnd(), "host-b": clients["host-b"].LinkEnd()})},
	})
	require.NoError(t, err)
	t.Cleanup(func() { m.Close() })
	return realAgents{hv: hv, clients: clients, m: m}
}
