package wireguard

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// TestCheckProxyNDPPrefixes: with proxy ARP/NDP, an IPv6 prefix wider
// than /128 is refused where the answering end reaches it on-link (proxy
// NDP is per address), and accepted where it is behind a gateway there
// (a dual-stack plan's peer subnet: nothing to answer for).
func TestCheckProxyNDPPrefixes(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	require.NoError(t, l.DualStack(false))
	spec := tunnel.Spec{ID: "n1", Kind: tunnel.WireGuard, ProxyARP: true,
		Secure: tunnel.End{Host: l.A, Underlay: lab.AUplink,
			Protected: []netip.Prefix{lab.Peer2Net, lab.Peer2Net6, netip.PrefixFrom(lab.PeerAddr6, 128)}},
		Remote: tunnel.End{Host: l.B, Underlay: lab.BUnderlay,
			Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32), netip.PrefixFrom(lab.VMAddr6, 128)}},
	}
	lk := New(WithStateDir(t.TempDir()))
	// fd00:2::/64 is behind the core's gateway at B: no proxy needed.
	assert.NoError(t, lk.check(spec))

	// fd00:1::/64 is B's br0 subnet: B would have to answer for all of it.
	bad := spec
	bad.Secure.Protected = []netip.Prefix{lab.Peer2Net, lab.VMSubnet6}
	err := lk.check(bad)
	require.ErrorIs(t, err, tunnel.ErrInvalid)
	assert.ErrorContains(t, err, "Secure.Protected[1] fd00:1::/64")

	// Without proxying, nothing is answered for: any prefix goes.
	bad.ProxyARP = false
	assert.NoError(t, lk.check(bad))

	// The plan at activation asks the routing table as the check does:
	// at a host that forwards IPv6, fd00:1::/64's first address is its
	// subnet-router anycast address, routed to lo; asked about it, the
	// plan skipped the prefix in silence instead of refusing it.
	require.NoError(t, lab.Sysctl(l.B, "net/ipv6/conf/all/forwarding", "1"))
	_, err = planProxy(l.B, "none", []netip.Prefix{lab.VMSubnet6})
	assert.ErrorContains(t, err, "needs /128")
	plan, err := planProxy(l.B, "none", []netip.Prefix{netip.PrefixFrom(lab.VMAddr6, 128), lab.VMSubnet})
	require.NoError(t, err)
	assert.Len(t, plan.entries, 1, "the /128's entry")
	assert.Contains(t, plan.sysctls, sysctlSave{Key: "net/ipv4/conf/br0/proxy_arp", New: "1"}, "the IPv4 subnet's proxy_arp")
}
