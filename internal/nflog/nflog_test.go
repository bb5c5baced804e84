package nflog_test

import (
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nflog"
	"github.com/sealift/sealift/internal/nsutil"
)

// TestListen: a "log group" rule's copies arrive whole (IPv4 header
// first, the payload intact), the rule's drop still drops, and nothing
// arrives after Close.
func TestListen(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	const group = 0x5e01
	out, err := lab.Exec(l.A, "nft", "add table inet nflogtest; add chain inet nflogtest out { type filter hook output priority 0; }; "+
		"add rule inet nflogtest out ip daddr 10.1.0.10 udp dport 9999 log group 24065 drop")
	require.NoError(t, err, "%s", out)

	var mu sync.Mutex
	var got []nflog.Packet
	r, err := nflog.Listen(l.A, group, func(p nflog.Packet) {
		mu.Lock()
		got = append(got, p)
		mu.Unlock()
	})
	require.NoError(t, err)
	_, err = nflog.Listen(l.A, group, func(nflog.Packet) {})
	assert.Error(t, err, "a second reader of the same group")

	vm := netip.MustParseAddr("10.1.0.10")
	recv := listenUDP(t, l.VM, "10.1.0.10:9999")
	send := func(payload string) {
		t.Helper()
		require.NoError(t, nsutil.Do(l.A, func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(vm, 9999).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, _ = c.Write([]byte(payload)) // EPERM: the output hook dropped it, as it should
			return nil
		}))
	}
	for _, p := range []string{"one", "two", "three"} {
		send(p)
	}
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 3 }, 2*time.Second, 10*time.Millisecond)
	mu.Lock()
	for i, want := range []string{"one", "two", "three"} {
		p := got[i]
		assert.Equal(t, uint16(unix.ETH_P_IP), p.Proto)
		require.GreaterOrEqual(t, len(p.Data), 28)
		assert.Equal(t, byte(0x45), p.Data[0], "IPv4 header first")
		assert.Equal(t, vm.As4(), [4]byte(p.Data[16:20]))
		assert.Equal(t, want, string(p.Data[28:]))
	}
	mu.Unlock()
	assert.Zero(t, recv(200*time.Millisecond), "the rule's drop let datagrams through")

	require.NoError(t, r.Close())
	send("after")
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	assert.Len(t, got, 3, "a packet was delivered after Close")
	mu.Unlock()
	// The group is free again.
	r2, err := nflog.Listen(l.A, group, func(nflog.Packet) {})
	require.NoError(t, err)
	require.NoError(t, r2.Close())
}

// listenUDP listens in ns and returns a function counting the datagrams
// that arrived within d.
func listenUDP(t *testing.T, ns, addr string) func(d time.Duration) int {
	t.Helper()
	var c net.PacketConn
	require.NoError(t, nsutil.Do(ns, func() error {
		var err error
		c, err = net.ListenPacket("udp4", addr)
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return func(d time.Duration) int {
		n := 0
		buf := make([]byte, 1500)
		_ = c.SetReadDeadline(time.Now().Add(d))
		for {
			if _, _, err := c.ReadFrom(buf); err != nil {
				return n
			}
			n++
		}
	}
}
