package nft

import (
	"bytes"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/fence"
)

// These tests need no kernel: they check the rules and tags Fence sends.

func TestTagsRoundTrip(t *testing.T) {
	s := fence.Spec{VM: "vm with spaces/ünïcode \"quoted\"", Port: "tap0", MAC: "02:00:00:00:00:01",
		AllowVia: []string{"wg0"}, AllowMarks: []uint32{1, 0xffffffff}, AllowIPsec: true}
	for i := 0; i < 40; i++ { // long enough for several comments
		s.Addrs = append(s.Addrs, netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)))
	}
	since := time.Unix(1700000000, 123)
	tags, err := tagComments(recordOf(s, since, 0))
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) < 3 {
		t.Fatalf("%d tags; want the spec split over several", len(tags))
	}
	var comments []string
	for i, tag := range tags {
		if len(tag) > 256 { // NFT_USERDATA_MAXLEN
			t.Errorf("tag %d is %d bytes", i, len(tag))
		}
		comments = append(comments, comment(tag))
	}
	// Other comments in the chain are ignored; order does not matter.
	comments = append([]string{"", "something else"}, comments...)
	comments[2], comments[len(comments)-1] = comments[len(comments)-1], comments[2]
	rec, ok, err := parseTags(comments)
	if err != nil || !ok {
		t.Fatalf("parseTags: %v %v", ok, err)
	}
	got := rec.fence()
	if !sameSpec(got.Spec, s) || !got.Since.Equal(since) || got.Backend != "nft" {
		t.Errorf("round trip: %+v, want %+v", got, s)
	}
	if _, ok, err := parseTags(comments[:len(comments)-1]); !ok || err == nil {
		t.Error("a missing piece was not reported")
	}
	if _, ok, _ := parseTags([]string{"x"}); ok {
		t.Error("a chain without tags was taken for a fence")
	}
	if comment([]byte{0, 200, 'a'}) != "" {
		t.Error("a truncated TLV was read")
	}
}

func TestChainIDStableAndDistinct(t *testing.T) {
	a1, a2, b := chainID("a"), chainID("a"), chainID("b")
	if a1 != a2 || a1 == b || !strings.HasPrefix(a1, "vm-") {
		t.Errorf("chainID: %s %s %s", a1, a2, b)
	}
}

func TestBuildRules(t *testing.T) {
	base := fence.Spec{VM: "v", Port: "vm0", MAC: "02:00:00:00:00:01",
		Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("fd00::10")}}
	via := base
	via.AllowVia, via.AllowMarks = []string{"wg0"}, []uint32{0x42}

	check := func(name string, rules [][]expr.Any) {
		t.Helper()
		for i, r := range rules {
			v, ok := r[len(r)-1].(*expr.Verdict)
			if !ok || (v.Kind != expr.VerdictDrop && v.Kind != expr.VerdictReturn) {
				t.Errorf("%s[%d]: ends in %T %+v; want drop or return", name, i, r[len(r)-1], r[len(r)-1])
				continue
			}
			if v.Kind == expr.VerdictDrop {
				if _, ok := r[len(r)-2].(*expr.Counter); !ok {
					t.Errorf("%s[%d]: drop without a counter", name, i)
				}
			}
		}
	}
	count := func(rules [][]expr.Any, kind expr.VerdictKind) int {
		n := 0
		for _, r := range rules {
			if v := r[len(r)-1].(*expr.Verdict); v.Kind == kind {
				n++
			}
		}
		return n
	}
	rs := buildRules(base, "br0", 0)
	for name, rules := range map[string][][]expr.Any{"fwd": rs.fwd, "in": rs.in, "out": rs.out, "inet": rs.inet} {
		check(name, rules)
		if n := count(rules, expr.VerdictReturn); n != 0 {
			t.Errorf("no-exception fence: %s has %d returns", name, n)
		}
	}
	// Port in/out, MAC src/dst, 2 addresses x src/dst.
	if len(rs.fwd) != 8 || len(rs.in) != 8 || len(rs.out) != 8 {
		t.Errorf("bridge rules: %d %d %d, want 8 each", len(rs.fwd), len(rs.in), len(rs.out))
	}
	rv := buildRules(via, "br0", 0)
	for name, rules := range map[string][][]expr.Any{"fwd": rv.fwd, "in": rv.in, "out": rv.out, "inet": rv.inet} {
		check(name, rules)
	}
	// fwd and inet: the mark and both directions of the link return first.
	for name, rules := range map[string][][]expr.Any{"fwd": rv.fwd, "inet": rv.inet} {
		for i := 0; i < 3; i++ {
			if v := rules[i][len(rules[i])-1].(*expr.Verdict); v.Kind != expr.VerdictReturn {
				t.Errorf("%s[%d] is not an exception", name, i)
			}
		}
	}
	// The inet chain leaves bridged (br0 -> br0) packets to the bridge chains.
	if count(rv.inet, expr.VerdictReturn) != 7 {
		t.Errorf("inet with AllowVia: %d returns, want 7 (mark, in, out, ND, reset v4 and v6, bridged)", count(rv.inet, expr.VerdictReturn))
	}
	if count(buildRules(via, "", 0).inet, expr.VerdictReturn) != 6 {
		t.Error("inet without a bridge still has the bridged exception")
	}
}

