package ipsec

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// probeMarker is the start of every probe's payload: a capture that
// finds it saw a probe in clear.
var probeMarker = []byte("sealift-probe ")

// wanCapture captures on wan's interface toward B, counting the probe's
// marker and the protected addresses in any IP header (plaintext).
func wanCapture(t *testing.T, l *lab.Lab) *lab.Capture {
	t.Helper()
	c, err := lab.StartCaptureWith(l.WAN, lab.CaptureOptions{Interface: "b0", Marker: probeMarker, Classify: &lab.Classifier{
		Watch:    []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32), netip.PrefixFrom(lab.VMAddr, 32)},
		Underlay: []netip.Addr{lab.AUplink, lab.CoreWAN, lab.WANCore, lab.WANB, lab.BUnderlay},
	}})
	require.NoError(t, err)
	return c
}

// saStats returns the statistics of the link's current SA of direction d
// at host.
func saStats(t *testing.T, host string, l *link, d int) netlink.XfrmStateStats {
	t.Helper()
	h, err := lab.Handle(host)
	require.NoError(t, err)
	defer h.Close()
	st, err := h.XfrmStateGet(stateID(l, d, l.spi[d]))
	require.NoError(t, err, "host %s: SA spi 0x%08x", host, l.spi[d])
	return st.Statistics
}

// xfrmStat returns one counter of host's /proc/net/xfrm_stat (per
// network namespace; read through thread-self, since nsutil.Do switches
// only the calling thread).
func xfrmStat(t *testing.T, host, name string) int {
	t.Helper()
	var b []byte
	require.NoError(t, nsutil.Do(host, func() (err error) { b, err = os.ReadFile("/proc/thread-self/net/xfrm_stat"); return }))
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == name {
			n, err := strconv.Atoi(f[1])
			require.NoError(t, err)
			return n
		}
	}
	require.Failf(t, "no counter", "host %s: %s not in xfrm_stat:\n%s", host, name, b)
	return 0
}

// activeLink prepares and activates the reference link id with k; Close
// at cleanup.
func activeLink(t *testing.T, k *Linker, w *world, id string) (tunnel.Spec, *link) {
	t.Helper()
	ctx := context.Background()
	spec := specFor(w.l, id)
	_, err := k.Prepare(ctx, spec)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, k.Close(ctx, spec.ID)) })
	require.NoError(t, k.Activate(ctx, spec.ID))
	l, err := k.get(spec.ID)
	require.NoError(t, err)
	return spec, l
}

