package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/tunnel"
)

// keyedEnd is an in-memory tunnel.LinkEnd whose private keys are real
// random bytes kept here: the test looks for them in every RPC.
type keyedEnd struct {
	mu   sync.Mutex
	ends map[string]*tunnel.EndState
	priv map[string][]byte
}

func newKeyedEnd() *keyedEnd {
	return &keyedEnd{ends: map[string]*tunnel.EndState{}, priv: map[string][]byte{}}
}

func (k *keyedEnd) Open(_ context.Context, spec tunnel.Spec, role tunnel.Role) (tunnel.EndState, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	priv := make([]byte, 32)
	_, _ = rand.Read(priv)
	pub := sha256.Sum256(priv)
	und := spec.Secure.Underlay
	if role == tunnel.RemoteRole {
		und = spec.Remote.Underlay
	}
	st := tunnel.EndState{Spec: spec, Role: role, Backend: "keyed", Device: "kd" + spec.ID,
		Public: tunnel.Public{Key: base64.StdEncoding.EncodeToString(pub[:]), Endpoint: netip.AddrPortFrom(und, 51820)}}
	k.ends[spec.ID], k.priv[spec.ID] = &st, priv
	return st, nil
}

func (k *keyedEnd) Connect(_ context.Context, id string, peer tunnel.Public) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.ends[id]
	if e == nil {
		return tunnel.ErrNoLink
	}
	e.Connected = true
	return nil
}

func (k *keyedEnd) Activate(_ context.Context, id string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.ends[id] == nil {
		return tunnel.ErrNoLink
	}
	k.ends[id].Active = true
	return nil
}

func (k *keyedEnd) Verify(_ context.Context, id string) (tunnel.Proof, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if e := k.ends[id]; e == nil || !e.Connected {
		return tunnel.Proof{}, tunnel.ErrNotProven
	}
	return tunnel.Proof{Handshake: time.Now(), TxPackets: 3}, nil
}

func (k *keyedEnd) Close(_ context.Context, id string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.ends, id)
	return nil
}

func (k *keyedEnd) List(context.Context) ([]tunnel.EndState, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []tunnel.EndState
	for _, e := range k.ends {
		out = append(out, *e)
	}
	return out, nil
}

// recorder keeps every request and response the controller's client
// sends and receives, marshaled as on the wire.
type recorder struct {
	mu   sync.Mutex
	msgs [][]byte
}

func (r *recorder) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range []any{req, reply} {
		if pm, ok := m.(proto.Message); ok {
			b, _ := proto.Marshal(pm)
			r.msgs = append(r.msgs, b)
		}
	}
	return err
}

// TestRemoteLinkEnds: a link between two hosts' ends behind agents,
// composed by tunnel.Pair at the controller: it prepares, activates,
// verifies, lists and closes over the network, and no private key
// material of either end appears in anything the controller sent or
// received (raw, base64 or hex), though both ends made keys.
func TestRemoteLinkEnds(t *testing.T) {
	p := newPKI(t)
	now := time.Now()
	rec := &recorder{}
	ends := map[string]*keyedEnd{"host-a": newKeyedEnd(), "host-b": newKeyedEnd()}
	clients := map[string]*agent.Client{}
	for name, e := range ends {
		id, err := p.ca.Issue(agentpki.RoleAgent, name, now.Add(-time.Minute), now.Add(time.Hour))
		require.NoError(t, err)
		addr := p.serveAs(t, id, agent.WithLinkEnd(e))
		ccfg, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, name)
		require.NoError(t, err)
		c, err := agent.Dial(addr, ccfg, grpc.WithUnaryInterceptor(rec.intercept))
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		clients[name] = c
	}
	pair := tunnel.Pair{Secure: clients["host-a"].LinkEnd(), Remote: clients["host-b"].LinkEnd()}
	ctx := context.Background()
	spec := tunnel.Spec{ID: "l1", Kind: tunnel.WireGuard, ProxyARP: true,
		Secure: tunnel.End{Underlay: netip.MustParseAddr("10.255.1.1"), Protected: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
		Remote: tunnel.End{Underlay: netip.MustParseAddr("203.0.113.1"), Protected: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}, MAC: "52:54:0a:01:00:0a"}}
	l, err := pair.Prepare(ctx, spec)
	require.NoError(t, err)
	assert.Equal(t, "kdl1", l.SecureDevice)
	require.NoError(t, pair.Activate(ctx, "l1"))
	_, err = pair.Verify(ctx, "l1")
	require.NoError(t, err)
	ls, err := pair.List(ctx)
	require.NoError(t, err)
	require.Len(t, ls, 1)
	assert.True(t, ls[0].Active)
	assert.Equal(t, spec, ls[0].Spec, "the spec crosses intact")
	require.NoError(t, pair.Close(ctx, "l1"))
	assert.ErrorIs(t, pair.Activate(ctx, "l1"), tunnel.ErrNoLink, "the sentinel crosses the network")

	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.NotEmpty(t, rec.msgs)
	for host, e := range ends {
		priv := e.priv["l1"]
		require.Len(t, priv, 32)
		for _, form := range [][]byte{priv, []byte(base64.StdEncoding.EncodeToString(priv)), []byte(hex.EncodeToString(priv))} {
			for _, m := range rec.msgs {
				assert.False(t, bytes.Contains(m, form), "%s's private key crossed the network", host)
			}
		}
	}
}

