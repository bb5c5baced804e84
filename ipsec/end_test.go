package ipsec

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

func newX25519(t testing.TB) *ecdh.PrivateKey {
	t.Helper()
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	return k
}

// TestDeriveBothEndsAgree: the secure and the remote end, each with its
// own private key and the other's public key, derive the same keys and
// SPIs for both directions; directions and links never share a key; the
// SPIs are valid, distinct per direction and tell the role.
func TestDeriveBothEndsAgree(t *testing.T) {
	s, r := newX25519(t), newX25519(t)
	ks, spiS, err := deriveLink(s, r.PublicKey(), tunnel.SecureRole, "l1")
	require.NoError(t, err)
	kr, spiR, err := deriveLink(r, s.PublicKey(), tunnel.RemoteRole, "l1")
	require.NoError(t, err)
	require.Equal(t, spiS, spiR, "both ends derive the same SPIs")
	for d := range ks {
		require.Len(t, ks[d].aead, 36, "rfc4106: 32-byte key + 4-byte salt")
		require.Equal(t, ks[d].aead, kr[d].aead, "direction %s: both ends derive the same key", dirName(d))
		require.Nil(t, ks[d].crypt)
		require.Greater(t, spiS[d], uint32(0xff), "SPI outside the reserved range")
	}
	require.NotEqual(t, ks[0].aead, ks[1].aead, "the directions share a key")
	require.NotEqual(t, ks[0].aead[32:], ks[1].aead[32:], "the directions share a salt")
	require.NotEqual(t, spiS[0], spiS[1])
	role, ok := spiRole(spiS[secureToRemote])
	require.True(t, ok)
	require.Equal(t, tunnel.SecureRole, role, "the secure end's out SPI")
	role, ok = spiRole(spiS[remoteToSecure])
	require.True(t, ok)
	require.Equal(t, tunnel.RemoteRole, role, "the remote end's out SPI")

	// Another link with the same key pairs, the roles swapped, or another
	// pair: different keys.
	other, _, err := deriveLink(s, r.PublicKey(), tunnel.SecureRole, "l2")
	require.NoError(t, err)
	swapped, _, err := deriveLink(r, s.PublicKey(), tunnel.SecureRole, "l1")
	require.NoError(t, err)
	fresh, _, err := deriveLink(newX25519(t), r.PublicKey(), tunnel.SecureRole, "l1")
	require.NoError(t, err)
	for d := range ks {
		for name, o := range map[string]keySet{"another link": other, "swapped roles": swapped, "another key pair": fresh} {
			require.NotEqual(t, ks[d].aead, o[d].aead, "%s: direction %s shares the key", name, dirName(d))
		}
	}
	ks.wipe()
	require.Equal(t, make([]byte, 36), ks[0].aead, "wipe zeroes the key")
}

// TestDeriveRefusesBadKeys: a peer key that is not base64, not 32 bytes,
// or of low order (no shared secret) is tunnel.ErrInvalid naming the
// field and the value.
func TestDeriveRefusesBadKeys(t *testing.T) {
	for name, c := range map[string]struct{ key, want string }{
		"base64": {"not*base64", `Public.Key "not*base64" is not base64`},
		"length": {base64.StdEncoding.EncodeToString(make([]byte, 31)), "holds 31 bytes"},
	} {
		_, err := parsePublicKey(c.key)
		require.ErrorIs(t, err, tunnel.ErrInvalid, name)
		require.ErrorContains(t, err, c.want, name)
	}
	zero, err := parsePublicKey(base64.StdEncoding.EncodeToString(make([]byte, 32)))
	require.NoError(t, err)
	_, _, err = deriveLink(newX25519(t), zero, tunnel.SecureRole, "l1")
	require.ErrorIs(t, err, tunnel.ErrInvalid)
	require.ErrorContains(t, err, "Public.Key")
}

// secretForms are the ways a secret could show up in text: raw, base64
// (padded, raw, URL), hex (both cases).
func secretForms(secret []byte) [][]byte {
	return [][]byte{secret, []byte(base64.StdEncoding.EncodeToString(secret)), []byte(base64.RawStdEncoding.EncodeToString(secret)),
		[]byte(base64.URLEncoding.EncodeToString(secret)), []byte(hex.EncodeToString(secret)), []byte(strings.ToUpper(hex.EncodeToString(secret)))}
}

