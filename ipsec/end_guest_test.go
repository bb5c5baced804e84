package ipsec

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// tapEnd is an End that remembers what its Opens returned and, for the
// test's leak checks, the private key each Open made (read from the End
// right after Open: Pair.Prepare connects, and so wipes it, before it
// returns).
type tapEnd struct {
	*End
	mu     sync.Mutex
	opened []tunnel.EndState
	privs  [][]byte
}

func (t *tapEnd) Open(ctx context.Context, spec tunnel.Spec, role tunnel.Role) (tunnel.EndState, error) {
	st, err := t.End.Open(ctx, spec, role)
	if err == nil {
		t.mu.Lock()
		t.opened = append(t.opened, st)
		t.privs = append(t.privs, privateKey(t.End, spec.ID))
		t.mu.Unlock()
	}
	return st, err
}

// saKeys returns the keys (rfc4106: key + salt) of reqid's SAs at host,
// by SPI.
func saKeys(t *testing.T, host string, reqid uint32) map[uint32][]byte {
	t.Helper()
	_, ss := dumpOurs(t, host, reqid)
	keys := map[uint32][]byte{}
	for _, s := range ss {
		require.NotNil(t, s.Aead, "host %s: SA spi 0x%08x is not rfc4106", host, uint32(s.Spi))
		require.Equal(t, "rfc4106(gcm(aes))", s.Aead.Name)
		keys[uint32(s.Spi)] = s.Aead.Key
	}
	return keys
}

// plainCapture counts, on wan's interface toward B, frames with marker
// or with the peer's or the VM's address in any IP header, and ESP.
func plainCapture(t *testing.T, l *lab.Lab, marker []byte) *lab.Capture {
	t.Helper()
	c, err := lab.StartCaptureWith(l.WAN, lab.CaptureOptions{Interface: "b0", Marker: marker, Classify: &lab.Classifier{
		Watch:    []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32), netip.PrefixFrom(lab.VMAddr, 32)},
		Underlay: []netip.Addr{lab.AUplink, lab.CoreWAN, lab.WANCore, lab.WANB, lab.BUnderlay},
	}})
	require.NoError(t, err)
	t.Cleanup(func() { c.Stop() })
	return c
}

