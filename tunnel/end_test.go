package tunnel_test

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/tunnel"
)

// fakeEnd is one host's LinkEnd in memory. Its private keys stay in it;
// calls records what reached it, to check that only Public parts did.
type fakeEnd struct {
	mu      sync.Mutex
	host    string
	ends    map[string]*fakeLinkEnd
	calls   []string
	failOn  string
	onEnter func(method string) error // called on entering each method
	private map[string][]byte
}

type fakeLinkEnd struct {
	st   tunnel.EndState
	peer tunnel.Public
}

var errBoom = errors.New("boom")

func newFakeEnd(host string) *fakeEnd {
	return &fakeEnd{host: host, ends: map[string]*fakeLinkEnd{}, private: map[string][]byte{}}
}

func (f *fakeEnd) enter(method string) error {
	f.calls = append(f.calls, method)
	if f.failOn == method {
		return errBoom
	}
	if f.onEnter != nil {
		return f.onEnter(method)
	}
	return nil
}

func (f *fakeEnd) Open(_ context.Context, spec tunnel.Spec, role tunnel.Role) (tunnel.EndState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Open"); err != nil {
		return tunnel.EndState{}, err
	}
	priv := make([]byte, 32)
	_, _ = rand.Read(priv)
	pub := sha256.Sum256(priv)
	f.private[spec.ID] = priv
	und := spec.Secure.Underlay
	if role == tunnel.RemoteRole {
		und = spec.Remote.Underlay
	}
	st := tunnel.EndState{Spec: spec, Role: role, Backend: "fake", Device: "fk" + spec.ID + string(role[0]),
		Public: tunnel.Public{Key: base64.StdEncoding.EncodeToString(pub[:]), Endpoint: netip.AddrPortFrom(und, 51820)}}
	f.ends[spec.ID] = &fakeLinkEnd{st: st}
	return st, nil
}

func (f *fakeEnd) Connect(_ context.Context, id string, peer tunnel.Public) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Connect"); err != nil {
		return err
	}
	e := f.ends[id]
	if e == nil {
		return tunnel.ErrNoLink
	}
	e.peer, e.st.Connected = peer, true
	return nil
}

func (f *fakeEnd) Activate(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Activate"); err != nil {
		return err
	}
	if f.ends[id] == nil {
		return tunnel.ErrNoLink
	}
	f.ends[id].st.Active = true
	return nil
}

func (f *fakeEnd) Verify(_ context.Context, id string) (tunnel.Proof, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Verify"); err != nil {
		return tunnel.Proof{}, err
	}
	if e := f.ends[id]; e == nil || !e.st.Connected {
		return tunnel.Proof{}, tunnel.ErrNotProven
	}
	return tunnel.Proof{Handshake: time.Now(), TxPackets: 1, RxPackets: 2, Detail: f.host}, nil
}

func (f *fakeEnd) Close(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.enter("Close"); err != nil {
		return err
	}
	delete(f.ends, id)
	delete(f.private, id)
	return nil
}

func (f *fakeEnd) List(context.Context) ([]tunnel.EndState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []tunnel.EndState
	for _, e := range f.ends {
		out = append(out, e.st)
	}
	return out, nil
}

func spec(id string) tunnel.Spec {
	return tunnel.Spec{ID: id, Kind: tunnel.WireGuard,
		Secure: tunnel.End{Host: "a", Underlay: netip.MustParseAddr("10.255.1.1"), Protected: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
		Remote: tunnel.End{Host: "b", Underlay: netip.MustParseAddr("203.0.113.1"), Protected: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}}}
}

// TestPair: each end makes its own key, the other end gets only its
// public part, and nothing the Pair returns carries a private key;
// Activate, Verify, List and Close reach both ends.
func TestPair(t *testing.T) {
	a, b := newFakeEnd("a"), newFakeEnd("b")
	p := tunnel.Pair{Secure: a, Remote: b}
	ctx := context.Background()
	l, err := p.Prepare(ctx, spec("l1"))
	require.NoError(t, err)
	assert.Equal(t, "fkl1s", l.SecureDevice)
	assert.Equal(t, "fkl1r", l.RemoteDevice)
	assert.False(t, l.Active)
	assert.Equal(t, b.ends["l1"].st.Public, a.ends["l1"].peer, "the secure end got the remote end's public part")
	assert.Equal(t, a.ends["l1"].st.Public, b.ends["l1"].peer)
	for _, priv := range [][]byte{a.private["l1"], b.private["l1"]} {
		for _, seen := range []string{fmt.Sprintf("%+v", l), fmt.Sprintf("%+v", a.ends["l1"].peer), fmt.Sprintf("%+v", b.ends["l1"].peer)} {
			assert.NotContains(t, seen, base64.StdEncoding.EncodeToString(priv), "a private key left its end")
		}
	}

	require.NoError(t, p.Activate(ctx, "l1"))
	proof, err := p.Verify(ctx, "l1")
	require.NoError(t, err)
	assert.Equal(t, uint64(2), proof.TxPackets)
	assert.Contains(t, proof.Detail, "secure end: a")
	ls, err := p.List(ctx)
	require.NoError(t, err)
	require.Len(t, ls, 1)
	assert.True(t, ls[0].Active)
	assert.Equal(t, "l1", ls[0].ID)
	require.NoError(t, p.Close(ctx, "l1"))
	assert.Empty(t, a.ends)
	assert.Empty(t, b.ends)
	require.NoError(t, p.Close(ctx, "l1"), "closing an absent link")
}

