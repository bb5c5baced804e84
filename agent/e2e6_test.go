package agent_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// TestMigratorOverAgentsDualStack: FIG. 3 end to end, as
// TestMigratorOverAgentsRealBackends, with a dual-stack VM (10.1.0.10 and
// fd00:1::10) and peer (10.1.0.20 and fd00:1::20): the plan's addresses
// and peers of both families. The VM ends at B only; the peer reaches it
// over both families through the link; nothing of either subnet crosses
// the wan in clear (a control leak of each family proves the capture
// counts); the source keeps no fence.
func TestMigratorOverAgentsDualStack(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	nb := l.Prefix + "-nbb"
	require.NoError(t, l.AddHost(nb))
	require.NoError(t, l.Endpoint(nb, l.B, "nb0", "br0", "10.1.0.30/24", lab.Gateway))
	vm6, peer6 := netip.MustParseAddr("fd00:1::10"), netip.MustParseAddr("fd00:1::20")
	wanC0v6 := netip.MustParseAddr("fd01:1::2")
	for _, a := range []struct{ ns, dev, addr string }{
		{l.A, "br0", "fd00:1::1/64"}, {l.B, "br0", "fd00:1::1/64"},
		{l.VM, "eth0", "fd00:1::10/64"}, {l.Peer, "eth0", "fd00:1::20/64"},
	} {
		require.NoError(t, lab.AddAddr(a.ns, a.dev, a.addr))
	}
	for _, ns := range []string{l.VM, l.Peer} {
		require.NoError(t, lab.AddRoute(ns, "::/0", "fd00:1::1", ""))
	}
	// An IPv6 path A - core - wan in clear too (the link must keep the
	// subnet's traffic off it).
	for _, a := range []struct{ ns, dev, addr string }{
		{l.A, "up0", "fd00:ff::1/64"}, {l.Core, "a0", "fd00:ff::2/64"},
		{l.Core, "wan0", "fd01:1::1/64"}, {l.WAN, "c0", "fd01:1::2/64"},
	} {
		require.NoError(t, lab.AddAddr(a.ns, a.dev, a.addr))
	}
	require.NoError(t, lab.AddRoute(l.A, "::/0", "fd00:ff::2", ""))
	require.NoError(t, lab.AddRoute(l.Core, "::/0", "fd01:1::2", ""))
	for _, ns := range []string{l.A, l.B, l.Core} {
		require.NoError(t, lab.Sysctl(ns, "net/ipv6/conf/all/forwarding", "1"))
	}
	w := newRealAgents(t, l, nil)
	hv, clients, m := w.hv, w.clients, w.m
	ctx := context.Background()

	subnet6 := netip.MustParsePrefix("fd00:1::/64")
	wan, err := lab.StartCaptureWith(l.WAN, lab.CaptureOptions{IngressOnly: true, Classify: &lab.Classifier{
		Watch:    []netip.Prefix{lab.VMSubnet, subnet6},
		Underlay: []netip.Addr{lab.AUplink, lab.CoreToA, lab.CoreWAN, lab.WANCore, lab.WANB, lab.BUnderlay},
	}})
	require.NoError(t, err)
	t.Cleanup(func() { wan.Stop() })
	// Controls: one clear packet of each family with the VM's subnet.
	require.NoError(t, lab.SendControl(l.Peer, lab.BUnderlay, []byte("sealift-control")))
	require.Eventually(t, func() bool { return wan.Snapshot().Watched == 1 }, 5*time.Second, 10*time.Millisecond,
		"the IPv4 control leak was not counted: the capture could not fail")
	_, _ = lab.Ping(l.Peer, wanC0v6, 1, 0) // from the peer's IPv6 address to the wan, in clear
	require.Eventually(t, func() bool { return wan.Snapshot().Watched == 2 }, 5*time.Second, 10*time.Millisecond,
		"the IPv6 control leak was not counted: the capture could not fail")
	time.Sleep(200 * time.Millisecond)
	base := wan.Snapshot()
	require.Equal(t, 2, base.Watched, "exactly the controls: %v", base.Samples)

	for _, dst := range []netip.Addr{lab.VMAddr, vm6} {
		require.NoError(t, lab.WaitReachable(l.Peer, dst, 10*time.Second), "the VM answers at A first (%s)", dst)
	}
	rep, err := m.Run(ctx, migration.Plan{VM: "vm1", From: "a", To: "b", Link: tunnel.WireGuard,
		Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32), netip.PrefixFrom(vm6, 128)},
		Peers: []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32), netip.PrefixFrom(peer6, 128)}})
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rep.Outcome, rep.Reason)
	assert.Equal(t, l.B, hv.At(), "the VM runs at B")
	for _, dst := range []netip.Addr{lab.VMAddr, vm6} {
		n, err := lab.Ping(l.Peer, dst, 5, 2*time.Second)
		require.NoError(t, err)
		assert.Equal(t, 5, n, "the peer reaches the VM at %s through the link", dst)
	}
	n, err := lab.Ping(l.VM, peer6, 5, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "the VM reaches the peer over IPv6 through the link")
	st := wan.Snapshot()
	assert.Equal(t, base.Watched, st.Watched, "a packet with the VM's subnet crossed the wan in clear: %v", st.Samples)
	assert.NotZero(t, st.ByKind["wireguard"], "the link's traffic was seen on the wan")
	assert.Zero(t, st.Dropped)
	fa, err := clients["host-a"].Fencer(ctx)
	require.NoError(t, err)
	fs, err := fa.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, fs, "the source keeps a fence")
}
