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
