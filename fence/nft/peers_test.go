package nft

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// The Peers guard (issue 16 item 10): host B, the target, has the moved
// subnet 10.1.0.0/24 on br0 and routes everything else by its default
// route across the untrusted wan. A fence at B carrying Peers must keep
// every packet addressed to the peers off the wan, whoever sends it.
//
//	peer2 10.2.0.20 ── core ── wan ── B (wan0 203.0.113.1, fd01::1)
//	                      └─ bsl 192.0.2.2 ── sl0 192.0.2.1 (B's "secure link"; fd02::/64)
//
// B's br0: mv0 (the fenced VM's port, 10.1.0.10 / fd00:1::10, the guest down), nb0 (an unfenced
// neighbour, 10.1.0.30 / fd00:1::30). 10.1.0.12 and fd00:1::12 are unused
// addresses of the moved subnet that peer2 (IPv4) and the wan (holding
// the peer address fd00:2::20, IPv6) send to.
var (
	peerV6  = netip.MustParseAddr("fd00:2::20")
	peers   = []netip.Prefix{lab.Peer2Net, netip.MustParsePrefix("fd00:2::/64")}
	unused4 = netip.MustParseAddr("10.1.0.12")
	unused6 = netip.MustParseAddr("fd00:1::12")
	vmV6    = netip.MustParseAddr("fd00:1::10") // the fenced VM's IPv6 address
)

type peersLab struct {
	*lab.Lab
	nb string // the unfenced neighbour at B
}

func newPeersLab(t *testing.T, brnf bool) *peersLab {
	t.Helper()
	lab.RequireRoot(t)
	if _, err := exec.LookPath("ip"); err != nil {
		lab.Missing(t, "ip (apt: iproute2)")
	}
	l := lab.New(t)
	run := func(ns string, args ...string) {
		t.Helper()
		out, err := lab.Exec(ns, args[0], args[1:]...)
		require.NoError(t, err, "%s", out)
	}
	for _, k := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"} {
		err := lab.Sysctl(l.B, k, map[bool]string{false: "0", true: "1"}[brnf])
		if err != nil && brnf {
			lab.Missing(t, "br_netfilter (modprobe br_netfilter): "+err.Error())
		}
	}
	mv, err := l.AttachVM("mv", l.B, "mv0", "10.1.0.10/24")
	require.NoError(t, err)
	run(mv, "ip", "link", "set", "eth0", "down") // the moved guest is down
	nb, err := l.AttachVM("nb", l.B, "nb0", "10.1.0.30/24")
	require.NoError(t, err)
	require.NoError(t, lab.Veth(l.B, "sl0", "192.0.2.1/30", l.Core, "bsl", "192.0.2.2/30"))
	// A second VM's port (nothing behind it).
	require.NoError(t, lab.Veth(l.B, "mv2", "", l.B, "mv2p", ""))
	// Peer2's packets to the unused address cross the wan to B, as after
	// the subnet moved.
	for _, a := range []netip.Addr{unused4, lab.VMAddr} {
		require.NoError(t, lab.AddRoute(l.Core, a.String()+"/32", lab.WANCore.String(), ""))
		require.NoError(t, lab.AddRoute(l.WAN, a.String()+"/32", lab.BUnderlay.String(), ""))
	}
	// IPv6: B and the wan share fd01::/64; the wan holds the peer address.
	run(l.B, "ip", "-6", "addr", "add", "fd01::1/64", "dev", "wan0", "nodad")
	run(l.WAN, "ip", "-6", "addr", "add", "fd01::2/64", "dev", "b0", "nodad")
	run(l.WAN, "ip", "-6", "addr", "add", peerV6.String()+"/128", "dev", "lo")
	run(l.B, "ip", "-6", "addr", "add", "fd00:1::1/64", "dev", "br0", "nodad")
	run(nb, "ip", "-6", "addr", "add", "fd00:1::30/64", "dev", "eth0", "nodad")
	run(nb, "ip", "-6", "route", "add", "default", "via", "fd00:1::1")
	run(l.B, "ip", "-6", "route", "add", "default", "via", "fd01::2")
	run(l.WAN, "ip", "-6", "route", "add", "fd00:1::/64", "via", "fd01::1")
	run(l.B, "ip", "-6", "addr", "add", "fd02::1/64", "dev", "sl0", "nodad")
	run(l.Core, "ip", "-6", "addr", "add", "fd02::2/64", "dev", "bsl", "nodad")
	for k, v := range map[string]string{
		"net/ipv6/conf/all/forwarding": "1",
		// No rate limit on B's ICMP errors: the test sends several to the
		// same peer within a second.
		"net/ipv4/icmp_ratelimit": "0", "net/ipv6/icmp/ratelimit": "0",
		// An address without a neighbour fails after ~100 ms, not 3 s.
		"net/ipv4/neigh/br0/mcast_solicit": "1", "net/ipv4/neigh/br0/retrans_time_ms": "100",
		"net/ipv6/neigh/br0/mcast_solicit": "1", "net/ipv6/neigh/br0/retrans_time_ms": "100",
	} {
		require.NoError(t, lab.Sysctl(l.B, k, v), k)
	}
	return &peersLab{Lab: l, nb: nb}
}