// TestPairActivatesBothAtOnce: the two ends are activated (and asked
// for proof) at once, not one after the other: each end here waits for
// the other to have started; a failing end is named.
func TestPairActivatesBothAtOnce(t *testing.T) {
	ctx := context.Background()
	a, b := newFakeEnd("a"), newFakeEnd("b")
	p := tunnel.Pair{Secure: a, Remote: b}
	_, err := p.Prepare(ctx, spec("l3"))
	require.NoError(t, err)
	started := map[*fakeEnd]chan struct{}{a: make(chan struct{}), b: make(chan struct{})}
	other := map[*fakeEnd]*fakeEnd{a: b, b: a}
	for _, e := range []*fakeEnd{a, b} {
		e.onEnter = func(method string) error {
			if method != "Activate" && method != "Verify" {
				return nil
			}
			close(started[e])
			select {
			case <-started[other[e]]:
				return nil
			case <-time.After(5 * time.Second):
				return fmt.Errorf("%s: the other end's %s never started while this one ran", e.host, method)
			}
		}
	}
	require.NoError(t, p.Activate(ctx, "l3"))
	started[a], started[b] = make(chan struct{}), make(chan struct{})
	_, err = p.Verify(ctx, "l3")
	require.NoError(t, err)

	a.onEnter, b.onEnter = nil, nil
	b.failOn = "Activate"
	err = p.Activate(ctx, "l3")
	require.ErrorIs(t, err, errBoom)
	assert.Contains(t, err.Error(), "remote end")
	assert.NotContains(t, err.Error(), "secure end")
}

// TestPairFailures: a failure at either end leaves no end behind; bad
// input touches nothing; a half-open link is listed for recovery.
func TestPairFailures(t *testing.T) {
	ctx := context.Background()
	for _, c := range []struct {
		end, method string
	}{{"remote", "Open"}, {"secure", "Connect"}, {"remote", "Connect"}} {
		t.Run(c.end+"-"+c.method, func(t *testing.T) {
			a, b := newFakeEnd("a"), newFakeEnd("b")
			map[string]*fakeEnd{"secure": a, "remote": b}[c.end].failOn = c.method
			_, err := tunnel.Pair{Secure: a, Remote: b}.Prepare(ctx, spec("l2"))
			require.ErrorIs(t, err, errBoom)
			assert.Contains(t, err.Error(), c.end+" end")
			assert.Empty(t, a.ends, "secure end left behind")
			assert.Empty(t, b.ends, "remote end left behind")
		})
	}
	a, b := newFakeEnd("a"), newFakeEnd("b")
	bad := spec("Bad!")
	_, err := tunnel.Pair{Secure: a, Remote: b}.Prepare(ctx, bad)
	require.ErrorIs(t, err, tunnel.ErrInvalid)
	assert.Empty(t, a.calls, "bad input reached an end")

	_, err = a.Open(ctx, spec("half"), tunnel.SecureRole)
	require.NoError(t, err)
	ls, err := tunnel.Pair{Secure: a, Remote: b}.List(ctx)
	require.NoError(t, err)
	require.Len(t, ls, 1)
	assert.Equal(t, "half", ls[0].ID)
	assert.False(t, ls[0].Active)
	assert.True(t, strings.HasPrefix(ls[0].SecureDevice, "fk"))
}

// TestHosts: links between any two of three hosts go to those hosts'
// ends; a host without an end is refused naming it; a new Hosts (a
// restarted controller) finds a link on the hosts and closes it.
func TestHosts(t *testing.T) {
	ctx := context.Background()
	ends := map[string]*fakeEnd{"a": newFakeEnd("a"), "b": newFakeEnd("b"), "c": newFakeEnd("c")}
	asLinkEnds := func() map[string]tunnel.LinkEnd {
		m := map[string]tunnel.LinkEnd{}
		for k, v := range ends {
			m[k] = v
		}
		return m
	}
	h := tunnel.NewHosts(asLinkEnds())
	ab := spec("ab")
	ac := spec("ac")
	ac.Remote.Host = "c"
	ac.Remote.Underlay = netip.MustParseAddr("203.0.113.9")
	for _, s := range []tunnel.Spec{ab, ac} {
		_, err := h.Prepare(ctx, s)
		require.NoError(t, err)
	}
	assert.Contains(t, ends["b"].ends, "ab")
	assert.NotContains(t, ends["b"].ends, "ac")
	assert.Contains(t, ends["c"].ends, "ac")
	assert.Len(t, ends["a"].ends, 2)
	require.NoError(t, h.Activate(ctx, "ac"))
	assert.True(t, ends["c"].ends["ac"].st.Active)
	assert.False(t, ends["b"].ends["ab"].st.Active)

	nowhere := spec("ax")
	nowhere.Remote.Host = "x"
	_, err := h.Prepare(ctx, nowhere)
	require.ErrorIs(t, err, tunnel.ErrInvalid)
	assert.ErrorContains(t, err, `Remote.Host "x"`)

	restarted := tunnel.NewHosts(asLinkEnds())
	ls, err := restarted.List(ctx)
	require.NoError(t, err)
	require.Len(t, ls, 2)
	assert.Equal(t, "ab", ls[0].ID)
	require.NoError(t, restarted.Activate(ctx, "ab"), "found on the hosts")
	require.NoError(t, restarted.Close(ctx, "ab"))
	assert.NotContains(t, ends["a"].ends, "ab")
	assert.NotContains(t, ends["b"].ends, "ab")
	require.NoError(t, restarted.Close(ctx, "ab"), "closing an absent link")
	assert.ErrorIs(t, restarted.Activate(ctx, "zz"), tunnel.ErrNoLink)
}
