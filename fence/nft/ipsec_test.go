package nft

import (
	"context"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/lab"
)

var secpathRE = regexp.MustCompile(`meta (secpath|ipsec) missing jump`)

// AllowIPsec on this machine's kernel, which has XFRM policies but no
// ESP: the rules load ("rt ipsec exists" in the VM's inet chain and in
// the inet guard, "meta secpath" only in the jumps from the input and
// forward hooks, which the kernel requires), replace in place both ways,
// and plain packets are dropped: the VM's to peer2 (a peer) and to the
// peer on its LAN that A routes, peer2's to the VM, the host's own to a
// peer. That IPsec-protected packets pass needs ESP: ipsec's
// TestMigratorGuestXFRM* in the full-kernel guest.
func TestAllowIPsecLoadsAndDropsPlain(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		lab.Missing(t, "nft (apt: nftables)")
	}
	l := lab.New(t)
	ctx := context.Background()
	f := New(WithHost(l.A))

	// Control: unfenced, the VM and peer2 reach each other, A reaches peer2.
	n, err := lab.Ping(l.VM, lab.Peer2Addr, 3, 2*time.Second)
	require.NoError(t, err)
	require.Equal(t, 3, n, "control: the VM does not reach peer2 unfenced")

	spec := fence.Spec{VM: "vm-1", Port: "vm0", Addrs: []netip.Addr{lab.VMAddr}, AllowIPsec: true,
		Peers: []netip.Prefix{lab.Peer2Net}}
	require.NoError(t, f.Fence(ctx, spec), "the rules load")
	rs := ruleset(t, l.A)
	t.Logf("ruleset with AllowIPsec:\n%s", rs)
	assert.Equal(t, 2, strings.Count(rs, "rt ipsec exists"), "the VM's inet chain and the inet guard")
	// nft prints "meta secpath" as its alias "meta ipsec".
	assert.Len(t, secpathRE.FindAllString(rs, -1), 2, "the jumps from inet input and forward")
	fs, err := f.List(ctx)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	assert.True(t, fs[0].AllowIPsec)

	vmDrops, guardDrops := dropped(t, f, "vm-1"), drops(t, f, false)
	n, err = lab.Ping(l.VM, lab.Peer2Addr, 3, time.Second)
	require.NoError(t, err)
	assert.Zero(t, n, "the VM's plain pings to peer2 were answered")
	n, err = lab.Ping(l.VM, lab.PeerAddr, 3, time.Second)
	require.NoError(t, err)
	assert.Zero(t, n, "the VM's pings to its LAN peer (bridged) were answered")
	n, err = lab.Ping(l.Peer2, lab.VMAddr, 3, time.Second)
	require.NoError(t, err)
	assert.Zero(t, n, "peer2's plain pings reached the VM")
	assert.Greater(t, dropped(t, f, "vm-1"), vmDrops, "the VM's fence dropped nothing")
	sendUDP(t, l.A, netip.Addr{}, netip.AddrPortFrom(lab.Peer2Addr, 9), 0)
	require.Eventually(t, func() bool { return drops(t, f, false) > guardDrops }, 5*time.Second, 20*time.Millisecond,
		"the guard did not drop A's own plain datagram to a peer")

	// Replaced in place, both ways: a full block, then AllowIPsec again.
	full := spec
	full.AllowIPsec = false
	require.NoError(t, f.Fence(ctx, full))
	rs = ruleset(t, l.A)
	assert.NotContains(t, rs, "rt ipsec")
	assert.NotRegexp(t, secpathRE, rs)
	require.NoError(t, f.Fence(ctx, spec))
	assert.Len(t, secpathRE.FindAllString(ruleset(t, l.A), -1), 2)
	n, err = lab.Ping(l.VM, lab.Peer2Addr, 2, time.Second)
	require.NoError(t, err)
	assert.Zero(t, n)

	require.NoError(t, f.Lift(ctx, "vm-1"))
	rs = ruleset(t, l.A)
	assert.NotContains(t, rs, "rt ipsec", "the guard went with the last fence carrying Peers")
	assert.NotRegexp(t, secpathRE, rs)
	n, err = lab.Ping(l.VM, lab.Peer2Addr, 3, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 3, n, "lifted: the VM reaches peer2 again")
}