// sendUDP sends one datagram from ns (from src if valid) to dst with the
// given hop limit (0: default). Errors (a host's own packet dropped by
// its fence is EPERM) are the point of some sends: ignored.
func sendUDP(t *testing.T, ns string, src netip.Addr, dst netip.AddrPort, hops int) {
	t.Helper()
	err := nsutil.Do(ns, func() error {
		var laddr *net.UDPAddr
		if src.IsValid() {
			laddr = &net.UDPAddr{IP: src.AsSlice()}
		}
		c, err := net.ListenUDP("udp", laddr)
		if err != nil {
			return err
		}
		defer c.Close()
		if hops > 0 {
			rc, err := c.SyscallConn()
			if err != nil {
				return err
			}
			_ = rc.Control(func(fd uintptr) {
				if dst.Addr().Is4() {
					_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, hops)
				} else {
					_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_UNICAST_HOPS, hops)
				}
			})
		}
		_, _ = c.WriteToUDPAddrPort([]byte("SEALIFT-PEERS-GUARD"), dst)
		return nil
	})
	require.NoError(t, err)
}

// leakKinds are the ways a packet addressed to a peer can leave B.
// quotesVM: the error quotes a fenced VM's address, so that VM's own
// fence may drop it before the guard does.
var leakKinds = []struct {
	name     string
	send     func(t *testing.T, w *peersLab)
	quotesVM bool
}{
	{"icmp-host-unreachable-to-peer", func(t *testing.T, w *peersLab) {
		// Peer2 pings an unused address of the moved subnet: B's ARP fails
		// and B answers "host unreachable", quoting the ping, to peer2.
		_, err := lab.Ping(w.Peer2, unused4, 1, 0)
		require.NoError(t, err)
	}, false},
	{"icmp-host-unreachable-for-down-guest", func(t *testing.T, w *peersLab) {
		// The same for the moved guest's own address while it is down.
		_, err := lab.Ping(w.Peer2, lab.VMAddr, 1, 0)
		require.NoError(t, err)
	}, true},
	{"icmpv6-address-unreachable-to-peer", func(t *testing.T, w *peersLab) {
		// The peer's datagram to an unused address of the moved subnet:
		// B's neighbour discovery fails and B answers "address
		// unreachable", quoting the datagram, to the peer.
		sendUDP(t, w.WAN, peerV6, netip.AddrPortFrom(unused6, 9), 0)
	}, false},
	{"icmpv6-address-unreachable-for-down-guest", func(t *testing.T, w *peersLab) {
		// The same for the moved guest's own IPv6 address while it is down.
		sendUDP(t, w.WAN, peerV6, netip.AddrPortFrom(vmV6, 9), 0)
	}, true},
	{"icmpv6-time-exceeded-to-peer", func(t *testing.T, w *peersLab) {
		// A datagram from the peer's address with hop limit 1 expires at B.
		sendUDP(t, w.WAN, peerV6, netip.AddrPortFrom(unused6, 9), 1)
	}, false},
	{"forwarded-v4", func(t *testing.T, w *peersLab) {
		sendUDP(t, w.nb, netip.Addr{}, netip.AddrPortFrom(lab.Peer2Addr, 9), 0)
	}, false},
	{"forwarded-v6", func(t *testing.T, w *peersLab) {
		sendUDP(t, w.nb, netip.Addr{}, netip.AddrPortFrom(peerV6, 9), 0)
	}, false},
	{"host-own-v4", func(t *testing.T, w *peersLab) {
		sendUDP(t, w.B, netip.Addr{}, netip.AddrPortFrom(lab.Peer2Addr, 9), 0)
	}, false},
	{"host-own-v6", func(t *testing.T, w *peersLab) {
		sendUDP(t, w.B, netip.Addr{}, netip.AddrPortFrom(peerV6, 9), 0)
	}, false},
}

// expect says what each kind of leak must do in one phase.
type expect int

const (
	leaks   expect = iota // seen leaving on the wan (the control)
	guarded               // dropped by the guard: 0 on the wan and on sl0
	viaLink               // routed through sl0 (AllowVia): seen there, 0 on the wan
)

