package lab

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/nsutil"
)

// TestPathJudge: a plaintext TCP flow from peer2 to the VM crosses the
// core through a0 (toward A) and p2 (toward peer2). Judged with a0 as
// the "secure" device it is secure; judged with wan0 (not on its path)
// it is not: the verdict follows the path packets really took.
func TestPathJudge(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	stop, err := ServeEcho(l.VM, "10.1.0.10:7000")
	require.NoError(t, err)
	defer stop()
	var c net.Conn
	require.NoError(t, nsutil.Do(l.Peer2, func() (err error) {
		c, err = net.Dial("tcp", "10.1.0.10:7000")
		return err
	}))
	defer c.Close()
	local := netip.MustParseAddrPort(c.LocalAddr().String())
	vm := netip.MustParseAddrPort("10.1.0.10:7000")

	onPath, err := WatchPath(l.Core, local, vm, []string{"a0"})
	require.NoError(t, err)
	defer onPath.Close()
	offPath, err := WatchPath(l.Core, vm, local, []string{"wan0"})
	require.NoError(t, err)
	defer offPath.Close()
	buf := make([]byte, 16)
	for range 5 {
		_, err := c.Write([]byte("hello\n"))
		require.NoError(t, err)
		_, err = c.Read(buf)
		require.NoError(t, err)
	}
	on, err := onPath.Counts()
	require.NoError(t, err)
	off, err := offPath.Counts()
	require.NoError(t, err)
	assert.True(t, on.Secure(), "through a0: %+v", on)
	assert.GreaterOrEqual(t, on.ViaSecure, uint64(10))
	assert.False(t, off.Secure(), "a path without the secure device is not secure: %+v", off)
	assert.Zero(t, off.ViaSecure)
	assert.GreaterOrEqual(t, off.Other, uint64(10))

	_, err = WatchPath(l.Core, local, vm, nil)
	assert.Error(t, err)
}

// TestEchoPathJudgeIPv6: pings from peer2 to the VM over IPv6 (the
// dual-stack topology) are counted at the core on their real path: via
// a0 when a0 is the secure device, not when wan0 is.
func TestEchoPathJudgeIPv6(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	require.NoError(t, l.DualStack(false))
	onPath, err := WatchEcho(l.Core, Peer2Addr6, VMAddr6, []string{"a0"})
	require.NoError(t, err)
	defer onPath.Close()
	offPath, err := WatchEcho(l.Core, VMAddr6, Peer2Addr6, []string{"wan0"})
	require.NoError(t, err)
	defer offPath.Close()
	n, err := Ping(l.Peer2, VMAddr6, 5, 2*time.Second)
	require.NoError(t, err)
	require.Equal(t, 5, n, "IPv6 pings from peer2 to the VM")
	on, err := onPath.Counts()
	require.NoError(t, err)
	off, err := offPath.Counts()
	require.NoError(t, err)
	assert.True(t, on.Secure(), "through a0: %+v", on)
	assert.Equal(t, uint64(10), on.ViaSecure, "5 requests and 5 replies")
	assert.False(t, off.Secure(), "%+v", off)
	assert.Equal(t, uint64(10), off.Other)
}
