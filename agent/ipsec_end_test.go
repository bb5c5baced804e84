package agent_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"google.golang.org/grpc"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/ipsec"
	"github.com/sealift/sealift/tunnel"
)

// TestInGuestIPsecEnds runs TestGuestRemoteIPsecEnds in a full-kernel
// guest (klab): this machine's kernel has no ESP.
func TestInGuestIPsecEnds(t *testing.T) {
	klab.Run(t, klab.Options{Run: "^TestGuestRemoteIPsecEnds$"})
}

// leakyEnd serves a LinkEnd and, once leak is set, appends it in hex to
// every Verify's Detail: the control that shows the key search below
// finds a key that crosses the network.
type leakyEnd struct {
	tunnel.LinkEnd
	mu   sync.Mutex
	leak []byte
}

func (e *leakyEnd) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	p, err := e.LinkEnd.Verify(ctx, id)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.leak != nil {
		p.Detail += " " + hex.EncodeToString(e.leak)
	}
	return p, err
}

// TestGuestRemoteIPsecEnds: real XFRM ends (ipsec.End) on hosts A and B,
// each behind its agent, composed by tunnel.Pair at the controller: each
// host derives its SA keys from its own X25519 key and the other end's
// public key, the two hosts' SAs agree, the VM at B and its peer at A
// talk through the link with nothing of theirs in clear on the wan (ESP
// only), and no SA key (read back from both kernels) appears in any RPC
// the controller made, in any form; a key an end leaks into a reply is
// found. (The ends' X25519 private keys are unexported and gone once the
// SAs are in; ipsec's TestGuestEndPair checks them.)
func TestGuestRemoteIPsecEnds(t *testing.T) {
	klab.RequireGuest(t)
	l := lab.New(t)
	h, err := lab.Handle(l.A)
	require.NoError(t, err)
	if port, err := h.LinkByName("vm0"); err == nil {
		require.NoError(t, h.LinkDel(port))
	}
	h.Close()
	require.NoError(t, netns.DeleteNamed(l.VM))
	vm, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	require.NoError(t, err)

	p := newPKI(t)
	rec := &recorder{}
	now := time.Now()
	leaky := &leakyEnd{LinkEnd: ipsec.NewEnd(l.B)}
	ends := map[string]tunnel.LinkEnd{}
	for name, e := range map[string]tunnel.LinkEnd{"host-a": ipsec.NewEnd(l.A), "host-b": leaky} {
		id, err := p.ca.Issue(agentpki.RoleAgent, name, now.Add(-time.Minute), now.Add(time.Hour))
		require.NoError(t, err)
		addr := p.serveAs(t, id, agent.WithLinkEnd(e))
		ccfg, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, name)
		require.NoError(t, err)
		c, err := agent.Dial(addr, ccfg, grpc.WithUnaryInterceptor(rec.intercept))
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		ends[name] = c.LinkEnd()
	}
	pair := tunnel.Pair{Secure: ends["host-a"], Remote: ends["host-b"]}
	ctx := context.Background()
	spec := tunnel.Spec{ID: "ri1", Kind: tunnel.IPsec, ProxyARP: true,
		Secure: tunnel.End{Host: l.A, Underlay: lab.AUplink, Protected: []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32)}},
		Remote: tunnel.End{Host: l.B, Underlay: lab.BUnderlay, Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}}
	link, err := pair.Prepare(ctx, spec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	assert.Equal(t, ipsec.Backend, link.Backend)

	// The SAs each host derived: same SPIs and keys at both.
	keys := map[string]map[int][]byte{}
	for _, host := range []string{l.A, l.B} {
		h, err := lab.Handle(host)
		require.NoError(t, err)
		ss, err := h.XfrmStateList(netlink.FAMILY_ALL)
		h.Close()
		require.NoError(t, err)
		keys[host] = map[int][]byte{}
		for _, s := range ss {
			if s.Reqid == int(ipsec.ReqID(spec.ID)) && s.Aead != nil {
				keys[host][s.Spi] = s.Aead.Key
			}
		}
	}
	require.Len(t, keys[l.A], 2)
	require.Equal(t, keys[l.A], keys[l.B], "the hosts' SAs differ")

	require.NoError(t, pair.Activate(ctx, spec.ID))
	wan, err := lab.StartCaptureWith(l.WAN, lab.CaptureOptions{IngressOnly: true, Classify: &lab.Classifier{
		Watch:    []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32), netip.PrefixFrom(lab.VMAddr, 32)},
		Underlay: []netip.Addr{lab.AUplink, lab.CoreToA, lab.CoreWAN, lab.WANCore, lab.WANB, lab.BUnderlay},
	}})
	require.NoError(t, err)
	t.Cleanup(func() { wan.Stop() })
	n, err := lab.Ping(l.Peer, lab.VMAddr, 5, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "the peer reaches the VM through the link")
	n, err = lab.Ping(vm, lab.PeerAddr, 5, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "and back")
	st := wan.Stop()
	assert.Zero(t, st.Watched, "the peer's or the VM's address in clear on the wan: %v", st.Samples)
	assert.GreaterOrEqual(t, st.ByKind[lab.KindESP], 20, "ESP on the wan")
	proof, err := pair.Verify(ctx, spec.ID)
	require.NoError(t, err)
	assert.GreaterOrEqual(t, proof.TxPackets, uint64(20), proof.Detail)
	ls, err := pair.List(ctx)
	require.NoError(t, err)
	require.Len(t, ls, 1)
	assert.True(t, ls[0].Active)
	assert.Equal(t, spec, ls[0].Spec, "the spec crosses intact")

	// Control: B's end leaks a key into one Verify reply.
	var leakKey []byte
	for _, k := range keys[l.B] {
		leakKey = k
		break
	}
	rec.mu.Lock()
	clean := len(rec.msgs)
	rec.mu.Unlock()
	leaky.mu.Lock()
	leaky.leak = leakKey
	leaky.mu.Unlock()
	_, err = pair.Verify(ctx, spec.ID)
	require.NoError(t, err)
	leaky.mu.Lock()
	leaky.leak = nil
	leaky.mu.Unlock()
	rec.mu.Lock()
	control := len(rec.msgs)
	rec.mu.Unlock()
	require.NoError(t, pair.Close(ctx, spec.ID))

	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.Greater(t, clean, 10)
	found := func(msgs [][]byte, key []byte) bool {
		for _, k := range [][]byte{key, key[:32]} {
			for _, form := range [][]byte{k, []byte(base64.StdEncoding.EncodeToString(k)), []byte(base64.RawStdEncoding.EncodeToString(k)),
				[]byte(hex.EncodeToString(k))} {
				for _, m := range msgs {
					if bytes.Contains(m, form) {
						return true
					}
				}
			}
		}
		return false
	}
	require.True(t, found(rec.msgs[clean:control], leakKey), "control: the key a Verify reply carried was not found; the check could not fail")
	msgs := append(append([][]byte(nil), rec.msgs[:clean]...), rec.msgs[control:]...)
	for spi, k := range keys[l.A] {
		assert.False(t, found(msgs, k), "the SA key of spi 0x%08x crossed the network", uint32(spi))
	}
}