// probe runs every kind once and checks where frames addressed to the
// peers leave B. A zero is only believed once a drop counter moved for
// that kind (the guard's, or a fenced VM's own for errors quoting it):
// the packet was made and stopped.
func (w *peersLab) probe(t *testing.T, f *Fencer, want expect) {
	t.Helper()
	for _, k := range leakKinds {
		wan, err := lab.StartAddrCapture(w.B, "wan0", peers...)
		require.NoError(t, err)
		sl, err := lab.StartAddrCapture(w.B, "sl0", peers...)
		require.NoError(t, err)
		before := drops(t, f, k.quotesVM)
		k.send(t, w)
		switch want {
		case leaks:
			assert.Eventually(t, func() bool { return wan.Count() > 0 }, 5*time.Second, 20*time.Millisecond,
				"%s: control: nothing addressed to the peers left by the wan; the guard's zero would prove nothing", k.name)
		case guarded:
			assert.Eventually(t, func() bool { return drops(t, f, k.quotesVM) > before }, 5*time.Second, 20*time.Millisecond,
				"%s: the fences dropped nothing (was the packet made?)", k.name)
		case viaLink:
			assert.Eventually(t, func() bool { return sl.Count() > 0 }, 5*time.Second, 20*time.Millisecond,
				"%s: nothing left through the AllowVia device", k.name)
		}
		onWAN, out := wan.Stop()
		onSL, _ := sl.Stop()
		switch want {
		case leaks:
			t.Logf("%s: control: %d frames to the peers on the wan (%d outgoing)", k.name, onWAN, out)
		case guarded:
			assert.Zero(t, onWAN, "%s: frames addressed to the peers left B by the wan in clear", k.name)
			assert.Zero(t, onSL, "%s: frames addressed to the peers left B by sl0", k.name)
		case viaLink:
			assert.Zero(t, onWAN, "%s: frames addressed to the peers left B by the wan in clear", k.name)
		}
	}
}

// TestPeersGuard runs with br_netfilter off and on (B's neighbour is
// bridged to B; with br_netfilter its frames also pass the inet hooks).
// drops returns the guard's drop counter, plus with vms every installed
// fence's.
func drops(t *testing.T, f *Fencer, vms bool) uint64 {
	t.Helper()
	ctx := context.Background()
	n, err := f.GuardDropped(ctx)
	require.NoError(t, err)
	if !vms {
		return n
	}
	fs, err := f.List(ctx)
	require.NoError(t, err)
	for _, fc := range fs {
		d, err := f.Dropped(ctx, fc.VM)
		require.NoError(t, err)
		n += d
	}
	return n
}

func TestPeersGuard(t *testing.T) {
	for _, brnf := range []bool{false, true} {
		t.Run(map[bool]string{false: "brnf=off", true: "brnf=on"}[brnf], func(t *testing.T) {
			t.Parallel()
			peersGuard(t, brnf)
		})
	}
}

func peersGuard(t *testing.T, brnf bool) {
	w := newPeersLab(t, brnf)
	ctx := context.Background()
	f := New(WithHost(w.B))
	spec := fence.Spec{VM: "vm-1", Port: "mv0", Addrs: []netip.Addr{lab.VMAddr, vmV6}, AllowVia: []string{"sl0"}, Peers: peers}

	t.Run("control-unfenced", func(t *testing.T) { w.probe(t, f, leaks) })

	require.NoError(t, f.Fence(ctx, spec))
	t.Run("fenced", func(t *testing.T) { w.probe(t, f, guarded) })

	// A second VM's fence with the same peers; the first one is lifted:
	// the guard stays.
	spec2 := spec
	spec2.VM, spec2.Port, spec2.Addrs = "vm-2", "mv2", []netip.Addr{netip.MustParseAddr("10.1.0.11"), netip.MustParseAddr("fd00:1::11")}
	require.NoError(t, f.Fence(ctx, spec2))
	require.NoError(t, f.Lift(ctx, "vm-1"))
	t.Run("one-of-two-lifted", func(t *testing.T) { w.probe(t, f, guarded) })

	// The peers are routed through the AllowVia device: they pass there.
	for _, r := range [][]string{{"ip", "route", "add", lab.Peer2Net.String(), "via", "192.0.2.2", "dev", "sl0"},
		{"ip", "-6", "route", "add", "fd00:2::/64", "via", "fd02::2", "dev", "sl0"}} {
		out, err := lab.Exec(w.B, r[0], r[1:]...)
		require.NoError(t, err, "%s", out)
	}
	t.Run("via-allowed-device", func(t *testing.T) { w.probe(t, f, viaLink) })
	for _, r := range [][]string{{"ip", "route", "del", lab.Peer2Net.String()}, {"ip", "-6", "route", "del", "fd00:2::/64"}} {
		out, err := lab.Exec(w.B, r[0], r[1:]...)
		require.NoError(t, err, "%s", out)
	}

	// The last fence with Peers goes: so does the guard.
	require.NoError(t, f.Lift(ctx, "vm-2"))
	t.Run("all-lifted", func(t *testing.T) { w.probe(t, f, leaks) })
}