// TestGuestVerifyQuietLink: nothing at all flows between the peer and the
// moved VM, yet Verify proves the link: each SA counts exactly the probe
// at both ends, the wan sees it only as ESP (two frames, nothing in
// clear), and neither the VM nor the peer receives it.
func TestGuestVerifyQuietLink(t *testing.T) {
	klab.RequireGuest(t)
	w := movedVM(t)
	l := w.l
	k := New()
	spec, lk := activeLink(t, k, w, "quiet1")
	for _, host := range []string{l.A, l.B} {
		for d := range lk.spi {
			require.Zero(t, saStats(t, host, lk, d).Packets, "host %s: SA of direction %d carried traffic before Verify: the link is not quiet", host, d)
		}
	}
	noPols := [2]int{xfrmStat(t, l.A, "XfrmInNoPols"), xfrmStat(t, l.B, "XfrmInNoPols")}
	wan := wanCapture(t, l)
	atVM, err := lab.StartCapture(w.vm, "eth0", probeMarker)
	require.NoError(t, err)
	atPeer, err := lab.StartCapture(l.Peer, "eth0", probeMarker)
	require.NoError(t, err)

	proof, err := k.Verify(context.Background(), spec.ID)
	st, vm, peer := wan.Stop(), atVM.Stop(), atPeer.Stop()
	require.NoError(t, err)
	t.Logf("proof: %s", proof.Detail)

	for _, host := range []string{l.A, l.B} {
		for d := range lk.spi {
			assert.EqualValues(t, 1, saStats(t, host, lk, d).Packets, "host %s: SA of direction %d should count exactly the probe", host, d)
		}
	}
	assert.EqualValues(t, 2, proof.TxPackets, "sent: one probe each way")
	assert.EqualValues(t, 2, proof.RxPackets, "decrypted: one probe each way")
	assert.Contains(t, proof.Detail, "probes sent 1 secure->remote, 1 remote->secure")
	assert.Contains(t, proof.Detail, "packets 0->1")

	assert.Equal(t, 2, st.ByProto[50], "ESP frames on wan (one probe each way)")
	assert.Zero(t, st.Marker, "probe payload in clear on wan")
	assert.Zero(t, st.Watched, "frames with a protected address in clear on wan: %v", st.Samples)
	assert.Zero(t, st.ByProto[probeProto], "probe protocol in clear on wan")
	assert.Zero(t, st.Dropped)
	assert.Zero(t, vm.Marker+vm.ByProto[probeProto], "the probe reached the VM")
	assert.Zero(t, peer.Marker+peer.ByProto[probeProto], "the probe reached the peer")
	for i, host := range []string{l.A, l.B} {
		assert.Equal(t, noPols[i]+1, xfrmStat(t, host, "XfrmInNoPols"), "host %s: the decrypted probe should be dropped for want of an in policy", host)
	}
}

