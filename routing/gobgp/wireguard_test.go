package gobgp

import (
	"context"
	"net/netip"
	"testing"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// The acceptance scenario with the real redirect tunnel: a WireGuard link
// (embedded wireguard-go) whose Secure end is the core, across the wan.
// A capture on the wan proves the stream crossed it only encrypted.
func TestMovedSubnetThroughWireGuardRedirect(t *testing.T) {
	l, vmb := movedSubnetLab(t)
	ctx := context.Background()
	lk := wireguard.New(wireguard.WithBackend(wireguard.Userspace), wireguard.WithStateDir(t.TempDir()))
	spec := tunnel.Spec{
		// A fresh ID: WireGuard's device and socket names are host-wide,
		// and another run of this test may be under way.
		ID: "r" + lab.NewPrefixFrom(""), Kind: tunnel.WireGuard, NoSecureRoutes: true,
		Secure: tunnel.End{Host: l.Core, Underlay: lab.CoreWAN, Protected: []netip.Prefix{lab.Peer2Net}},
		Remote: tunnel.End{Host: l.B, Underlay: lab.BUnderlay, Protected: []netip.Prefix{lab.VMSubnet}},
	}
	link, err := lk.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	// Registered after lab.New's cleanup, so it runs first: the device
	// goes before its namespace.
	t.Cleanup(func() { _ = lk.Close(context.Background(), spec.ID) })
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	capture, err := lab.StartCapture(l.WAN, "b0", streamMarker)
	if err != nil {
		t.Fatal(err)
	}
	defer capture.Stop()

	movedSubnetScenario(t, l, vmb, redirectTunnel{device: link.SecureDevice}, func() {
		proof, err := lk.Verify(ctx, spec.ID)
		if err != nil {
			t.Fatal(err)
		}
		if proof.Handshake.IsZero() || proof.TxBytes == 0 {
			t.Fatalf("WireGuard shows no handshake or traffic: %+v", proof)
		}
	})
	stats := capture.Stop()
	if stats.Marker != 0 || stats.Dropped != 0 {
		t.Fatalf("wan b0: %d frames with the marker in clear, %d dropped by the capture", stats.Marker, stats.Dropped)
	}
	if stats.UDPPorts[wireguard.DefaultPort] < 20 {
		t.Fatalf("wan b0: %d WireGuard frames, want the redirected stream (>= 20)", stats.UDPPorts[wireguard.DefaultPort])
	}
	t.Logf("wan b0: %d frames, %d WireGuard, 0 with the marker in clear", stats.Frames, stats.UDPPorts[wireguard.DefaultPort])
}
