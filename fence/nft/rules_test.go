package nft

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/expr"

	"github.com/sealift/sealift/fence"
)

// These tests need no kernel: they check the rules and tags Fence sends.

func TestTagsRoundTrip(t *testing.T) {
	s := fence.Spec{VM: "vm with spaces/ünïcode \"quoted\"", Port: "tap0", MAC: "02:00:00:00:00:01",
		AllowVia: []string{"wg0"}, AllowMarks: []uint32{1, 0xffffffff}}
	for i := 0; i < 40; i++ { // long enough for several comments
		s.Addrs = append(s.Addrs, netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)))
	}
	since := time.Unix(1700000000, 123)
	tags, err := tagComments(recordOf(s, since))
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
	if chainID("a") != chainID("a") || chainID("a") == chainID("b") || !strings.HasPrefix(chainID("a"), "vm-") {
		t.Errorf("chainID: %s %s", chainID("a"), chainID("b"))
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
	rs := buildRules(base, "br0")
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
	rv := buildRules(via, "br0")
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
	if count(rv.inet, expr.VerdictReturn) != 5 {
		t.Errorf("inet with AllowVia: %d returns, want 5 (mark, in, out, ND, bridged)", count(rv.inet, expr.VerdictReturn))
	}
	if count(buildRules(via, "").inet, expr.VerdictReturn) != 4 {
		t.Error("inet without a bridge still has the bridged exception")
	}
}