// TestLinkEndRefusesBadInput: at the agent, a request that does not
// decode is refused naming the field; the end never sees it.
func TestLinkEndRefusesBadInput(t *testing.T) {
	p := newPKI(t)
	e := newKeyedEnd()
	addr := p.serve(t, agent.WithLinkEnd(e))
	raw := agentpb.NewLinkEndClient(rawConn(t, p, addr))
	ctx := context.Background()
	for _, c := range []struct {
		call  func() error
		field string
	}{
		{func() error { _, err := raw.Open(ctx, &agentpb.OpenEndRequest{}); return err }, "spec is missing"},
		{func() error {
			_, err := raw.Open(ctx, &agentpb.OpenEndRequest{Spec: &agentpb.LinkSpec{Id: "l1", Kind: "wireguard",
				Secure: &agentpb.TunnelEnd{Underlay: "10.0.0.x"}}, Role: "secure"})
			return err
		}, `spec.secure.underlay "10.0.0.x"`},
		{func() error {
			_, err := raw.Open(ctx, &agentpb.OpenEndRequest{Spec: &agentpb.LinkSpec{Id: "l1", Kind: "wireguard",
				Secure: &agentpb.TunnelEnd{Underlay: "10.0.0.1", Protected: []string{"10.2.0.0/24"}},
				Remote: &agentpb.TunnelEnd{Underlay: "10.0.0.2", Protected: []string{"10.1.0.10/32"}}}, Role: "middle"})
			return err
		}, `role "middle"`},
		{func() error {
			_, err := raw.Connect(ctx, &agentpb.ConnectEndRequest{Id: "l1", Peer: &agentpb.Public{Key: "k", Endpoint: "10.0.0.1"}})
			return err
		}, `peer.endpoint "10.0.0.1"`},
		{func() error { _, err := raw.Activate(ctx, &agentpb.LinkID{Id: "toolongid"}); return err }, `id "toolongid"`},
	} {
		err := c.call()
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.ErrorContains(t, err, c.field)
	}
	assert.Empty(t, e.ends, "a refused request reached the end")
}

// TestRemoteListsEndsFoundInTheKernel: an end a host found in its kernel
// with no record of its spec or public key (an agent restarted without a
// state dir) is still listed over the network, by ID, kind and role, so
// recovery can close it; an end without a valid ID still fails the list.
func TestRemoteListsEndsFoundInTheKernel(t *testing.T) {
	p := newPKI(t)
	now := time.Now()
	e := newKeyedEnd()
	e.ends["r00abcd"] = &tunnel.EndState{Spec: tunnel.Spec{ID: "r00abcd", Kind: tunnel.IPsec}, Role: tunnel.RemoteRole,
		Backend: "xfrm", Connected: true}
	id, err := p.ca.Issue(agentpki.RoleAgent, "host-b", now.Add(-time.Minute), now.Add(time.Hour))
	require.NoError(t, err)
	addr := p.serveAs(t, id, agent.WithLinkEnd(e))
	ccfg, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, "host-b")
	require.NoError(t, err)
	c, err := agent.Dial(addr, ccfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	ctx := context.Background()
	ls, err := c.LinkEnd().List(ctx)
	require.NoError(t, err)
	require.Len(t, ls, 1)
	assert.Equal(t, "r00abcd", ls[0].Spec.ID)
	assert.Equal(t, tunnel.IPsec, ls[0].Spec.Kind)
	assert.Equal(t, tunnel.RemoteRole, ls[0].Role)
	assert.True(t, ls[0].Connected)
	require.NoError(t, c.LinkEnd().Close(ctx, "r00abcd"))
	assert.Empty(t, e.ends)

	e.ends["bad id!!!"] = &tunnel.EndState{Spec: tunnel.Spec{ID: "bad id!!!", Kind: tunnel.IPsec}, Role: tunnel.RemoteRole}
	_, err = c.LinkEnd().List(ctx)
	assert.ErrorIs(t, err, tunnel.ErrInvalid)
}