// leaked returns the names of the secrets found, in any form, in any of
// the values (marshaled with %+v, %#v and JSON) or texts.
func leaked(t *testing.T, secrets map[string][]byte, values []any, texts ...string) []string {
	t.Helper()
	var hay [][]byte
	for _, v := range values {
		j, err := json.Marshal(v)
		require.NoError(t, err)
		hay = append(hay, j, fmt.Appendf(nil, "%+v", v), fmt.Appendf(nil, "%#v", v))
	}
	for _, s := range texts {
		hay = append(hay, []byte(s))
	}
	var found []string
	for name, s := range secrets {
		require.NotEmpty(t, s, name)
	search:
		for _, f := range secretForms(s) {
			for _, h := range hay {
				if bytes.Contains(h, f) {
					found = append(found, name)
					break search
				}
			}
		}
	}
	return found
}

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// privateKey returns the private key an End holds for id (nil once wiped).
func privateKey(e *End, id string) []byte {
	e.mu.Lock()
	defer e.mu.Unlock()
	if o := e.ends[id]; o != nil && o.priv != nil {
		return o.priv.Bytes()
	}
	return nil
}

// TestEndRefusesBadInput: bad IDs, roles, specs, peer keys and endpoints
// are tunnel.ErrInvalid naming the field and the value, and nothing is
// installed on the host.
func TestEndRefusesBadInput(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	ctx := context.Background()
	e := NewEnd(l.A)
	spec := specFor(l, "bad1")
	for name, c := range map[string]struct {
		spec tunnel.Spec
		role tunnel.Role
		want string
	}{
		"empty id": {func() tunnel.Spec { s := spec; s.ID = ""; return s }(), tunnel.SecureRole, `ID ""`},
		"role":     {spec, "middle", `role "middle"`},
		"kind":     {func() tunnel.Spec { s := spec; s.Kind = tunnel.WireGuard; return s }(), tunnel.SecureRole, `Kind "wireguard"`},
		"family": {func() tunnel.Spec { s := spec; s.Remote.Underlay = netip.MustParseAddr("2001:db8::1"); return s }(),
			tunnel.SecureRole, "differ in family"},
	} {
		_, err := e.Open(ctx, c.spec, c.role)
		require.ErrorIs(t, err, tunnel.ErrInvalid, name)
		require.ErrorContains(t, err, c.want, name)
	}
	_, err := NewEnd(l.Prefix+"-nohost").Open(ctx, spec, tunnel.SecureRole)
	require.ErrorIs(t, err, tunnel.ErrInvalid)
	require.ErrorIs(t, err, host.ErrNotFound)
	require.ErrorContains(t, err, l.Prefix+"-nohost")

	st, err := e.Open(ctx, spec, tunnel.SecureRole)
	require.NoError(t, err)
	before, _ := dumpOurs(t, l.A, ReqID(spec.ID))
	good := tunnel.Public{Key: base64.StdEncoding.EncodeToString(newX25519(t).PublicKey().Bytes()), Endpoint: netip.AddrPortFrom(lab.BUnderlay, 0)}
	for name, c := range map[string]struct {
		id   string
		peer tunnel.Public
		want string
	}{
		"empty id":      {"", good, `ID ""`},
		"bad id":        {"Bad!", good, `ID "Bad!"`},
		"empty key":     {spec.ID, tunnel.Public{Endpoint: good.Endpoint}, "Public.Key is empty"},
		"key base64":    {spec.ID, tunnel.Public{Key: "@@@", Endpoint: good.Endpoint}, `Public.Key "@@@" is not base64`},
		"key length":    {spec.ID, tunnel.Public{Key: "AAAA", Endpoint: good.Endpoint}, `Public.Key "AAAA" holds 3 bytes`},
		"no endpoint":   {spec.ID, tunnel.Public{Key: good.Key}, "Public.Endpoint"},
		"wrong address": {spec.ID, tunnel.Public{Key: good.Key, Endpoint: netip.MustParseAddrPort("192.0.2.9:0")}, `Public.Endpoint "192.0.2.9:0"`},
		"port":          {spec.ID, tunnel.Public{Key: good.Key, Endpoint: netip.AddrPortFrom(lab.BUnderlay, 51820)}, `Public.Endpoint "203.0.113.1:51820"`},
	} {
		err := e.Connect(ctx, c.id, c.peer)
		require.ErrorIs(t, err, tunnel.ErrInvalid, name)
		require.ErrorContains(t, err, c.want, name)
	}
	for name, f := range map[string]func(string) error{
		"Activate": func(id string) error { return e.Activate(ctx, id) },
		"Verify":   func(id string) error { _, err := e.Verify(ctx, id); return err },
		"Close":    func(id string) error { return e.Close(ctx, id) },
	} {
		require.ErrorIs(t, f(""), tunnel.ErrInvalid, name)
		require.ErrorContains(t, f(""), `ID ""`, name)
	}
	require.ErrorIs(t, e.Activate(ctx, spec.ID), tunnel.ErrInvalid, "Activate before Connect")
	after, _ := dumpOurs(t, l.A, ReqID(spec.ID))
	require.Equal(t, before, after, "bad input touched the host's policies")
	_, ss := dumpOurs(t, l.A, ReqID(spec.ID))
	require.Empty(t, ss)
	require.NotNil(t, privateKey(e, spec.ID), "bad input cost the end its private key")
	require.Equal(t, spec, st.Spec)
	require.NoError(t, e.Close(ctx, spec.ID))
	if p, s := countAll(t, l.A); p+s != 0 {
		t.Fatalf("host A: %d policies, %d SAs after Close", p, s)
	}
}