// The reset exception exists only with AllowVia, once per VM address,
// and only for fence.ResetMark, TCP to the VM without payload, ACK/RST.
func TestResetReturns(t *testing.T) {
	s := fence.Spec{VM: "v", Port: "vm0",
		Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("fd00::10")}}
	hasMark := func(rules [][]expr.Any) int {
		n := 0
		for _, r := range rules {
			for i, e := range r {
				if m, ok := e.(*expr.Meta); ok && m.Key == expr.MetaKeyMARK {
					c := r[i+1].(*expr.Cmp)
					if binaryutil.NativeEndian.Uint32(c.Data) == fence.ResetMark {
						n++
					}
				}
			}
		}
		return n
	}
	assert.Zero(t, hasMark(buildRules(s, "", 0).inet), "a full block lets reset packets in")
	s.AllowVia = []string{"wg0"}
	rs := resetReturns(s.Addrs[:1], s.Addrs[1:])
	require.Len(t, rs, 2)
	assert.Equal(t, 2, hasMark(buildRules(s, "", 0).inet))
	want4 := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1}, &expr.Cmp{Register: 1, Data: binaryutil.NativeEndian.PutUint32(fence.ResetMark)},
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{2}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}, &expr.Cmp{Register: 1, Data: []byte{10, 1, 0, 10}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 0, Len: 1}, &expr.Cmp{Register: 1, Data: []byte{0x45}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 2, Len: 2}, &expr.Cmp{Register: 1, Data: []byte{0, 40}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1}, &expr.Cmp{Register: 1, Data: []byte{6}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 12, Len: 1}, &expr.Cmp{Register: 1, Data: []byte{0x50}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1}, &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0xeb}, Xor: []byte{0}}, &expr.Cmp{Register: 1, Data: []byte{0}},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}
	assert.Equal(t, want4, rs[0])
}

func TestGuard(t *testing.T) {
	p := netip.MustParsePrefix
	specs := []fence.Spec{
		{VM: "a", AllowVia: []string{"wg1"}, Peers: []netip.Prefix{p("10.2.0.0/24"), p("fd00:2::/64")}},
		{VM: "b", AllowVia: []string{"wg2", "wg1"}, Peers: []netip.Prefix{p("10.2.0.0/24"), p("10.1.0.20/32")}},
		{VM: "c", AllowVia: []string{"vpn0"}}, // no Peers: its devices do not count
	}
	g := guardOf(specs)
	assert.Equal(t, []string{"wg1", "wg2"}, g.via)
	assert.Equal(t, []netip.Prefix{p("10.1.0.20/32"), p("10.2.0.0/24")}, g.v4)
	assert.Equal(t, []netip.Prefix{p("fd00:2::/64")}, g.v6)
	assert.True(t, g.equal(guardOf([]fence.Spec{specs[1], specs[0]})), "order matters")
	assert.True(t, guardOf(specs[2:]).empty())
	assert.Empty(t, guardOf(nil).rules(false))

	for _, bridge := range []bool{false, true} {
		rules := g.rules(bridge)
		require.Len(t, rules, 2+3, "bridge=%v: 2 devices, 3 prefixes", bridge)
		for _, r := range rules[:2] {
			assert.Equal(t, expr.VerdictReturn, r[len(r)-1].(*expr.Verdict).Kind)
		}
		for _, r := range rules[2:] {
			assert.Equal(t, expr.VerdictDrop, r[len(r)-1].(*expr.Verdict).Kind)
			assert.IsType(t, &expr.Counter{}, r[len(r)-2])
		}
		key := expr.MetaKeyNFPROTO
		if bridge {
			key = expr.MetaKeyPROTOCOL
		}
		assert.Equal(t, key, rules[2][0].(*expr.Meta).Key)
	}
	// 10.2.0.0/24: the address masked to /24; a /32 is compared whole.
	r := g.rules(false)[3]
	assert.Equal(t, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{255, 255, 255, 0}, Xor: []byte{0, 0, 0, 0}}, r[3])
	assert.Equal(t, &expr.Cmp{Register: 1, Data: []byte{10, 2, 0, 0}}, r[4])
	assert.IsType(t, &expr.Cmp{}, g.rules(false)[2][3], "a /32 needs no mask")
}

