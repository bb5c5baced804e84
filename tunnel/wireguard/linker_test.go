package wireguard

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// marker is the payload tag a capture looks for in clear.
var marker = []byte("SEALIFT-WG-CLEARTEXT-5c1e")

// TestUserspaceLink runs the whole link life cycle with the embedded
// wireguard-go (this machine's kernel has no WireGuard).
func TestUserspaceLink(t *testing.T) {
	testLinkLifecycle(t, Userspace, BackendUserspace)
}

// TestAutoPicksAvailableBackend: Auto uses the kernel device where the
// kernel has one, else wireguard-go; either way the link works.
func TestAutoPicksAvailableBackend(t *testing.T) {
	want := BackendUserspace
	if kernelHasWireGuard(t) {
		want = BackendKernel
	}
	testLinkLifecycle(t, Auto, want)
}

// testLinkLifecycle: Prepare (nothing carried), Activate, Verify, traffic
// peer ↔ VM in both directions with only WireGuard UDP on the wan and the
// payload marker never in clear, then Close leaving nothing behind.
func testLinkLifecycle(t *testing.T, b Backend, wantBackend string) {
	w := newWorld(t)
	var logs syncBuffer
	lk := testLinker(t, &logs, WithBackend(b), WithPresharedKey(true))
	spec := w.spec()
	before := w.sysctls(t)
	if before[w.l.A+":net/ipv4/neigh/br0/proxy_delay"] == "0" {
		t.Fatal("proxy_delay is already 0: the restore check below would prove nothing")
	}
	ctx := context.Background()

	link, err := lk.Prepare(ctx, spec)
	if err != nil {
		t.Fatalf("Prepare: %v", err)
	}
	closeOnCleanup(t, lk, spec.ID)
	if link.Backend != wantBackend {
		t.Fatalf("Backend = %q, want %q", link.Backend, wantBackend)
	}
	if link.Active || link.SecureDevice == "" || link.RemoteDevice == "" || link.Secure.Port == 0 || link.Remote.Port == 0 {
		t.Fatalf("prepared link: %+v", link)
	}
	t.Logf("prepared %s: %s (%s) ↔ %s (%s), ports %d/%d", link.ID, link.SecureDevice, w.l.A,
		link.RemoteDevice, w.l.B, link.Secure.Port, link.Remote.Port)

	// Prepared: devices up and handshaken (so that Activate, in the
	// switchover hook, only routes), nothing routed through them.
	for _, e := range []struct{ host, dev string }{{w.l.A, link.SecureDevice}, {w.l.B, link.RemoteDevice}} {
		up, routes, mtu := devState(t, e.host, e.dev)
		if !up || len(routes) != 0 {
			t.Errorf("%s/%s after Prepare: up=%v routes=%v, want up and no routes", e.host, e.dev, up, routes)
		}
		if mtu != 1500-80 {
			t.Errorf("%s/%s MTU %d, want the underlay's 1500 - 80", e.host, e.dev, mtu)
		}
	}
	if _, err := lk.Verify(ctx, spec.ID); !errors.Is(err, tunnel.ErrNotProven) {
		t.Errorf("Verify before Activate: %v, want ErrNotProven", err)
	}
	if r, _ := lab.Ping(w.l.Peer, lab.VMAddr, 2, 300e6); r != 0 {
		t.Errorf("prepared link carried %d pings", r)
	}
	if got, err := lk.List(ctx); err != nil || len(got) != 1 || got[0].ID != spec.ID {
		t.Errorf("List = %v, %v; want the one link", got, err)
	}

	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatalf("Activate: %v", err)
	}
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatalf("second Activate: %v", err)
	}
	for _, e := range []struct {
		host, dev string
		want      netip.Prefix
	}{{w.l.A, link.SecureDevice, vmHost}, {w.l.B, link.RemoteDevice, peerHost}} {
		up, routes, _ := devState(t, e.host, e.dev)
		if !up || !slices.Contains(routes, e.want.String()) {
			t.Errorf("%s/%s after Activate: up=%v routes=%v, want up with %s", e.host, e.dev, up, routes, e.want)
		}
	}
	proof, err := lk.Verify(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	if proof.Handshake.IsZero() || proof.TxBytes == 0 || proof.RxBytes == 0 {
		t.Fatalf("Verify proof: %+v", proof)
	}
	t.Logf("proof: %s", proof.Detail)

	// Traffic through the link, watched on the wan.
	capt, err := lab.StartCapture(w.l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Stop()
	w.exchange(t, append([]byte("payload "), marker...))
	st := capt.Stop()
	t.Logf("wan capture: %+v", st)
	if st.Dropped != 0 {
		t.Fatalf("capture dropped %d frames", st.Dropped)
	}
	if st.Marker != 0 {
		t.Errorf("%d frames on the wan carry the payload marker in clear", st.Marker)
	}
	// 2 directions × (10 TCP + 10 UDP + 10 ICMP) requests and replies.
	if st.ByProto[17] < 120 {
		t.Errorf("wan saw %d UDP frames, want ≥ 120 (the exchange's packets, encrypted)", st.ByProto[17])
	}
	for proto, n := range st.ByProto {
		// 58: ICMPv6 the veth itself sends (router solicitation, MLD for
		// its link-local address); the exchange is IPv4 only.
		if proto != 17 && proto != 58 {
			t.Errorf("wan saw %d frames of IP protocol %d, want only UDP", n, proto)
		}
	}
	for port, n := range st.UDPPorts {
		if port != link.Secure.Port && port != link.Remote.Port {
			t.Errorf("wan saw %d UDP frames on port %d, want only WireGuard's %d/%d", n, port, link.Secure.Port, link.Remote.Port)
		}
	}
	after, err := lk.Verify(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Verify after traffic: %v", err)
	}
	if after.TxBytes < proof.TxBytes+2*20*uint64(len(marker)) {
		t.Errorf("WireGuard counters rose from %d to %d bytes: the exchange did not go through the link", proof.TxBytes, after.TxBytes)
	}

	assertNoKeysLogged(t, &logs, link)

	if err := lk.Close(ctx, spec.ID); err != nil {
		t.Fatalf("Close: %v", err)
	}
	assertClean(t, lk, link, before, w)
	if err := lk.Close(ctx, spec.ID); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := lk.Activate(ctx, spec.ID); !errors.Is(err, tunnel.ErrNoLink) {
		t.Errorf("Activate after Close: %v, want ErrNoLink", err)
	}
}

// assertNoKeysLogged reads the devices' keys (before Close) and fails if
// any appears in the log.
func assertNoKeysLogged(t *testing.T, logs *syncBuffer, link tunnel.Link) {
	t.Helper()
	for _, e := range []struct{ host, dev string }{{link.Secure.Host, link.SecureDevice}, {link.Remote.Host, link.RemoteDevice}} {
		err := withWG(e.host, func(c *wgctrl.Client) error {
			d, err := c.Device(e.dev)
			if err != nil {
				return err
			}
			text := logs.String()
			if strings.Contains(text, d.PrivateKey.String()) {
				t.Errorf("the private key of %s is in the log", e.dev)
			}
			if psk := d.Peers[0].PresharedKey; psk != (wgtypes.Key{}) && strings.Contains(text, psk.String()) {
				t.Errorf("the preshared key of %s is in the log", e.dev)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(logs.String(), "wireguard link active") {
		t.Errorf("log has no activation record: the check above read nothing")
	}
}

// TestPlainPathShowsMarker is the control for the capture check: the same
// exchange over plain routes across the wan shows the marker there.
func TestPlainPathShowsMarker(t *testing.T) {
	w := newWorld(t)
	w.plainPath(t)
	capt, err := lab.StartCapture(w.l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Stop()
	w.exchange(t, append([]byte("payload "), marker...))
	st := capt.Stop()
	t.Logf("wan capture: %+v", st)
	if st.Marker < 40 {
		t.Fatalf("plain path: %d frames with the marker on the wan, want ≥ 40 (TCP+UDP both ways)", st.Marker)
	}
}