// TestEndOpenOnHost runs on this machine's kernel (policies, no ESP):
// Open makes a key pair and installs blocking policies; only the public
// key leaves (Open, List, the logs: the private key in none of them, a
// planted copy is caught); Connect needs ESP and, failing, leaves no SA
// and keeps the private key; Close removes exactly the end.
func TestEndOpenOnHost(t *testing.T) {
	lab.RequireRoot(t)
	if klab.InGuest() {
		t.Skip("TestGuestEnd* cover the guest")
	}
	l := lab.New(t)
	ctx := context.Background()
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a, b := NewEnd(l.A, WithEndLogger(log)), NewEnd(l.B, WithEndLogger(log))
	spec := specFor(l, "open1")
	sa, err := a.Open(ctx, spec, tunnel.SecureRole)
	require.NoError(t, err)
	sb, err := b.Open(ctx, spec, tunnel.RemoteRole)
	require.NoError(t, err)
	_, err = a.Open(ctx, spec, tunnel.SecureRole)
	require.ErrorIs(t, err, tunnel.ErrExists)

	require.Equal(t, Backend, sa.Backend)
	require.Empty(t, sa.Device)
	require.Equal(t, netip.AddrPortFrom(lab.AUplink, 0), sa.Public.Endpoint)
	require.Equal(t, netip.AddrPortFrom(lab.BUnderlay, 0), sb.Public.Endpoint)
	privA, privB := privateKey(a, spec.ID), privateKey(b, spec.ID)
	require.Len(t, privA, 32)
	k, err := ecdh.X25519().NewPrivateKey(privA)
	require.NoError(t, err)
	require.Equal(t, base64.StdEncoding.EncodeToString(k.PublicKey().Bytes()), sa.Public.Key, "Public.Key is the end's X25519 public key")
	for _, h := range []string{l.A, l.B} {
		ps, ss := dumpOurs(t, h, ReqID(spec.ID))
		require.Len(t, ps, 3, "host %s: out, in, fwd", h)
		require.Empty(t, ss)
		for _, p := range ps {
			require.Equal(t, netlinkBlock, p.Action, "host %s: %s", h, selector(p))
		}
	}

	la, err := a.List(ctx)
	require.NoError(t, err)
	require.Equal(t, []tunnel.EndState{sa}, la)
	secrets := map[string][]byte{"A's private key": privA, "B's private key": privB}
	values := []any{sa, sb, la}
	require.Empty(t, leaked(t, secrets, values, logs.String()), "a private key left its End")
	// Control: the same check finds a key planted in a returned value.
	planted := sa
	planted.Public.Key = base64.StdEncoding.EncodeToString(privB)
	require.Equal(t, []string{"B's private key"}, leaked(t, secrets, append(values, planted)), "control: the check misses a planted key")
	require.Equal(t, []string{"A's private key"}, leaked(t, secrets, values, fmt.Sprintf("key=%x", privA)), "control: the check misses a logged key")

	err = a.Connect(ctx, spec.ID, sb.Public)
	if kernelHasESP(t) {
		require.NoError(t, err)
	} else {
		require.ErrorIs(t, err, tunnel.ErrKernelUnsupported)
		require.ErrorContains(t, err, "CONFIG_INET_ESP")
		_, ss := dumpOurs(t, l.A, ReqID(spec.ID))
		require.Empty(t, ss, "a failed Connect leaves no SA")
		require.Equal(t, privA, privateKey(a, spec.ID), "a failed Connect keeps the private key for another try")
		require.Empty(t, leaked(t, secrets, nil, err.Error()), "the error holds a key")
	}
	require.NoError(t, a.Close(ctx, spec.ID))
	require.NoError(t, a.Close(ctx, spec.ID), "closing an absent end")
	require.Nil(t, privateKey(a, spec.ID))
	if p, s := countAll(t, l.A); p+s != 0 {
		t.Fatalf("host A: %d policies, %d SAs after Close", p, s)
	}
	ps, _ := dumpOurs(t, l.B, ReqID(spec.ID))
	require.Len(t, ps, 3, "B's end is B's: closing A's leaves it")
	require.NoError(t, b.Close(ctx, spec.ID))
	require.Empty(t, leaked(t, secrets, nil, logs.String()))
}

