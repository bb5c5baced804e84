package nft

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/sealift/sealift/fence/internal/fencetest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// A fenced VM whose traffic may leave only by its link's device cannot
// dress its data up as neighbour discovery to leave another way: the
// fence lets ND through (the VM needs it with its host) only as ND is,
// hop limit 255, on the link; an ICMPv6 "neighbour solicitation" the VM
// sends to a remote address is routed (hop limit decremented) and
// dropped. Here the VM's lookalikes to peer2 would leave A by up0, not
// the allowed device: unfenced they reach the core's link to peer2
// (the control), fenced none does, while ND between the VM and A still
// works (the VM reaches A's address).
func TestFenceDropsRoutedNDLookalikes(t *testing.T) {
	for _, brnf := range []bool{false, true} {
		t.Run(map[bool]string{false: "brnf=off", true: "brnf=on"}[brnf], func(t *testing.T) {
			w := newWorld(t, brnf)
			routeV6(t, w)
			fencetest.Must(t, lab.Veth(w.A, "v6bsl0", "", w.A, "v6bsl1", "")) // the link's device, carrying nothing here
			fencetest.Must(t, lab.WaitReachable(w.VM, peer2v6, 10*time.Second))
			f := New(WithHost(w.A))
			ctx := context.Background()
			if n := ndLookalikes(t, w); n == 0 {
				t.Fatal("control: no lookalike reached peer2's link unfenced; the check below would prove nothing")
			}
			s := w.Spec()
			s.AllowVia = []string{"v6bsl0"}
			fencetest.Must(t, f.Fence(ctx, s))
			if n := ndLookalikes(t, w); n != 0 {
				t.Errorf("fenced: %d of the VM's ICMPv6 neighbour-solicitation lookalikes left A by a device not allowed", n)
			}
			// ND with its host still works: the VM resolves A's address.
			if out, err := lab.Exec(w.VM, "ip", "-6", "neigh", "flush", "dev", "eth0"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			_, _ = lab.Ping(w.VM, netip.MustParseAddr("fd00:1::1"), 1, 500*time.Millisecond) // (the echo itself is fenced)
			if out, err := lab.Exec(w.VM, "ip", "-6", "neigh", "show", "fd00:1::1", "dev", "eth0"); err != nil || !strings.Contains(string(out), "lladdr") {
				t.Errorf("fenced: the VM did not resolve A's IPv6 address: %q, %v", out, err)
			}
			fencetest.Must(t, f.Lift(ctx, s.VM))
		})
	}
}

var peer2v6 = netip.MustParseAddr("fd00:2::20")

// ndLookalikes sends 5 ICMPv6 type 135 messages carrying data from the
// VM to peer2 (hop limit 64) and counts the frames addressed to peer2
// that the core sends to it.
func ndLookalikes(t *testing.T, w *fencetest.World) int {
	t.Helper()
	c, err := lab.StartAddrCapture(w.Core, "p2", netip.PrefixFrom(peer2v6, 128))
	fencetest.Must(t, err)
	fencetest.Must(t, nsutil.Do(w.VM, func() error {
		pc, err := net.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		defer pc.Close()
		msg := append([]byte{135, 0, 0, 0, 0, 0, 0, 0}, peer2v6.AsSlice()...)
		msg = append(msg, []byte("SEALIFT-ND-LOOKALIKE")...)
		for range 5 {
			if _, err := pc.WriteTo(msg, &net.IPAddr{IP: peer2v6.AsSlice()}); err != nil {
				return err
			}
		}
		return nil
	}))
	time.Sleep(200 * time.Millisecond)
	n, _ := c.Stop()
	return n
}
