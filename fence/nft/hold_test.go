package nft

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/internal/fencetest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// TestHoldRelease is fence.Spec.Hold at a migration's source: while the
// VM's fence holds, the packets peers send to it are dropped (nothing
// reaches the VM) and copied; once the host routes the VM's addresses
// through the "link" (here a veth lk0 to a namespace x that owns them,
// standing in for B), Release sends each of them on, once, that way:
// bridged from a peer on the VM's LAN and routed from peer2, IPv4 and
// IPv6. A user sees the hold in `nft list ruleset` as "log group".
func TestHoldRelease(t *testing.T) {
	w := fencetest.NewWorld(t, nil)
	ctx := context.Background()
	x := w.Prefix + "-x"
	require.NoError(t, w.AddHost(x))
	require.NoError(t, lab.Veth(w.A, "lk0", "192.0.2.1/30", x, "eth0", "192.0.2.2/30"))
	run := func(ns string, args ...string) {
		t.Helper()
		out, err := lab.Exec(ns, args[0], args[1:]...)
		require.NoError(t, err, "%s", out)
	}
	run(w.A, "ip", "addr", "add", "fd02::1/64", "dev", "lk0", "nodad")
	run(x, "ip", "addr", "add", "fd02::2/64", "dev", "eth0", "nodad")
	run(x, "ip", "addr", "add", lab.VMAddr.String()+"/32", "dev", "lo")
	run(x, "ip", "addr", "add", fencetest.VM6.String()+"/128", "dev", "lo")

	// The VM at A and its stand-in at x both listen.
	atVM := udpSink(t, w.VM, lab.VMAddr, fencetest.VM6)
	atX := udpSink(t, x, lab.VMAddr, fencetest.VM6)
	// The peer has the VM's MAC cached (v6 by NewWorld, v4 here); A
	// resolves it for peer2's packets.
	n, err := lab.Ping(w.Peer, lab.VMAddr, 1, time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = lab.Ping(w.Peer2, lab.VMAddr, 1, time.Second)
	require.NoError(t, err)
	require.Equal(t, 1, n)

	f := New(WithHost(w.A))
	spec := w.Spec()
	spec.AllowVia = []string{"lk0"}
	spec.Hold = true
	require.NoError(t, f.Fence(ctx, spec))
	out, err := lab.Exec(w.A, "nft", "list", "ruleset")
	require.NoError(t, err)
	assert.Contains(t, string(out), "log group", "the hold is visible to nft")

	want := map[string]bool{}
	send := func(ns string, dst netip.Addr, tag string) {
		t.Helper()
		for i := range 3 {
			msg := fmt.Sprintf("%s-%d", tag, i)
			want[msg] = true
			require.NoError(t, nsutil.Do(ns, func() error {
				c, err := net.Dial("udp", netip.AddrPortFrom(dst, 9999).String())
				if err != nil {
					return err
				}
				defer c.Close()
				_, err = c.Write([]byte(msg))
				return err
			}))
		}
	}
	send(w.Peer, lab.VMAddr, "bridged4")
	send(w.Peer, fencetest.VM6, "bridged6")
	send(w.Peer2, lab.VMAddr, "routed4")
	assert.Empty(t, atVM(300*time.Millisecond), "the fence let packets reach the VM")
	assert.Empty(t, atX(0), "packets reached x before the route")

	// "Activate": the VM's addresses are routed through the link.
	run(w.A, "ip", "route", "add", lab.VMAddr.String()+"/32", "via", "192.0.2.2", "dev", "lk0")
	run(w.A, "ip", "-6", "route", "add", fencetest.VM6.String()+"/128", "via", "fd02::2", "dev", "lk0")
	// The link is resolved (a WireGuard device needs no neighbours).
	run(w.A, "ping", "-c1", "-W2", "192.0.2.2")
	run(w.A, "ping", "-6", "-c1", "-W2", "fd02::2")
	sent, err := f.Release(ctx, spec.VM)
	require.NoError(t, err)
	assert.Equal(t, len(want), sent)
	got := atX(2 * time.Second)
	assert.ElementsMatch(t, keys(want), got, "released packets at the link's far end")
	assert.Empty(t, atVM(0), "a released packet reached the old VM")

	again, err := f.Release(ctx, spec.VM)
	require.NoError(t, err)
	assert.Zero(t, again, "a second Release sent packets again")
	require.NoError(t, f.Lift(ctx, spec.VM))
	_, err = f.Release(ctx, spec.VM)
	assert.ErrorIs(t, err, fence.ErrNotFenced)
}

// TestHoldLiftDiscards: a held fence that is lifted (a rollback) sends
// nothing, and its log group is free again for the next fence.
func TestHoldLiftDiscards(t *testing.T) {
	w := fencetest.NewWorld(t, nil)
	ctx := context.Background()
	f := New(WithHost(w.A))
	spec := w.Spec()
	spec.Hold = true
	n, err := lab.Ping(w.Peer, lab.VMAddr, 1, time.Second) // the peer learns the VM's MAC
	require.NoError(t, err)
	require.Equal(t, 1, n)
	require.NoError(t, f.Fence(ctx, spec))
	_, _ = lab.Ping(w.Peer, lab.VMAddr, 3, 300*time.Millisecond)
	f.mu.Lock()
	h := f.holds[spec.VM]
	f.mu.Unlock()
	require.NotNil(t, h)
	require.Eventually(t, func() bool { h.mu.Lock(); defer h.mu.Unlock(); return len(h.pkts) > 0 }, 2*time.Second, 10*time.Millisecond,
		"the peer's pings were not held")
	group := h.group
	require.NoError(t, f.Lift(ctx, spec.VM))
	f.mu.Lock()
	assert.Empty(t, f.holds)
	f.mu.Unlock()
	// Replacing a fence keeps its holder; dropping Hold stops it.
	require.NoError(t, f.Fence(ctx, spec))
	f.mu.Lock()
	assert.Equal(t, group, f.holds[spec.VM].group, "the freed group is reused")
	f.mu.Unlock()
	spec.Hold = false
	require.NoError(t, f.Fence(ctx, spec))
	f.mu.Lock()
	assert.Empty(t, f.holds)
	f.mu.Unlock()
	out, err := lab.Exec(w.A, "nft", "list", "ruleset")
	require.NoError(t, err)
	assert.NotContains(t, string(out), "log group")
	n, err = f.Release(ctx, spec.VM)
	assert.NoError(t, err)
	assert.Zero(t, n)
}

// udpSink listens on port 9999 of addrs in ns; the returned function
// collects the payloads that arrive within d (after those already
// queued).
func udpSink(t *testing.T, ns string, addrs ...netip.Addr) func(d time.Duration) []string {
	t.Helper()
	var conns []net.PacketConn
	for _, a := range addrs {
		require.NoError(t, nsutil.Do(ns, func() error {
			c, err := net.ListenPacket("udp", netip.AddrPortFrom(a, 9999).String())
			if err == nil {
				conns = append(conns, c)
			}
			return err
		}))
	}
	t.Cleanup(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	return func(d time.Duration) []string {
		var got []string
		end := time.Now().Add(d)
		for _, c := range conns {
			buf := make([]byte, 1500)
			// Each socket gets at least a moment: one whose deadline has
			// passed reports a timeout even with datagrams queued.
			_ = c.SetReadDeadline(later(end, time.Now().Add(20*time.Millisecond)))
			for {
				n, _, err := c.ReadFrom(buf)
				if err != nil {
					break
				}
				got = append(got, string(buf[:n]))
			}
		}
		return got
	}
}

func later(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func keys(m map[string]bool) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
