package nft

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/lab"
)

// Lifting a fence that guards peers drops the host's still-resolving
// neighbour entries of the VM's addresses: a peer's packet forwarded
// toward the fenced VM's address (not on this host) waits in such an
// entry, and when its resolution fails the kernel answers it with an
// ICMP host unreachable to the peer — over the wan in clear once the
// guard is gone. The neighbour of an unguarded fence is left alone.
func TestLiftDropsPendingNeighbours(t *testing.T) {
	w := newPeersLab(t, false)
	// Resolution takes its default time here (3 probes, 1 s apart).
	for k, v := range map[string]string{"net/ipv4/neigh/br0/mcast_solicit": "3", "net/ipv4/neigh/br0/retrans_time_ms": "1000",
		"net/ipv4/conf/all/rp_filter": "0", "net/ipv4/conf/sl0/rp_filter": "0"} { // (B routes peer2 by the wan)
		require.NoError(t, lab.Sysctl(w.B, k, v), k)
	}
	// Peer2's packets to the VM reach B through its secure link (the
	// fence's AllowVia), as over a migration's link.
	out, err := lab.Exec(w.Core, "ip", "route", "replace", lab.VMAddr.String()+"/32", "via", "192.0.2.1", "dev", "bsl")
	require.NoError(t, err, "%s", out)
	ctx := context.Background()
	f := New(WithHost(w.B))
	state := func(a netip.Addr) string { // (ip neigh show ADDR leaves INCOMPLETE entries out)
		out, err := lab.Exec(w.B, "ip", "neigh", "show", "dev", "br0")
		require.NoError(t, err, "%s", out)
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, a.String()+" ") {
				return strings.TrimSpace(l)
			}
		}
		return ""
	}
	pending := func(a netip.Addr) {
		t.Helper()
		sendUDP(t, w.Peer2, netip.Addr{}, netip.AddrPortFrom(a, 7), 0) // through the core and B's link; B resolves a
		require.Eventually(t, func() bool { return strings.Contains(state(a), "INCOMPLETE") }, 2*time.Second, 20*time.Millisecond,
			"B resolves %s: %q", a, state(a))
	}

	// A peer's packet forwarded toward the VM's address waits for a
	// neighbour that will never answer (the guest is down), and the
	// fence comes (how such a packet got past a fence at a target in a
	// crash run was not found; this is the defence at the lift).
	guarded := fence.Spec{VM: "vm-1", Port: "mv0", Addrs: []netip.Addr{lab.VMAddr}, AllowVia: []string{"sl0"}, Peers: peers}
	pending(lab.VMAddr)
	require.NoError(t, f.Fence(ctx, guarded))
	require.NoError(t, f.Lift(ctx, "vm-1"))
	assert.Empty(t, state(lab.VMAddr), "the pending neighbour of the guarded fence's VM is dropped at the lift")

	// Control: a fence without peers; its VM's pending neighbour stays.
	plain := fence.Spec{VM: "vm-1", Port: "mv0", Addrs: []netip.Addr{lab.VMAddr}}
	pending(lab.VMAddr)
	require.NoError(t, f.Fence(ctx, plain))
	require.NoError(t, f.Lift(ctx, "vm-1"))
	assert.Contains(t, state(lab.VMAddr), "INCOMPLETE", "an unguarded fence's lift leaves the neighbour table alone")
}

// TestLiftDropsPendingNeighboursIPv6 is TestLiftDropsPendingNeighbours
// for the VM's IPv6 address: a peer's datagram waiting in B's INCOMPLETE
// neighbour entry of fd00:1::10 would draw an ICMPv6 "address
// unreachable" to the peer once neighbour discovery gives up.
func TestLiftDropsPendingNeighboursIPv6(t *testing.T) {
	w := newPeersLab(t, false)
	for k, v := range map[string]string{"net/ipv6/neigh/br0/mcast_solicit": "3", "net/ipv6/neigh/br0/retrans_time_ms": "1000"} {
		require.NoError(t, lab.Sysctl(w.B, k, v), k)
	}
	// A peer address at the core, whose datagrams to the VM reach B
	// through its secure link (sl0).
	peer := netip.MustParseAddr("fd00:2::21")
	for _, c := range [][]string{
		{"ip", "-6", "addr", "add", peer.String() + "/128", "dev", "lo"},
		{"ip", "-6", "route", "add", vmV6.String() + "/128", "via", "fd02::1", "dev", "bsl"},
	} {
		out, err := lab.Exec(w.Core, c[0], c[1:]...)
		require.NoError(t, err, "%s", out)
	}
	ctx := context.Background()
	f := New(WithHost(w.B))
	state := func(a netip.Addr) string {
		out, err := lab.Exec(w.B, "ip", "-6", "neigh", "show", "dev", "br0")
		require.NoError(t, err, "%s", out)
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, a.String()+" ") {
				return strings.TrimSpace(l)
			}
		}
		return ""
	}
	pending := func(a netip.Addr) {
		t.Helper()
		// Sent again while the core is still resolving B (its first
		// datagram may wait there).
		require.Eventually(t, func() bool {
			sendUDP(t, w.Core, peer, netip.AddrPortFrom(a, 7), 0)
			return strings.Contains(state(a), "INCOMPLETE")
		}, 5*time.Second, 200*time.Millisecond, "B resolves %s: %q", a, state(a))
	}
	guarded := fence.Spec{VM: "vm-1", Port: "mv0", Addrs: []netip.Addr{lab.VMAddr, vmV6}, AllowVia: []string{"sl0"}, Peers: peers}
	pending(vmV6)
	require.NoError(t, f.Fence(ctx, guarded))
	require.NoError(t, f.Lift(ctx, "vm-1"))
	assert.Empty(t, state(vmV6), "the pending IPv6 neighbour of the guarded fence's VM is dropped at the lift")

	// Control: a fence without peers; its VM's pending neighbour stays.
	plain := fence.Spec{VM: "vm-1", Port: "mv0", Addrs: []netip.Addr{lab.VMAddr, vmV6}}
	pending(vmV6)
	require.NoError(t, f.Fence(ctx, plain))
	require.NoError(t, f.Lift(ctx, "vm-1"))
	assert.Contains(t, state(vmV6), "INCOMPLETE", "an unguarded fence's lift leaves the neighbour table alone")
}