// TestGuestVerifyBrokenLink: Verify refuses a link whose SAs do not work,
// and its probe still never crosses the wan in clear.
func TestGuestVerifyBrokenLink(t *testing.T) {
	klab.RequireGuest(t)

	// B's copy of the Secure -> Remote SA has a key of its own: A
	// encrypts the probe, B fails its integrity check.
	t.Run("wrong key", func(t *testing.T) {
		w := movedVM(t)
		l := w.l
		k := New(WithProbeTimeout(600 * time.Millisecond))
		spec, lk := activeLink(t, k, w, "wkey1")
		h, err := lab.Handle(l.B)
		require.NoError(t, err)
		defer h.Close()
		bad := dirKeys{aead: make([]byte, 36)}
		_, err = rand.Read(bad.aead)
		require.NoError(t, err)
		require.NoError(t, h.XfrmStateDel(stateID(lk, secureToRemote, lk.spi[secureToRemote])))
		require.NoError(t, h.XfrmStateAdd(stateFor(lk, secureToRemote, lk.spi[secureToRemote], bad)))

		wan := wanCapture(t, l)
		_, err = k.Verify(context.Background(), spec.ID)
		st := wan.Stop()
		require.ErrorIs(t, err, tunnel.ErrNotProven)
		t.Logf("Verify: %v", err)
		assert.Contains(t, err.Error(), "the secure->remote SA did not carry the probe")
		assert.Contains(t, err.Error(), "failed integrity check")

		sent, got := saStats(t, l.A, lk, secureToRemote), saStats(t, l.B, lk, secureToRemote)
		assert.GreaterOrEqual(t, sent.Packets, uint64(1), "A encrypted the probe")
		assert.Zero(t, got.Packets, "B decrypted a probe with the wrong key")
		assert.GreaterOrEqual(t, got.Failed, uint32(1), "B counted the probe as an integrity failure")
		assert.EqualValues(t, 1, saStats(t, l.A, lk, remoteToSecure).Packets, "the working direction carried exactly its probe")

		assert.GreaterOrEqual(t, st.ByProto[50], 2, "ESP frames on wan")
		assert.Zero(t, st.Marker, "probe payload in clear on wan")
		assert.Zero(t, st.Watched, "frames with a protected address in clear on wan: %v", st.Samples)

		// The context bounds the wait, too.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = k.Verify(ctx, spec.ID)
		assert.ErrorIs(t, err, tunnel.ErrNotProven)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 500*time.Millisecond, "Verify outlived its context")
	})

	// B's sending SA is gone: Verify cannot count it and fails.
	t.Run("missing SA", func(t *testing.T) {
		w := movedVM(t)
		k := New(WithProbeTimeout(600 * time.Millisecond))
		spec, lk := activeLink(t, k, w, "miss1")
		h, err := lab.Handle(w.l.B)
		require.NoError(t, err)
		defer h.Close()
		require.NoError(t, h.XfrmStateDel(stateID(lk, remoteToSecure, lk.spi[remoteToSecure])))
		_, err = k.Verify(context.Background(), spec.ID)
		require.ErrorIs(t, err, tunnel.ErrNotProven)
		t.Logf("Verify: %v", err)
		assert.Contains(t, err.Error(), fmt.Sprintf("SA spi 0x%08x", lk.spi[remoteToSecure]))
	})

	// B's out SA and out policy are both gone, so nothing global protects
	// traffic from the VM to the peer any more: the VM's own datagram
	// crosses the wan in clear (the control: the check can fail), the
	// probe's socket policy still requires the missing SA and the kernel
	// drops the probe instead of sending it.
	t.Run("probe never in clear", func(t *testing.T) {
		w := movedVM(t)
		l := w.l
		k := New()
		_, lk := activeLink(t, k, w, "clear1")
		h, err := lab.Handle(l.B)
		require.NoError(t, err)
		defer h.Close()
		require.NoError(t, h.XfrmStateDel(stateID(lk, remoteToSecure, lk.spi[remoteToSecure])))
		es, err := openEnds(lk.spec)
		require.NoError(t, err)
		defer es.close()
		for _, p := range es[1].outPolicies(lk, netlinkAllow, 0) {
			require.NoError(t, h.XfrmPolicyDel(&p))
		}

		wan := wanCapture(t, l)
		_, _ = lab.SendUDP(w.vm, lab.PeerAddr.String()+":7000", probeMarker, 1)
		require.Eventually(t, func() bool { return wan.Snapshot().Marker > 0 }, 5*time.Second, 10*time.Millisecond,
			"control: the VM's datagram did not cross the wan in clear; the check could not fail")
		control := wan.Snapshot()

		p := es.probeDirs()[remoteToSecure]
		tmpl := es[1].outPolicies(lk, netlinkAllow, lk.spi[remoteToSecure])[0].Tmpls[0]
		for i := 0; i < 3; i++ {
			// The kernel refuses the probe (EAGAIN: no SA for the socket's
			// template) or takes and drops it; it never sends it plain.
			if err := sendProbe(p, tmpl, append(probeMarker, "test"...)); err != nil {
				assert.ErrorIs(t, err, unix.EAGAIN)
				t.Logf("probe %d: %v", i, err)
			}
		}
		time.Sleep(300 * time.Millisecond) // the probes' time to cross, had they been sent
		st := wan.Stop().Sub(control)
		t.Logf("control: %d frames in clear on wan; probes: %d frames with the marker, %d watched, %d ESP", control.Marker, st.Marker, st.Watched, st.ByProto[50])
		assert.Zero(t, st.Marker, "probe payload in clear on wan")
		assert.Zero(t, st.Watched, "frames with a protected address in clear on wan: %v", st.Samples)
		assert.Zero(t, st.ByProto[probeProto], "probe protocol on wan")
		assert.Zero(t, st.ByProto[50], "ESP frames from B without an SA")
	})
}

