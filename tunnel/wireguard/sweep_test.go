package wireguard

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSweepStaleSockets: New removes the UAPI sockets of sealift devices
// nobody serves (left by a killed process) and keeps a served one, a
// young one (its device may be starting), another program's stale one,
// and a file that is not a socket.
func TestSweepStaleSockets(t *testing.T) {
	require.NoError(t, os.MkdirAll(uapiDir, 0o755))
	tag := make([]byte, 3)
	_, _ = rand.Read(tag)
	name := func(prefix, what string) string {
		return filepath.Join(uapiDir, prefix+hex.EncodeToString(tag)+what+".sock")
	}
	old := time.Now().Add(-time.Minute)
	// stale leaves a socket file behind with no listener, as a process
	// killed with its device open does.
	stale := func(path string, mtime time.Time) {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		require.NoError(t, err)
		l.SetUnlinkOnClose(false)
		require.NoError(t, l.Close())
		require.NoError(t, os.Chtimes(path, mtime, mtime))
		t.Cleanup(func() { os.Remove(path) })
	}
	dead, young, foreign := name(devPrefix, "d"), name(devPrefix, "y"), name("wgx", "f")
	stale(dead, old)
	stale(young, time.Now())
	stale(foreign, old)
	served := name(devPrefix, "l")
	l, err := net.Listen("unix", served)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	require.NoError(t, os.Chtimes(served, old, old))
	notSock := name(devPrefix, "n")
	require.NoError(t, os.WriteFile(notSock, nil, 0o600))
	require.NoError(t, os.Chtimes(notSock, old, old))
	t.Cleanup(func() { os.Remove(notSock) })

	New(WithStateDir(""))

	assert.NoFileExists(t, dead, "a sealift socket nobody serves")
	for _, kept := range []string{young, foreign, served, notSock} {
		_, err := os.Lstat(kept)
		assert.NoError(t, err, "%s must stay", kept)
	}
}
