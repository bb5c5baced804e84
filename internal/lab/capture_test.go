package lab

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestCaptureCountsRoutedTraffic sends marked TCP, UDP and ICMP from peer2
// to the VM and counts them on core's a0, which every such packet crosses,
// while a capture on the wan link (not on the path) must see none.
func TestCaptureCountsRoutedTraffic(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	marker := []byte("SEALIFT-MARK-routed-7f3a")
	payload := append([]byte("hello "), marker...)

	stopT, err := ServeEcho(l.VM, "10.1.0.10:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer stopT()
	stopU, err := ServeUDPEcho(l.VM, "10.1.0.10:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer stopU()

	onPath, err := StartCapture(l.Core, "a0", marker)
	if err != nil {
		t.Fatal(err)
	}
	offPath, err := StartCapture(l.WAN, "c0", marker)
	if err != nil {
		t.Fatal(err)
	}
	if r, err := SendTCP(l.Peer2, "10.1.0.10:7000", payload, 5); err != nil || r != 5 {
		t.Fatalf("SendTCP: %d replies, %v; want 5", r, err)
	}
	if r, err := SendUDP(l.Peer2, "10.1.0.10:7001", payload, 5); err != nil || r != 5 {
		t.Fatalf("SendUDP: %d replies, %v; want 5", r, err)
	}
	if r, err := Ping(l.Peer2, VMAddr, 3, 2*time.Second); err != nil || r != 3 {
		t.Fatalf("Ping: %d replies, %v; want 3", r, err)
	}
	mid := onPath.Snapshot()
	on, off := onPath.Stop(), offPath.Stop()
	t.Logf("on path: %+v", on)
	t.Logf("off path: %+v", off)
	if on.Dropped != 0 || off.Dropped != 0 {
		t.Fatalf("capture dropped frames: %d, %d", on.Dropped, off.Dropped)
	}
	if mid.Frames != on.Frames {
		t.Errorf("Snapshot after the traffic saw %d frames, Stop %d (nothing was sent in between)", mid.Frames, on.Frames)
	}
	// 5 TCP requests + 5 echoes, 5 UDP requests + 5 echoes.
	if on.Marker < 20 || on.MarkerOutgoing < 10 {
		t.Errorf("on path: Marker %d (want >= 20), MarkerOutgoing %d (want >= 10)", on.Marker, on.MarkerOutgoing)
	}
	if on.UDPPorts[7001] != 10 || on.ByProto[unix.IPPROTO_UDP] != 10 {
		t.Errorf("on path: UDP port 7001 %d, UDP %d; want 10 each", on.UDPPorts[7001], on.ByProto[unix.IPPROTO_UDP])
	}
	if on.ByProto[unix.IPPROTO_ICMP] != 6 {
		t.Errorf("on path: ICMP %d, want 6 (3 requests, 3 replies)", on.ByProto[unix.IPPROTO_ICMP])
	}
	if on.ByProto[unix.IPPROTO_TCP] < 10 {
		t.Errorf("on path: TCP %d, want >= 10", on.ByProto[unix.IPPROTO_TCP])
	}
	if off.Marker != 0 || off.ByProto[unix.IPPROTO_UDP] != 0 {
		t.Errorf("off path: Marker %d, UDP %d; want 0", off.Marker, off.ByProto[unix.IPPROTO_UDP])
	}
}

// TestCaptureSeesPlaintextOnWAN: A's underlay traffic to B crosses the
// wan namespace in clear, and the capture there says so, in both
// directions of c0 and b0.
func TestCaptureSeesPlaintextOnWAN(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	marker := []byte("SEALIFT-MARK-wan-19c2")
	stop, err := ServeUDPEcho(l.B, "203.0.113.1:7100")
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	c, err := StartCapture(l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	before := c.Snapshot()
	if r, err := SendUDP(l.A, "203.0.113.1:7100", marker, 4); err != nil || r != 4 {
		t.Fatalf("SendUDP: %d, %v; want 4", r, err)
	}
	s := c.Stop()
	if before.Marker != 0 {
		t.Errorf("marker seen before any was sent: %d", before.Marker)
	}
	// b0 sends the 4 requests to B and receives the 4 echoes.
	if s.Marker != 8 || s.MarkerOutgoing != 4 || s.UDPPorts[7100] != 8 {
		t.Errorf("wan b0: %+v; want Marker 8, MarkerOutgoing 4, UDPPorts[7100] 8", s)
	}
	if again := c.Stop(); again.Marker != s.Marker {
		t.Errorf("second Stop returned %d markers, first %d", again.Marker, s.Marker)
	}
}

func TestPingIPv6AndLoss(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	if err := AddAddr(l.VM, "eth0", "fd00:1::10/64"); err != nil {
		t.Fatal(err)
	}
	if err := AddAddr(l.Peer, "eth0", "fd00:1::20/64"); err != nil {
		t.Fatal(err)
	}
	c, err := StartCapture(l.Peer, "eth0", nil)
	if err != nil {
		t.Fatal(err)
	}
	dst := VMAddr
	if r, err := Ping(l.Peer, mustAddr(t, "fd00:1::10"), 3, 2*time.Second); err != nil || r != 3 {
		t.Fatalf("ping6: %d, %v; want 3", r, err)
	}
	s := c.Stop()
	if s.ByProto[unix.IPPROTO_ICMPV6] < 6 {
		t.Errorf("ICMPv6 frames %d, want >= 6", s.ByProto[unix.IPPROTO_ICMPV6])
	}
	// An address nobody has: no replies, no error.
	if r, err := Ping(l.Peer, mustAddr(t, "10.1.0.99"), 2, 300*time.Millisecond); err != nil || r != 0 {
		t.Errorf("ping to nobody: %d, %v; want 0, nil", r, err)
	}
	if r, err := Ping(l.Peer, dst, 2, 2*time.Second); err != nil || r != 2 {
		t.Errorf("ping4: %d, %v; want 2", r, err)
	}
}

func TestCaptureErrors(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	if _, err := StartCapture(l.A, "nosuch0", nil); err == nil {
		t.Error("StartCapture on a missing interface succeeded")
	}
	if _, err := StartCapture(l.Prefix+"-none", "lo", nil); err == nil {
		t.Error("StartCapture in a missing namespace succeeded")
	}
	if r, err := SendTCP(l.Peer, "10.1.0.10:7999", []byte("x"), 1); err == nil || r != 0 {
		t.Errorf("SendTCP to a closed port: %d, %v; want 0 and an error", r, err)
	}
}

func TestParseFrame(t *testing.T) {
	eth := func(etype uint16, vlan bool, body []byte) []byte {
		f := make([]byte, 12)
		if vlan {
			f = binary.BigEndian.AppendUint16(f, 0x8100)
			f = binary.BigEndian.AppendUint16(f, 42)
		}
		f = binary.BigEndian.AppendUint16(f, etype)
		return append(f, body...)
	}
	udp := []byte{0x12, 0x34, 0x1b, 0x58, 0, 8, 0, 0}
	v4 := append([]byte{0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}, udp...)
	v6 := make([]byte, 40)
	v6[0], v6[6] = 0x60, 0 // hop-by-hop first
	hbh := []byte{44, 0, 1, 4, 0, 0, 0, 0}
	frag := []byte{17, 0, 0, 0, 0, 0, 0, 1} // offset 0
	v6 = append(append(append(v6, hbh...), frag...), udp...)
	ether := &unix.SockaddrLinklayer{Hatype: unix.ARPHRD_ETHER}
	for _, c := range []struct {
		name  string
		f     []byte
		ll    *unix.SockaddrLinklayer
		proto int
		port  uint16
	}{
		{"ipv4", eth(unix.ETH_P_IP, false, v4), ether, 17, 7000},
		{"ipv4 vlan", eth(unix.ETH_P_IP, true, v4), ether, 17, 7000},
		{"ipv6 ext", eth(unix.ETH_P_IPV6, false, v6), ether, 17, 7000},
		{"tun ipv4", v4, &unix.SockaddrLinklayer{Hatype: unix.ARPHRD_NONE, Protocol: htons(unix.ETH_P_IP)}, 17, 7000},
		{"arp", eth(unix.ETH_P_ARP, false, make([]byte, 28)), ether, -1, 0},
		{"short", []byte{1, 2, 3}, ether, -1, 0},
	} {
		p, l4, ok := parseFrame(c.f, c.ll)
		if p != c.proto {
			t.Errorf("%s: proto %d, want %d", c.name, p, c.proto)
			continue
		}
		if c.port != 0 && (!ok || binary.BigEndian.Uint16(l4[2:4]) != c.port) {
			t.Errorf("%s: l4 %x ok %v, want dst port %d", c.name, l4, ok, c.port)
		}
	}
}

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestCaptureAllCountsEachPacketOnce: a capture of every interface of
// the wan counts a routed packet once (where it entered), sees a peer's
// address in clear (the control), and counts nothing when nothing is sent.
func TestCaptureAllCountsEachPacketOnce(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	marker := []byte("SEALIFT-MARK-control-4e1d")
	cl := &Classifier{Watch: []netip.Prefix{VMSubnet, Peer2Net}, Underlay: []netip.Addr{CoreWAN, BUnderlay}}
	c, err := StartCaptureWith(l.WAN, CaptureOptions{IngressOnly: true, Marker: marker, Classify: cl, Times: true})
	require.NoError(t, err)
	defer c.Stop()
	excl, err := StartCaptureWith(l.WAN, CaptureOptions{IngressOnly: true, Marker: marker, Exclude: []string{"c0"}})
	require.NoError(t, err)
	defer excl.Stop()
	quiet := c.Snapshot()
	assert.Zero(t, quiet.Watched)
	sent := time.Now()
	require.NoError(t, SendControl(l.Peer2, BUnderlay, marker))
	require.Eventually(t, func() bool { return c.Snapshot().Marker > 0 }, 5*time.Second, 10*time.Millisecond)
	time.Sleep(50 * time.Millisecond) // a second copy, if any, would be in by now
	s := c.Stop().Sub(quiet)
	assert.Zero(t, excl.Stop().Marker, "the packet entered through c0, which the filter excludes")
	assert.Equal(t, 1, s.Marker, "one packet, counted once though it crossed c0 and b0")
	assert.Equal(t, 1, s.Watched, "the peer's address in clear")
	assert.Equal(t, 1, s.ByKind[KindUnknown], "samples: %v", s.Samples)
	assert.Zero(t, s.Dropped)
	require.Len(t, s.Samples, 1)
	assert.Contains(t, s.Samples[0], "10.2.0.20 -> 203.0.113.1")
	at, ok := c.FirstAfter("c0", false, unix.ETH_P_IP, sent)
	assert.True(t, ok, "the control entered at c0")
	assert.WithinDuration(t, sent, at, time.Second)
}
