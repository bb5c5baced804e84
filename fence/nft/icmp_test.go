package nft

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/internal/fencetest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// An ICMP error the host itself sends about a packet to or from the
// fenced VM quotes that packet's start; from the host's own address it
// would leave by the host's routes, in clear, whatever the VM's address
// rules say. The fence drops it (unless it leaves through AllowVia).
// Here peer2's datagrams to the VM expire at A (TTL 2: core, then A):
// unfenced, peer2 gets A's "time exceeded"; fenced, none.
func TestFenceDropsICMPErrorsQuotingTheVM(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	f := New(WithHost(l.A))
	spec := fence.Spec{VM: "vm-1", Port: "vm0", Addrs: []netip.Addr{lab.VMAddr}}

	if n := timeExceeded(t, l.Peer2, 5); n == 0 {
		t.Fatal("control: no time-exceeded came back unfenced; the check below would prove nothing")
	}
	if err := f.Fence(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	if n := timeExceeded(t, l.Peer2, 5); n != 0 {
		t.Fatalf("fenced: %d ICMP errors quoting the VM's traffic left the host", n)
	}
	// Through a secure link they may leave: AllowVia on A's uplink (as if
	// it were one).
	spec.AllowVia = []string{"up0"}
	if err := f.Fence(context.Background(), spec); err != nil {
		t.Fatal(err)
	}
	if n := timeExceeded(t, l.Peer2, 5); n == 0 {
		t.Fatal("AllowVia up0: the errors should pass through the allowed device")
	}
}

// timeExceeded sends n UDP datagrams with TTL 2 from ns to the VM's
// address and counts the ICMP time-exceeded messages that quote them.
func timeExceeded(t *testing.T, ns string, n int) int { return timeExceededTo(t, ns, lab.VMAddr, n) }

// timeExceeded6 is timeExceeded over IPv6 (hop limit 2, to the VM's
// IPv6 address, ICMPv6 time-exceeded).
func timeExceeded6(t *testing.T, ns string, n int) int {
	return timeExceededTo(t, ns, fencetest.VM6, n)
}

// timeExceededTo sends n UDP datagrams that expire after 2 hops from ns
// to vm and counts the time-exceeded errors (ICMP or ICMPv6, by vm's
// family) that quote them.
func timeExceededTo(t *testing.T, ns string, vm netip.Addr, n int) int {
	t.Helper()
	v6 := vm.Is6()
	icmpNet, anyAddr, udpNet := "ip4:icmp", "0.0.0.0", "udp4"
	if v6 {
		icmpNet, anyAddr, udpNet = "ip6:ipv6-icmp", "::", "udp6"
	}
	var icmp net.PacketConn
	var udp *net.UDPConn
	err := nsutil.Do(ns, func() (err error) {
		if icmp, err = net.ListenPacket(icmpNet, anyAddr); err != nil {
			return err
		}
		udp, err = net.DialUDP(udpNet, nil, &net.UDPAddr{IP: vm.AsSlice(), Port: 9})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer icmp.Close()
	defer udp.Close()
	raw, err := udp.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	raw.Control(func(fd uintptr) {
		if v6 {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_UNICAST_HOPS, 2)
		} else {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TTL, 2)
		}
	})
	for i := 0; i < n; i++ {
		if _, err := udp.Write([]byte("SEALIFT-ICMP-QUOTE")); err != nil {
			t.Fatal(err)
		}
	}
	got := 0
	buf := make([]byte, 1500)
	for {
		icmp.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		m, _, err := icmp.ReadFrom(buf)
		if err != nil {
			return got
		}
		switch {
		// ICMP type 11, quoted IPv4 header at +8: destination at +16.
		case !v6 && m >= 28 && buf[0] == 11 && netip.AddrFrom4([4]byte(buf[24:28])) == vm &&
			binary.BigEndian.Uint16(buf[8+20+2:]) == 9:
			got++
		// ICMPv6 type 3, quoted IPv6 header at +8: destination at +24, UDP at +40.
		case v6 && m >= 8+40+8 && buf[0] == 3 && netip.AddrFrom16([16]byte(buf[8+24:8+40])) == vm &&
			binary.BigEndian.Uint16(buf[8+40+2:]) == 9:
			got++
		}
	}
}

// TestFenceDropsICMPv6ErrorsQuotingTheVM is the IPv6 case: peer2's
// datagrams to the VM's IPv6 address expire at A (hop limit 2: core,
// then A), and A's "time exceeded", quoting them, goes back to peer2
// unfenced, nowhere fenced, and through an AllowVia device only.
func TestFenceDropsICMPv6ErrorsQuotingTheVM(t *testing.T) {
	w := newWorld(t, false)
	routeV6(t, w)
	// No rate limit on A's ICMPv6 errors (the test draws 15 to peer2);
	// the path resolved before the control counts.
	fencetest.Must(t, lab.Sysctl(w.A, "net/ipv6/icmp/ratelimit", "0"))
	fencetest.Must(t, lab.WaitReachable(w.Peer2, fencetest.VM6, 10*time.Second))
	f := New(WithHost(w.A))
	spec := w.Spec()
	ctx := context.Background()
	if n := timeExceeded6(t, w.Peer2, 5); n == 0 {
		t.Fatal("control: no ICMPv6 time-exceeded came back unfenced; the check below would prove nothing")
	}
	if err := f.Fence(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if n := timeExceeded6(t, w.Peer2, 5); n != 0 {
		t.Fatalf("fenced: %d ICMPv6 errors quoting the VM's traffic left the host", n)
	}
	if d := dropped(t, f, spec.VM); d == 0 {
		t.Error("fenced: the fence counted no drop (was the error made?)")
	}
	spec.AllowVia = []string{"up0"}
	if err := f.Fence(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if n := timeExceeded6(t, w.Peer2, 5); n == 0 {
		t.Fatal("AllowVia up0: the errors should pass through the allowed device")
	}
}