// TestGuestEndPair: two hosts' Ends composed by tunnel.Pair, as a
// controller composes two agents' ends. The plain control leaks the
// marker and the addresses on the wan; the prepared link carries nothing;
// both hosts derived the same SA keys on their own, and neither End holds
// its private key any more; the active link carries the peer ↔ VM
// exchange as ESP only (counters rising, no marker and no peer or VM
// address in clear); the pair verifies; neither private key nor SA key is
// in anything Open, List, Verify or the logs gave out (a planted one is
// found); Close leaves nothing.
func TestGuestEndPair(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := movedVM(t)
	l := w.l
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7000")
	require.NoError(t, err)
	defer echo.Close()
	marker := newMarker()
	dst := "10.1.0.10:7000"
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, b := &tapEnd{End: NewEnd(l.A, WithEndLogger(log))}, &tapEnd{End: NewEnd(l.B, WithEndLogger(log))}
	pair := tunnel.Pair{Secure: a, Remote: b}

	// 1. Control: without the link the same traffic is plain on the wan.
	undo := w.plainPath(t, lab.VMAddr, true)
	warmUp(t, l.Peer, dst)
	capt := plainCapture(t, l, marker)
	n, err := lab.SendUDP(l.Peer, dst, marker, 5)
	st := capt.Stop()
	require.NoError(t, err)
	require.Equal(t, 5, n)
	require.GreaterOrEqual(t, st.Marker, 10, "control: the marker in clear was not counted; the check could not fail")
	require.GreaterOrEqual(t, st.Watched, 10, "control: the addresses in clear were not counted; the check could not fail")

	// 2. Prepared: the keys agree, the private keys are gone, the block
	// policies drop the traffic the clear routes still send.
	spec := specFor(l, "ep1")
	lk, err := pair.Prepare(ctx, spec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	require.False(t, lk.Active)
	require.Equal(t, Backend, lk.Backend)
	require.Nil(t, privateKey(a.End, spec.ID), "the secure end still holds its private key after Connect")
	require.Nil(t, privateKey(b.End, spec.ID), "the remote end still holds its private key after Connect")
	keysA, keysB := saKeys(t, l.A, ReqID(spec.ID)), saKeys(t, l.B, ReqID(spec.ID))
	require.Len(t, keysA, 2)
	require.Equal(t, keysA, keysB, "the hosts derived different SA keys or SPIs")
	var saKey [][]byte
	for spi, k := range keysA {
		require.Greater(t, spi, uint32(0xff))
		require.Len(t, k, 36)
		saKey = append(saKey, k)
	}
	require.NotEqual(t, saKey[0], saKey[1], "both directions have one key")
	before, _ := echo.Received()
	capt = plainCapture(t, l, marker)
	n, _ = lab.SendUDP(l.Peer, dst, marker, 2)
	st = capt.Stop()
	after, _ := echo.Received()
	require.Zero(t, n+after-before+st.Marker+st.Watched, "prepared link: %d replies, %d at the VM, %d marker and %d address frames on wan; want 0",
		n, after-before, st.Marker, st.Watched)
	undo()

	// 3. Active: encrypted, counted.
	require.NoError(t, pair.Activate(ctx, spec.ID))
	warmUp(t, l.Peer, dst)
	capt = plainCapture(t, l, marker)
	before, _ = echo.Received()
	n, err = lab.SendUDP(l.Peer, dst, marker, 20)
	st = capt.Stop()
	after, _ = echo.Received()
	require.NoError(t, err)
	require.Equal(t, 20, n, "echoes back through the link")
	require.Equal(t, 20, after-before, "datagrams at the VM")
	require.Zero(t, st.Marker, "marker in clear on wan")
	require.Zero(t, st.Watched, "peer or VM address in clear on wan: %v", st.Samples)
	require.GreaterOrEqual(t, st.ByProto[50], 40, "ESP frames on wan")
	require.Zero(t, st.Dropped)
	proof, err := pair.Verify(ctx, spec.ID)
	require.NoError(t, err)
	require.GreaterOrEqual(t, proof.TxPackets, uint64(40), "sent by both ends' SAs: %s", proof.Detail)
	require.GreaterOrEqual(t, proof.RxPackets, uint64(40), "decrypted by both ends' SAs: %s", proof.Detail)
	t.Logf("wan: %d ESP frames, nothing in clear; %s", st.ByProto[50], proof.Detail)

	// 4. Nothing secret left an End.
	links, err := pair.List(ctx)
	require.NoError(t, err)
	require.Len(t, links, 1)
	require.True(t, links[0].Active)
	la, err := a.List(ctx)
	require.NoError(t, err)
	lb, err := b.List(ctx)
	require.NoError(t, err)
	require.Len(t, a.privs, 1)
	require.Len(t, b.privs, 1)
	secrets := map[string][]byte{"secure end's private key": a.privs[0], "remote end's private key": b.privs[0]}
	for i, k := range saKey {
		secrets[fmt.Sprintf("SA key %d", i)] = k[:32]
		secrets[fmt.Sprintf("SA key+salt %d", i)] = k
	}
	values := []any{a.opened, b.opened, lk, links, la, lb, proof}
	require.Empty(t, leaked(t, secrets, values, logs.String(), proof.Detail), "a key left its End")
	planted := proof
	planted.Detail += " " + base64.StdEncoding.EncodeToString(saKey[1][:32])
	require.Equal(t, []string{"SA key 1"}, leaked(t, secrets, append(values, planted)), "control: the check misses a planted SA key")

	// 5. Close removes everything at both ends.
	require.NoError(t, pair.Close(ctx, spec.ID))
	assertGone(t, w, ReqID(spec.ID))
	n, _ = lab.SendUDP(l.Peer, dst, marker, 1)
	require.Zero(t, n, "after Close: no route left")
	require.Contains(t, logs.String(), "ipsec end active", "the logs were written: the leak check read something")
}

// TestGuestEndVerifyQuietAndBroken: a link over which nothing flows is
// proven by the ends' own probes (each end with its own host's counters:
// the remote end's Connect probe and the ends' Verify probes cross to
// the other end's receiving SA), nothing of them in clear on the wan. Two ends whose keys do not match (one was given a
// foreign public key) are not proven: the receiving SAs count integrity
// failures, and Verify says so.
func TestGuestEndVerifyQuietAndBroken(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := movedVM(t)
	l := w.l
	a, b := NewEnd(l.A), NewEnd(l.B)
	pair := tunnel.Pair{Secure: a, Remote: b}
	spec := specFor(l, "eq1")
	capt := plainCapture(t, l, probeMarker)
	_, err := pair.Prepare(ctx, spec)
	require.NoError(t, err)
	require.NoError(t, pair.Activate(ctx, spec.ID))
	proof, err := pair.Verify(ctx, spec.ID)
	require.NoError(t, err, "a quiet link")
	st := capt.Stop()
	t.Logf("quiet link: %s", proof.Detail)
	require.LessOrEqual(t, proof.TxPackets, uint64(8), "only probes were sent: %s", proof.Detail)
	require.Zero(t, st.Marker, "a probe in clear on wan")
	require.Zero(t, st.Watched, "a protected address in clear on wan: %v", st.Samples)
	require.Zero(t, st.ByProto[probeProto], "the probe protocol in clear on wan")
	require.GreaterOrEqual(t, st.ByProto[50], 3, "the probes as ESP on wan")
	require.NoError(t, pair.Close(ctx, spec.ID))
	assertGone(t, w, ReqID(spec.ID))

	// Broken: A's end is given a foreign key, B's end A's real one.
	spec = specFor(l, "eb1")
	sa, err := a.Open(ctx, spec, tunnel.SecureRole)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	_, err = b.Open(ctx, spec, tunnel.RemoteRole)
	require.NoError(t, err)
	foreign := tunnel.Public{Key: base64.StdEncoding.EncodeToString(newX25519(t).PublicKey().Bytes()), Endpoint: netip.AddrPortFrom(lab.BUnderlay, 0)}
	require.NoError(t, a.Connect(ctx, spec.ID, foreign))
	require.NoError(t, b.Connect(ctx, spec.ID, sa.Public))
	require.NoError(t, pair.Activate(ctx, spec.ID))
	capt = plainCapture(t, l, probeMarker)
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, e := range []*End{a, b} {
		_, err := e.Verify(vctx, spec.ID)
		require.ErrorIs(t, err, tunnel.ErrNotProven, "host %s", e.host)
		require.ErrorContains(t, err, "the receiving SA has decrypted nothing", "host %s", e.host)
		t.Logf("host %s: %v", e.host, err)
	}
	st = capt.Stop()
	require.Zero(t, st.Marker+st.Watched+st.ByProto[probeProto], "broken link: something in clear on wan")
	require.NoError(t, pair.Close(ctx, spec.ID))
	assertGone(t, w, ReqID(spec.ID))
}

// TestGuestEndRestart: both agents' Ends "die" with the link active (the
// kernel keeps everything; the private keys were gone already). B's new
// End reads its state dir: it lists the end as it was, re-announces, and
// with A's old End verifies the link, which still carries traffic. A's
// new End has no state dir: it finds the link in the kernel (ID "r" +
// reqid, secure role, connected, active) and closes it by that ID; B's
// closes its end and record. Nothing is left, and the record never held
// a key.
func TestGuestEndRestart(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := movedVM(t)
	l := w.l
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7000")
	require.NoError(t, err)
	defer echo.Close()
	dirB := t.TempDir()
	a := &tapEnd{End: NewEnd(l.A)}
	b := &tapEnd{End: NewEnd(l.B, WithEndStateDir(dirB))}
	pair := tunnel.Pair{Secure: a, Remote: b}
	spec := specFor(l, "er1")
	_, err = pair.Prepare(ctx, spec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	require.NoError(t, pair.Activate(ctx, spec.ID))
	warmUp(t, l.Peer, "10.1.0.10:7000")
	rec, err := os.ReadFile(filepath.Join(dirB, "end-"+spec.ID+".json"))
	require.NoError(t, err)
	secrets := map[string][]byte{"remote end's private key": b.privs[0]}
	for spi, k := range saKeys(t, l.B, ReqID(spec.ID)) {
		secrets[fmt.Sprintf("SA key 0x%08x", spi)] = k
	}
	require.Empty(t, leaked(t, secrets, nil, string(rec)), "the state file holds a key")

	b2 := NewEnd(l.B, WithEndStateDir(dirB))
	ends, err := b2.List(ctx)
	require.NoError(t, err)
	require.Len(t, ends, 1)
	require.Equal(t, b.opened[0].Spec, ends[0].Spec)
	require.Equal(t, b.opened[0].Public, ends[0].Public, "the public part survives in the record")
	require.Equal(t, tunnel.RemoteRole, ends[0].Role)
	require.True(t, ends[0].Connected && ends[0].Active)
	require.NoError(t, b2.Activate(ctx, spec.ID), "re-announce after a restart")
	n, err := lab.SendUDP(l.Peer, "10.1.0.10:7000", []byte("after restart"), 5)
	require.NoError(t, err)
	require.Equal(t, 5, n, "the link carries traffic across the restart")
	proof, err := tunnel.Pair{Secure: a, Remote: b2}.Verify(ctx, spec.ID)
	require.NoError(t, err, "the restarted end verifies from the kernel's SAs")
	t.Logf("after B's restart: %s", proof.Detail)

	a2 := NewEnd(l.A)
	ends, err = a2.List(ctx)
	require.NoError(t, err)
	require.Len(t, ends, 1)
	rid := fmt.Sprintf("r%06x", ReqID(spec.ID)&0xffffff)
	require.Equal(t, rid, ends[0].Spec.ID)
	require.Equal(t, tunnel.SecureRole, ends[0].Role)
	require.True(t, ends[0].Connected && ends[0].Active)
	require.Equal(t, spec.Secure.Protected, ends[0].Spec.Secure.Protected)
	require.Equal(t, spec.Remote.Underlay, ends[0].Spec.Remote.Underlay)
	require.Empty(t, ends[0].Public.Key, "a public key the kernel does not hold")
	require.NoError(t, a2.Close(ctx, rid))
	require.NoError(t, b2.Close(ctx, spec.ID))
	assertGone(t, w, ReqID(spec.ID))
	_, err = os.Stat(filepath.Join(dirB, "end-"+spec.ID+".json"))
	assert.True(t, os.IsNotExist(err), "state file after Close: %v", err)
	left, err := b2.List(ctx)
	require.NoError(t, err)
	require.Empty(t, left)
}
