package conntrack_test

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/internal/lab"
)

// TestResetThroughTargetFence is FIG. 3 block 365 at a fenced target
// (issue 17 item 7): the VM's port at A is fenced by fence/nft "only via
// wg0" (block 315/370), its plain sessions to peer2 are routed over wg0
// now, and Reset must still reach both ends. The fence drops everything
// the host sends to the VM, except conn/conntrack's reset packets
// (fence.ResetMark, TCP without payload, ACK/RST): without that, the
// tickles to the VM fail with EPERM, the kernel's RST to it is dropped,
// and only the peer side is reset. With br_netfilter the kernel sends
// the RST for a packet that came in over a bridge straight out of the
// port (no IP output hook); without, through the output hook, where the
// fence sees it: both are run.
func TestResetThroughTargetFence(t *testing.T) {
	for _, brnf := range []bool{false, true} {
		t.Run(map[bool]string{false: "brnf=off", true: "brnf=on"}[brnf], func(t *testing.T) {
			t.Parallel()
			resetThroughTargetFence(t, brnf)
		})
	}
}

func resetThroughTargetFence(t *testing.T, brnf bool) {
	w := newWorld(t)
	for _, k := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"} {
		err := lab.Sysctl(w.A, k, map[bool]string{false: "0", true: "1"}[brnf])
		if err != nil && brnf {
			lab.Missing(t, "br_netfilter (modprobe br_netfilter): "+err.Error())
		}
	}
	conntest.AddIPv6(t, w.Lab)
	require.NoError(t, lab.AddAddr(w.A, "wg0", "fd0e::1/64"))
	require.NoError(t, lab.AddAddr(w.Core, "wga", "fd0e::2/64"))
	vm6 := netip.MustParseAddr("fd01::10")

	srv4 := conntest.ListenIn(t, w.Peer2, "tcp4", "10.2.0.20:8080", nil)
	srv6 := conntest.ListenIn(t, w.Peer2, "tcp6", "[fd02::20]:8080", nil)
	c4 := conntest.DialIn(t, w.VM, "tcp4", "10.2.0.20:8080")
	c6 := conntest.DialIn(t, w.VM, "tcp6", "[fd02::20]:8080")
	for _, c := range []net.Conn{c4, c6} {
		require.NoError(t, conntest.Echo(c, "before"))
	}

	// The link now carries the peer; the target fence allows only it.
	for _, r := range [][]string{
		{"ip", "route", "add", "10.2.0.20/32", "via", "10.254.0.2", "dev", "wg0"},
		{"ip", "-6", "route", "add", "fd02::20/128", "via", "fd0e::2", "dev", "wg0"},
	} {
		out, err := lab.Exec(w.A, r[0], r[1:]...)
		require.NoError(t, err, "%s", out)
	}
	f := nft.New(nft.WithHost(w.A))
	require.NoError(t, f.Fence(t.Context(), fence.Spec{VM: "vm-1", Port: "vm0",
		Addrs: []netip.Addr{lab.VMAddr, vm6}, AllowVia: []string{"wg0"}}))
	// Anything else the host sends to the VM is still dropped.
	ping, err := lab.Ping(w.A, lab.VMAddr, 1, 300*time.Millisecond)
	assert.Zero(t, ping, "the fence lets the host's pings reach the VM (%v)", err)

	sel := conn.Selector{Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32), netip.PrefixFrom(vm6, 128)}}
	a := conntrack.New(conntrack.WithHost(w.A), conntrack.WithLogger(slog.New(slog.NewTextHandler(t.Output(), nil))))
	conns, err := a.List(t.Context(), sel)
	require.NoError(t, err)
	require.Len(t, conns, 2, "List: %v", conns)
	before, err := f.Dropped(t.Context(), "vm-1")
	require.NoError(t, err)

	res, err := a.Reset(t.Context(), sel, conns)
	require.NoError(t, err, "Reset (tickles to the VM must not be refused)")
	assert.Equal(t, conn.ResetResult{Reset: 2}, res)

	// The VM's side: the RST arrived, its socket is gone.
	for _, c := range []net.Conn{c4, c6} {
		assert.ErrorIs(t, readErrWithin(c, 5*time.Second), syscall.ECONNRESET, "VM side of %s", c.LocalAddr())
	}
	assert.ErrorIs(t, srv4.EndOf(t, c4.LocalAddr().String()), syscall.ECONNRESET, "peer side (IPv4)")
	assert.ErrorIs(t, srv6.EndOf(t, c6.LocalAddr().String()), syscall.ECONNRESET, "peer side (IPv6)")
	after, err := f.Dropped(t.Context(), "vm-1")
	require.NoError(t, err)
	t.Logf("fence drops during Reset: %d", after-before)
}

// readErrWithin reads from c until a read fails or d passes.
func readErrWithin(c net.Conn, d time.Duration) error {
	_ = c.SetReadDeadline(time.Now().Add(d))
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return errors.New("no reset within " + d.String())
			}
			return err
		}
	}
}
