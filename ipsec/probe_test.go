package ipsec

import (
	"context"
	"crypto/rand"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
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

// probeRules counts the rules with RouteProtocol at host (the probe's).
func probeRules(t *testing.T, host string) int {
	t.Helper()
	h, err := lab.Handle(host)
	require.NoError(t, err)
	defer h.Close()
	rs, err := h.RuleList(netlink.FAMILY_ALL)
	require.NoError(t, err)
	n := 0
	for _, r := range rs {
		if r.Protocol == uint8(RouteProtocol) {
			n++
		}
	}
	return n
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
// clear), neither the VM nor the peer receives it, and the probe's rules
// are gone afterwards.
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
	for _, host := range []string{l.A, l.B} {
		assert.Zero(t, probeRules(t, host), "host %s: probe rules left after Verify", host)
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
		for _, host := range []string{l.A, l.B} {
			assert.Zero(t, probeRules(t, host), "host %s: probe rules left after a failed Verify", host)
		}

		// The context bounds the wait, too.
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err = k.Verify(ctx, spec.ID)
		assert.ErrorIs(t, err, tunnel.ErrNotProven)
		assert.ErrorIs(t, err, context.DeadlineExceeded)
		assert.Less(t, time.Since(start), 500*time.Millisecond, "Verify outlived its context")
		for _, host := range []string{l.A, l.B} {
			assert.Zero(t, probeRules(t, host), "host %s: probe rules left after a cancelled Verify", host)
		}
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

		dirs, err := es.probeDirs(lk)
		require.NoError(t, err)
		p := dirs[remoteToSecure]
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

// TestCloseRemovesProbeRules runs on this machine's kernel (policies and
// rules need no ESP): the blackhole rules a Verify interrupted by a crash
// would leave are removed by Close; a rule for other addresses stays.
func TestCloseRemovesProbeRules(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	spec := specFor(l, "rules1")
	lk := &link{spec: spec, reqid: ReqID(spec.ID), spi: [2]uint32{0x1001, 0x2002}, hosts: []string{l.A, l.B}}
	es, err := openEnds(spec)
	require.NoError(t, err)
	defer es.close()
	require.NoError(t, es.addPolicies(lk, netlinkBlock))
	dirs, err := es.probeDirs(lk)
	require.NoError(t, err)
	for _, p := range dirs {
		require.NoError(t, p.to.h.RuleAdd(probeRule(p)))
	}
	other := probeDir{src: netip.MustParseAddr("10.9.0.1"), dst: netip.MustParseAddr("10.9.0.2")}
	require.NoError(t, es[0].h.RuleAdd(probeRule(other)))
	require.Equal(t, 2, probeRules(t, l.A))
	require.Equal(t, 1, probeRules(t, l.B))

	require.NoError(t, New(WithHosts(l.A, l.B)).Close(context.Background(), spec.ID))
	assert.Equal(t, 1, probeRules(t, l.A), "host A: the other addresses' rule must stay, the link's go")
	assert.Zero(t, probeRules(t, l.B), "host B: the link's probe rule must go")
}

// TestProbeAddrs: the probe runs between protected addresses that are not
// the end hosts' own (a probe to a host's own address would be delivered
// there instead of dropped), IPv4 first.
func TestProbeAddrs(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	cases := []struct {
		name             string
		secure, remote   []string
		wantSrc, wantDst string
	}{
		{"hosts", []string{"10.1.0.20/32"}, []string{"10.1.0.10/32"}, "10.1.0.20", "10.1.0.10"},
		{"subnet with A's own address", []string{"10.1.0.0/24"}, []string{"10.1.0.10/32"}, "10.1.0.2", "10.1.0.10"},
		{"named address", []string{"10.2.0.7/24"}, []string{"10.1.0.10/32"}, "10.2.0.7", "10.1.0.10"},
		{"IPv4 first", []string{"2001:db8::1/128", "10.1.0.20/32"}, []string{"2001:db8:1::1/128", "10.1.0.10/32"}, "10.1.0.20", "10.1.0.10"},
		{"IPv6", []string{"2001:db8::/64"}, []string{"2001:db8:1::5/128"}, "2001:db8::1", "2001:db8:1::5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			spec := specFor(l, "addr1")
			spec.Secure.Protected, spec.Remote.Protected = nil, nil
			for _, p := range c.secure {
				spec.Secure.Protected = append(spec.Secure.Protected, netip.MustParsePrefix(p))
			}
			for _, p := range c.remote {
				spec.Remote.Protected = append(spec.Remote.Protected, netip.MustParsePrefix(p))
			}
			es, err := openEnds(spec)
			require.NoError(t, err)
			defer es.close()
			dirs, err := es.probeDirs(&link{spec: spec})
			require.NoError(t, err)
			assert.Equal(t, c.wantSrc, dirs[secureToRemote].src.String())
			assert.Equal(t, c.wantDst, dirs[secureToRemote].dst.String())
			assert.Equal(t, dirs[secureToRemote].src, dirs[remoteToSecure].dst)
			assert.Equal(t, dirs[secureToRemote].dst, dirs[remoteToSecure].src)
			assert.Equal(t, l.A, dirs[secureToRemote].from.host)
			assert.Equal(t, l.B, dirs[secureToRemote].to.host)
		})
	}
}