// isRtIPsec reports whether rule r starts with "rt ipsec exists".
func isRtIPsec(r []expr.Any) bool {
	rt, ok := r[0].(*expr.Rt)
	return ok && rt.Key == rtKeyXFRM && len(r) > 1 && bytes.Equal(r[1].(*expr.Cmp).Data, []byte{1})
}

// AllowIPsec: the bridge chains keep the port to its own MAC and
// addresses (as with AllowVia) instead of a full block; the inet chain
// lets IPsec-transformed packets return; no VM chain tests secpath (the
// output hook enters the inet chain, and the kernel refuses it there).
func TestBuildRulesAllowIPsec(t *testing.T) {
	s := fence.Spec{VM: "v", Port: "vm0", MAC: "02:00:00:00:00:01",
		Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("fd00::10")}, AllowIPsec: true}
	full := s
	full.AllowIPsec = false
	via := full
	via.AllowVia = []string{"wg0"}

	rs, rf, rv := buildRules(s, "br0", 0), buildRules(full, "br0", 0), buildRules(via, "br0", 0)
	assert.Equal(t, rf.fwd, rs.fwd, "frames between bridge ports: as blocked as without AllowIPsec")
	assert.Equal(t, len(rv.in)-2, len(rs.in), "bridge in: AllowVia's anti-spoof rules, without its two device returns")
	assert.Equal(t, len(rv.out)-2, len(rs.out))
	n := 0
	for _, r := range rs.inet {
		if isRtIPsec(r) {
			n++
			assert.Equal(t, expr.VerdictReturn, r[len(r)-1].(*expr.Verdict).Kind)
		}
	}
	assert.Equal(t, 1, n, "inet: one rt ipsec return")
	assert.True(t, isRtIPsec(rs.inet[0]), "inet: IPsec returns first")
	for name, rules := range map[string][][]expr.Any{"fwd": rs.fwd, "in": rs.in, "out": rs.out, "inet": rs.inet} {
		for i, r := range rules {
			for _, e := range r {
				if m, ok := e.(*expr.Meta); ok {
					assert.NotEqual(t, metaKeySecpath, m.Key, "%s[%d] tests secpath", name, i)
				}
				if name != "inet" {
					assert.NotEqual(t, "*expr.Rt", fmt.Sprintf("%T", e), "%s[%d]: rt in a bridge chain", name, i)
				}
			}
		}
	}
	for _, r := range rf.inet {
		assert.False(t, isRtIPsec(r), "full block: rt ipsec return")
	}
	// ND, the resets (v4, v6) and the bridged exception, as with AllowVia.
	returns := 0
	for _, r := range rs.inet {
		if r[len(r)-1].(*expr.Verdict).Kind == expr.VerdictReturn {
			returns++
		}
	}
	assert.Equal(t, 5, returns, "inet: rt ipsec, ND, reset v4 and v6, bridged")

	// The jumps: only inet input and forward skip decrypted packets.
	for _, b := range baseChains {
		j := jumpExprs(b, "vm-x", s)
		v := j[len(j)-1].(*expr.Verdict)
		assert.Equal(t, "vm-x"+b.sub, v.Chain)
		if secpathHook(b) {
			assert.Equal(t, cat(metaEq(metaKeySecpath, []byte{0}), jump("vm-x")), j, "%s %s", familyName(b), b.name)
		} else {
			assert.Equal(t, jump("vm-x"+b.sub), j, "%s %s", familyName(b), b.name)
		}
		assert.Equal(t, jump("vm-x"+b.sub), jumpExprs(b, "vm-x", full))
	}
}

// With AllowIPsec on a fence carrying Peers, the inet guard lets packets
// that will be IPsec-transformed leave; the bridge guard does not.
func TestGuardAllowIPsec(t *testing.T) {
	p := netip.MustParsePrefix
	a := fence.Spec{VM: "a", AllowIPsec: true, Peers: []netip.Prefix{p("10.1.0.20/32")}}
	b := fence.Spec{VM: "b", AllowIPsec: true} // no Peers: does not count
	assert.False(t, guardOf([]fence.Spec{b}).ipsec)
	g := guardOf([]fence.Spec{a, b})
	assert.True(t, g.ipsec)
	plain := a
	plain.AllowIPsec = false
	assert.False(t, g.equal(guardOf([]fence.Spec{plain})), "AllowIPsec changes the guard")

	inet := g.rules(false)
	require.Len(t, inet, 2)
	assert.True(t, isRtIPsec(inet[0]))
	assert.Equal(t, expr.VerdictReturn, inet[0][len(inet[0])-1].(*expr.Verdict).Kind)
	assert.Equal(t, expr.VerdictDrop, inet[1][len(inet[1])-1].(*expr.Verdict).Kind)
	br := g.rules(true)
	require.Len(t, br, 1, "bridge guard: the drop only")
	assert.False(t, isRtIPsec(br[0]))
}