// TestGuestVerifyFencedVM is block 345 of a migration over an XFRM link:
// the VM runs at B behind the target's fence, a full block of its port,
// MAC and addresses until block 370 (fence/nft, as the Migrator installs
// it). Verify must prove the link there, and the VM receives nothing.
func TestGuestVerifyFencedVM(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := movedVM(t)
	l := w.l
	f := nft.New(nft.WithHost(l.B))
	require.NoError(t, f.Fence(ctx, fence.Spec{VM: "vm1", Port: "vmb0", MAC: macOf(t, w.vm, "eth0").String(), Addrs: []netip.Addr{lab.VMAddr}}))
	defer func() { assert.NoError(t, f.Lift(ctx, "vm1")) }()
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7000")
	require.NoError(t, err)
	defer echo.Close()
	k := New()
	spec, lk := activeLink(t, k, w, "fenced1")

	// Control: the fence holds; the peer's datagram does not reach the VM.
	_, _ = lab.SendUDP(l.Peer, "10.1.0.10:7000", []byte("fenced?"), 1)
	got, _ := echo.Received()
	require.Zero(t, got, "the fence let the peer's datagram through to the VM")
	before := [2][2]uint64{}
	for i, host := range []string{l.A, l.B} {
		for d := range lk.spi {
			before[i][d] = saStats(t, host, lk, d).Packets
		}
	}

	wan := wanCapture(t, l)
	atVM, err := lab.StartCapture(w.vm, "eth0", probeMarker)
	require.NoError(t, err)
	proof, err := k.Verify(ctx, spec.ID)
	st, vm := wan.Stop(), atVM.Stop()
	require.NoError(t, err, "Verify behind the target's fence")
	t.Logf("proof: %s", proof.Detail)
	for i, host := range []string{l.A, l.B} {
		for d := range lk.spi {
			assert.Equal(t, before[i][d]+1, saStats(t, host, lk, d).Packets, "host %s: SA of direction %d should count exactly the probe", host, d)
		}
	}
	assert.Equal(t, 2, st.ByProto[50], "ESP frames on wan (one probe each way)")
	assert.Zero(t, st.Marker, "probe payload in clear on wan")
	assert.Zero(t, st.Watched, "frames with a protected address in clear on wan: %v", st.Samples)
	assert.Zero(t, vm.Marker+vm.ByProto[probeProto], "the probe reached the VM")
}

// TestProbeNeverInClearWithoutSA runs on this machine's kernel, which has
// XFRM policies but no ESP, so no SA can exist: the probe's socket policy
// requires the link's SA, and the kernel refuses the probe rather than
// send it plain. Control: the same datagram from a raw socket without
// that policy crosses the wan in clear.
func TestProbeNeverInClearWithoutSA(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	spec := specFor(l, "nosa1")
	lk := &link{spec: spec, reqid: ReqID(spec.ID), spi: [2]uint32{0x1001, 0x2002}}
	es, err := openEnds(spec)
	require.NoError(t, err)
	defer es.close()
	wan, err := lab.StartCapture(l.WAN, "", probeMarker)
	require.NoError(t, err)

	payload := append([]byte(nil), probeMarker...)
	require.NoError(t, nsutil.Do(l.A, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, probeProto)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, payload, 0, &unix.SockaddrInet4{Addr: lab.BUnderlay.As4()})
	}))
	require.Eventually(t, func() bool { return wan.Snapshot().Marker > 0 }, 5*time.Second, 10*time.Millisecond,
		"control: a plain raw datagram did not cross the wan in clear; the check could not fail")
	control := wan.Snapshot()

	for _, p := range es.probeDirs() {
		tmpl := p.from.outPolicies(lk, netlinkAllow, lk.spi[p.d])[0].Tmpls[0]
		err := sendProbe(p, tmpl, payload)
		assert.ErrorIs(t, err, unix.EAGAIN, "host %s: the kernel should refuse the probe (no SA)", p.from.host)
	}
	time.Sleep(200 * time.Millisecond) // the probes' time to cross, had they been sent
	st := wan.Stop().Sub(control)
	assert.Zero(t, st.Marker, "probe payload in clear on wan")
	assert.Zero(t, st.ByProto[probeProto], "probe protocol on wan")
	assert.Zero(t, st.ByProto[50], "ESP on wan without an SA")
}
