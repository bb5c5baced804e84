package qemu

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/lab"
)

// TestMigrationAddr: without WithMigrationAddr, PrepareIncoming listens on
// the address of the host's default-route device (no QEMU needed to find
// it); a host that went away is host.ErrNotFound naming it.
func TestMigrationAddr(t *testing.T) {
	lab.RequireRoot(t)
	p := lab.NewPrefix()
	hostNS, gwNS := p+"-h", p+"-gw"
	for _, ns := range []string{hostNS, gwNS} {
		require.NoError(t, lab.AddNS(ns))
		t.Cleanup(func() { _ = netns.DeleteNamed(ns) })
	}
	h, err := New(WithHost(hostNS))
	require.NoError(t, err)
	a, err := h.migrationAddr()
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("127.0.0.1"), a, "no default route: loopback")

	require.NoError(t, lab.Veth(hostNS, "e0", "192.0.2.5/24", gwNS, "e0", "192.0.2.1/24"))
	require.NoError(t, lab.AddRoute(hostNS, "0.0.0.0/0", "192.0.2.1", "e0"))
	a, err = h.migrationAddr()
	require.NoError(t, err)
	assert.Equal(t, netip.MustParseAddr("192.0.2.5"), a)

	require.NoError(t, netns.DeleteNamed(hostNS))
	_, err = h.migrationAddr()
	assert.ErrorIs(t, err, host.ErrNotFound)
	assert.ErrorContains(t, err, hostNS)
}