// TestEndPairFailsClosedWithoutESP: tunnel.Pair over two Ends on a
// kernel without ESP: Prepare fails at the first Connect naming
// CONFIG_INET_ESP and closes both ends: nothing is left on either host.
func TestEndPairFailsClosedWithoutESP(t *testing.T) {
	lab.RequireRoot(t)
	if klab.InGuest() || kernelHasESP(t) {
		t.Skip("this kernel has ESP; TestGuestEnd* cover the working path")
	}
	l := lab.New(t)
	a, b := NewEnd(l.A), NewEnd(l.B)
	_, err := tunnel.Pair{Secure: a, Remote: b}.Prepare(context.Background(), specFor(l, "pair1"))
	require.ErrorIs(t, err, tunnel.ErrKernelUnsupported)
	require.ErrorContains(t, err, "secure end")
	for _, h := range []string{l.A, l.B} {
		p, s := countAll(t, h)
		require.Zero(t, p+s, "host %s: %d policies, %d SAs left", h, p, s)
	}
	for _, e := range []*End{a, b} {
		ends, err := e.List(context.Background())
		require.NoError(t, err)
		require.Empty(t, ends)
	}
}

// TestEndRecoversOpenedEnds: Ends that "die" after Open (this kernel
// needs no ESP for that). Without a state dir, a new End finds each end
// in the kernel (ID from the reqid, the role from the out policy, no
// public key), and closes it by that ID; with one, it lists the end as it
// was (ID, role, public key) and closes it, the record holds no key, and
// Connect says the key is gone.
func TestEndRecoversOpenedEnds(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	ctx := context.Background()
	spec := specFor(l, "rec1")
	roles := map[string]tunnel.Role{l.A: tunnel.SecureRole, l.B: tunnel.RemoteRole}
	for _, h := range []string{l.A, l.B} {
		_, err := NewEnd(h).Open(ctx, spec, roles[h])
		require.NoError(t, err)
	}
	for _, h := range []string{l.A, l.B} {
		e := NewEnd(h)
		ends, err := e.List(ctx)
		require.NoError(t, err)
		require.Len(t, ends, 1, "host %s", h)
		got := ends[0]
		want := fmt.Sprintf("r%06x", ReqID(spec.ID)&0xffffff)
		require.Equal(t, want, got.Spec.ID)
		require.Equal(t, roles[h], got.Role, "host %s: role from the out policy's SPI", h)
		require.False(t, got.Connected || got.Active)
		require.Equal(t, Backend, got.Backend)
		local, peer := got.Spec.Secure, got.Spec.Remote
		if got.Role == tunnel.RemoteRole {
			local, peer = peer, local
		}
		require.Equal(t, h, local.Host)
		if h == l.A {
			require.Equal(t, spec.Secure.Protected, local.Protected)
			require.Equal(t, spec.Remote.Underlay, peer.Underlay)
		} else {
			require.Equal(t, spec.Remote.Protected, local.Protected)
			require.Equal(t, spec.Secure.Underlay, peer.Underlay)
		}
		require.NoError(t, got.Spec.Validate(), "the recovered spec is a valid spec")
		require.NoError(t, e.Close(ctx, got.Spec.ID))
		p, s := countAll(t, h)
		require.Zero(t, p+s, "host %s after Close of the recovered end", h)
	}

	dir := t.TempDir()
	a := NewEnd(l.A, WithEndStateDir(dir))
	st, err := a.Open(ctx, spec, tunnel.SecureRole)
	require.NoError(t, err)
	priv := privateKey(a, spec.ID)
	rec, err := os.ReadFile(filepath.Join(dir, "end-"+spec.ID+".json"))
	require.NoError(t, err)
	require.Empty(t, leaked(t, map[string][]byte{"private key": priv}, nil, string(rec)), "the state file holds the key")
	require.Contains(t, string(rec), st.Public.Key, "the state file holds the public key")

	again := NewEnd(l.A, WithEndStateDir(dir))
	ends, err := again.List(ctx)
	require.NoError(t, err)
	require.Equal(t, []tunnel.EndState{st}, ends)
	err = again.Connect(ctx, spec.ID, tunnel.Public{Key: base64.StdEncoding.EncodeToString(newX25519(t).PublicKey().Bytes()), Endpoint: netip.AddrPortFrom(lab.BUnderlay, 0)})
	require.ErrorIs(t, err, tunnel.ErrInvalid)
	require.ErrorContains(t, err, "private key is gone")
	require.NoError(t, again.Close(ctx, spec.ID))
	_, err = os.Stat(filepath.Join(dir, "end-"+spec.ID+".json"))
	require.True(t, errors.Is(err, os.ErrNotExist), "state file after Close: %v", err)
	p, s := countAll(t, l.A)
	require.Zero(t, p+s)
	assert.Empty(t, must(NewEnd(l.A, WithEndStateDir(dir)).List(ctx)))
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
