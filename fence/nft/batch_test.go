package nft

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
)

// These tests need neither root nor a kernel: the Fencer talks to a fake
// nftables (google/nftables' recorder style, through WithTestDial) that
// records every batch it commits and keeps just enough state (chains,
// rules with handles) to answer the Fencer's dumps the way the kernel
// does, so a second call sees what the first installed.

const subsys = unix.NFNL_SUBSYS_NFTABLES << 8

func msgType(m netlink.Message) int { return int(m.Header.Type) &^ subsys }

type chainKey struct {
	family       byte
	table, chain string
}

type fakeRule struct {
	handle uint64
	msg    netlink.Message
}

// fakeNFT is the fake kernel.
type fakeNFT struct {
	mu      sync.Mutex
	chains  map[chainKey]netlink.Message
	order   []chainKey
	rules   map[chainKey][]fakeRule
	handle  uint64
	batches [][]netlink.Message // each committed batch, without begin/end
}

func newFakeNFT() *fakeNFT {
	return &fakeNFT{chains: map[chainKey]netlink.Message{}, rules: map[chainKey][]fakeRule{}}
}

// fencer returns a Fencer on k; every port exists, on bridge br0.
func (k *fakeNFT) fencer() *Fencer {
	f := New()
	f.now = func() time.Time { return time.Unix(1700000000, 0) }
	f.testDial = k.serve
	f.ports = func(specs []fence.Spec) (map[string]string, error) {
		m := map[string]string{}
		for _, s := range specs {
			m[s.Port] = "br0"
		}
		return m, nil
	}
	return f
}

func attrs(m netlink.Message) map[uint16][]byte {
	out := map[uint16][]byte{}
	ad, err := netlink.NewAttributeDecoder(m.Data[4:])
	if err != nil {
		return out
	}
	for ad.Next() {
		out[ad.Type()] = ad.Bytes()
	}
	return out
}

func str(b []byte) string { return strings.TrimRight(string(b), "\x00") }

func (k *fakeNFT) serve(req []netlink.Message) ([]netlink.Message, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(req) == 0 {
		return nil, io.EOF
	}
	if req[0].Header.Type == unix.NFNL_MSG_BATCH_BEGIN {
		var body []netlink.Message
		var acks []netlink.Message
		for _, m := range req {
			if m.Header.Type == unix.NFNL_MSG_BATCH_BEGIN || m.Header.Type == unix.NFNL_MSG_BATCH_END {
				continue
			}
			body = append(body, m)
			k.apply(m)
			if m.Header.Flags&netlink.Acknowledge != 0 {
				acks = append(acks, netlink.Message{Header: netlink.Header{Type: netlink.Error,
					Sequence: m.Header.Sequence, PID: m.Header.PID}, Data: make([]byte, 4)})
			}
		}
		k.batches = append(k.batches, body)
		return acks, nil
	}
	m := req[0]
	var out []netlink.Message
	reply := func(typ int, data []byte) {
		out = append(out, netlink.Message{Header: netlink.Header{Type: netlink.HeaderType(subsys | typ),
			Flags: netlink.Multi, Sequence: m.Header.Sequence, PID: m.Header.PID}, Data: data})
	}
	switch msgType(m) {
	case unix.NFT_MSG_GETCHAIN:
		for _, key := range k.order {
			if key.family == m.Data[0] {
				reply(unix.NFT_MSG_NEWCHAIN, k.chains[key].Data)
			}
		}
	case unix.NFT_MSG_GETRULE:
		a := attrs(m)
		key := chainKey{m.Data[0], str(a[unix.NFTA_RULE_TABLE]), str(a[unix.NFTA_RULE_CHAIN])}
		for _, r := range k.rules[key] {
			h := netlink.Attribute{Type: unix.NFTA_RULE_HANDLE, Data: binary.BigEndian.AppendUint64(nil, r.handle)}
			b, _ := netlink.MarshalAttributes([]netlink.Attribute{h})
			reply(unix.NFT_MSG_NEWRULE, append(slices.Clone(r.msg.Data), b...))
		}
	}
	out = append(out, netlink.Message{Header: netlink.Header{Type: netlink.Done, Flags: netlink.Multi,
		Sequence: m.Header.Sequence, PID: m.Header.PID}, Data: make([]byte, 4)})
	return out, nil
}

// apply changes the state as the kernel would commit m.
func (k *fakeNFT) apply(m netlink.Message) {
	a, fam := attrs(m), m.Data[0]
	switch msgType(m) {
	case unix.NFT_MSG_NEWCHAIN:
		key := chainKey{fam, str(a[unix.NFTA_CHAIN_TABLE]), str(a[unix.NFTA_CHAIN_NAME])}
		if _, ok := k.chains[key]; !ok {
			k.chains[key] = m
			k.order = append(k.order, key)
		}
	case unix.NFT_MSG_DELCHAIN:
		key := chainKey{fam, str(a[unix.NFTA_CHAIN_TABLE]), str(a[unix.NFTA_CHAIN_NAME])}
		delete(k.chains, key)
		delete(k.rules, key)
		k.order = slices.DeleteFunc(k.order, func(c chainKey) bool { return c == key })
	case unix.NFT_MSG_NEWRULE:
		key := chainKey{fam, str(a[unix.NFTA_RULE_TABLE]), str(a[unix.NFTA_RULE_CHAIN])}
		if h, ok := a[unix.NFTA_RULE_HANDLE]; ok { // replace in place
			for i, r := range k.rules[key] {
				if r.handle == binary.BigEndian.Uint64(h) {
					k.rules[key][i].msg = m
				}
			}
			return
		}
		k.handle++
		k.rules[key] = append(k.rules[key], fakeRule{k.handle, m})
	case unix.NFT_MSG_DELRULE:
		key := chainKey{fam, str(a[unix.NFTA_RULE_TABLE]), str(a[unix.NFTA_RULE_CHAIN])}
		if h, ok := a[unix.NFTA_RULE_HANDLE]; ok {
			k.rules[key] = slices.DeleteFunc(k.rules[key], func(r fakeRule) bool { return r.handle == binary.BigEndian.Uint64(h) })
		} else {
			delete(k.rules, key) // flush
		}
	}
}

// ops summarises a batch: "NEWRULE bridge sealift forward" and so on.
func ops(batch []netlink.Message) []string {
	names := map[int]string{unix.NFT_MSG_NEWTABLE: "NEWTABLE", unix.NFT_MSG_NEWCHAIN: "NEWCHAIN", unix.NFT_MSG_DELCHAIN: "DELCHAIN",
		unix.NFT_MSG_NEWRULE: "NEWRULE", unix.NFT_MSG_DELRULE: "DELRULE", unix.NFT_MSG_DELTABLE: "DELTABLE"}
	fams := map[byte]string{unix.NFPROTO_BRIDGE: "bridge", unix.NFPROTO_INET: "inet"}
	var out []string
	for _, m := range batch {
		a := attrs(m)
		var name string
		switch msgType(m) {
		case unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN:
			name = str(a[unix.NFTA_CHAIN_NAME])
		case unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE:
			name = str(a[unix.NFTA_RULE_CHAIN])
		}
		op := names[msgType(m)] + " " + fams[m.Data[0]]
		if name != "" {
			op += " " + name
		}
		if msgType(m) == unix.NFT_MSG_DELRULE {
			if _, ok := a[unix.NFTA_RULE_HANDLE]; !ok {
				op = "FLUSH " + fams[m.Data[0]] + " " + name
			}
		}
		out = append(out, op)
	}
	return out
}

func count(ss []string, s string) int {
	n := 0
	for _, x := range ss {
		if x == s {
			n++
		}
	}
	return n
}

// jumps returns, per base chain, the VM chains it jumps to.
func (k *fakeNFT) jumps(t *testing.T, f *Fencer) map[string][]string {
	t.Helper()
	c, done, err := f.conn(context.Background())
	require.NoError(t, err)
	defer done()
	out := map[string][]string{}
	for _, b := range baseChains {
		rules, err := c.GetRules(b.table, b.chain())
		require.NoError(t, err)
		for _, r := range rules {
			for _, e := range r.Exprs {
				if v, ok := e.(*expr.Verdict); ok && v.Kind == expr.VerdictJump {
					out[b.table.Name+"/"+familyName(b)+"/"+b.name] = append(out[b.table.Name+"/"+familyName(b)+"/"+b.name], v.Chain)
				}
			}
		}
	}
	return out
}

func familyName(b baseChain) string {
	if b.table == bridgeTable {
		return "bridge"
	}
	return "inet"
}

var batchSpec = fence.Spec{VM: "vm-1", Port: "vm0", MAC: "02:00:00:00:00:01",
	Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10")}}

func TestBatchFirstFence(t *testing.T) {
	k := newFakeNFT()
	f := k.fencer()
	require.NoError(t, f.Fence(context.Background(), batchSpec))
	require.Len(t, k.batches, 1, "one transaction")
	o := ops(k.batches[0])
	id := chainID("vm-1")
	for _, ch := range []string{"bridge " + id + "-fwd", "bridge " + id + "-in", "bridge " + id + "-out", "inet " + id} {
		assert.Equal(t, 1, count(o, "NEWCHAIN "+ch), "chain %s created once", ch)
	}
	for _, b := range baseChains {
		assert.Equal(t, 1, count(o, "NEWRULE "+familyName(b)+" "+b.name), "one jump from %s %s", familyName(b), b.name)
	}
	assert.NotContains(t, strings.Join(o, "\n"), "FLUSH", "a new fence flushes nothing")
	// The fence is found again from the ruleset alone.
	got, err := f.List(context.Background())
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.True(t, sameSpec(got[0].Spec, batchSpec), "listed %+v", got[0].Spec)
}

func TestBatchIdenticalSpecSkipped(t *testing.T) {
	k := newFakeNFT()
	f := k.fencer()
	ctx := context.Background()
	require.NoError(t, f.Fence(ctx, batchSpec))
	require.Len(t, k.batches, 1)
	// The same spec (a fresh copy, MAC in another case): nothing is sent.
	again := batchSpec
	again.MAC = strings.ToUpper(again.MAC)
	again.Addrs = slices.Clone(batchSpec.Addrs)
	require.NoError(t, f.Fence(ctx, again))
	require.NoError(t, k.fencer().FenceAll(ctx, []fence.Spec{batchSpec}), "a new Fencer (after a restart) too")
	assert.Len(t, k.batches, 1, "identical spec: no transaction sent")
	// Only the changed one of two goes into the batch.
	other := batchSpec
	other.VM, other.Port = "vm-2", "vm2"
	require.NoError(t, f.FenceAll(ctx, []fence.Spec{batchSpec, other}))
	require.Len(t, k.batches, 2)
	assert.NotContains(t, strings.Join(ops(k.batches[1]), "\n"), chainID("vm-1"), "the unchanged fence was touched")
}

func TestBatchReplaceFlushesChains(t *testing.T) {
	k := newFakeNFT()
	f := k.fencer()
	ctx := context.Background()
	require.NoError(t, f.Fence(ctx, batchSpec))
	via := batchSpec
	via.AllowVia = []string{"wg0"}
	require.NoError(t, f.Fence(ctx, via))
	require.Len(t, k.batches, 2)
	o := ops(k.batches[1])
	id := chainID("vm-1")
	for _, ch := range []string{"bridge " + id + "-fwd", "bridge " + id + "-in", "bridge " + id + "-out", "inet " + id} {
		assert.Equal(t, 1, count(o, "FLUSH "+ch), "replace flushes %s", ch)
		assert.Zero(t, count(o, "NEWCHAIN "+ch), "replace re-creates %s", ch)
		assert.Zero(t, count(o, "DELCHAIN "+ch), "replace deletes %s", ch)
		assert.NotZero(t, count(o, "NEWRULE "+ch), "replace refills %s", ch)
	}
	for _, b := range baseChains {
		assert.Zero(t, count(o, "NEWRULE "+familyName(b)+" "+b.name), "replace adds a jump to %s %s", familyName(b), b.name)
	}
	got, err := f.List(ctx)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, []string{"wg0"}, got[0].AllowVia)
}

func TestBatchJumpsAddedOnce(t *testing.T) {
	k := newFakeNFT()
	f := k.fencer()
	ctx := context.Background()
	id1, id2 := chainID("vm-1"), chainID("vm-2")
	want := func(ids ...string) map[string][]string {
		m := map[string][]string{}
		for _, b := range baseChains {
			for _, id := range ids {
				m[tableName+"/"+familyName(b)+"/"+b.name] = append(m[tableName+"/"+familyName(b)+"/"+b.name], id+b.sub)
			}
		}
		return m
	}
	require.NoError(t, f.Fence(ctx, batchSpec))
	via := batchSpec
	via.AllowVia = []string{"wg0"}
	require.NoError(t, f.Fence(ctx, via))       // replace
	require.NoError(t, f.Fence(ctx, via))       // identical
	require.NoError(t, f.Fence(ctx, batchSpec)) // replace back
	assert.Equal(t, want(id1), k.jumps(t, f))
	other := batchSpec
	other.VM, other.Port = "vm-2", "vm2"
	require.NoError(t, f.Fence(ctx, other))
	assert.Equal(t, want(id1, id2), k.jumps(t, f))
	require.NoError(t, f.Lift(ctx, "vm-1"))
	assert.Equal(t, want(id2), k.jumps(t, f), "Lift removes only the lifted VM's jumps")
	assert.ErrorIs(t, f.Lift(ctx, "vm-1"), fence.ErrNotFenced)
}

// The Peers guard is rebuilt only when the union changes, and stays while
// any fence with Peers remains.
func TestBatchPeersGuard(t *testing.T) {
	k := newFakeNFT()
	f := k.fencer()
	ctx := context.Background()
	guardRules := func() (inet, bridge int) {
		return len(k.rules[chainKey{unix.NFPROTO_INET, tableName, "postrouting"}]),
			len(k.rules[chainKey{unix.NFPROTO_BRIDGE, tableName, "postrouting"}])
	}
	require.NoError(t, f.Fence(ctx, batchSpec))
	assert.NotContains(t, strings.Join(ops(k.batches[0]), "\n"), "FLUSH inet postrouting", "no Peers, no guard change")

	s1 := batchSpec
	s1.AllowVia, s1.Peers = []string{"wg0"}, []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}
	require.NoError(t, f.Fence(ctx, s1))
	i, b := guardRules()
	assert.Equal(t, 2, i, "inet guard: wg0 returns, 10.2.0.0/24 dropped")
	assert.Equal(t, 2, b)

	s2 := s1
	s2.VM, s2.Port, s2.Addrs = "vm-2", "vm2", []netip.Addr{netip.MustParseAddr("10.1.0.11")}
	n := len(k.batches)
	require.NoError(t, f.Fence(ctx, s2))
	for _, op := range ops(k.batches[n]) {
		assert.False(t, strings.HasPrefix(op, "FLUSH") || strings.HasPrefix(op, "NEWRULE") && strings.HasSuffix(op, " postrouting"),
			"same union: the guard is left alone, but %q", op)
	}

	require.NoError(t, f.Lift(ctx, "vm-1"))
	i, b = guardRules()
	assert.Equal(t, [2]int{2, 2}, [2]int{i, b}, "one of two fences lifted: the guard stays")

	require.NoError(t, f.Lift(ctx, "vm-2"))
	i, b = guardRules()
	assert.Equal(t, [2]int{0, 0}, [2]int{i, b}, "the last fence with Peers lifted: the guard is empty")
	assert.Contains(t, ops(k.batches[len(k.batches)-1]), "FLUSH inet postrouting")
}

// jumpHandles returns, per base chain, the handle and expressions of the
// jump into vm's chains.
func (k *fakeNFT) jumpRules(t *testing.T, f *Fencer, vm string) map[string]*nftables.Rule {
	t.Helper()
	c, done, err := f.conn(context.Background())
	require.NoError(t, err)
	defer done()
	out := map[string]*nftables.Rule{}
	for _, b := range baseChains {
		rules, err := c.GetRules(b.table, b.chain())
		require.NoError(t, err)
		for _, r := range rules {
			if comment(r.UserData) == jumpTag+chainID(vm) {
				out[familyName(b)+"/"+b.name] = r
			}
		}
	}
	return out
}

func hasSecpath(r *nftables.Rule) bool {
	for _, e := range r.Exprs {
		if m, ok := e.(*expr.Meta); ok && m.Key == metaKeySecpath {
			return true
		}
	}
	return false
}

// AllowIPsec changes the jumps from the inet input and forward hooks
// (decrypted packets skip the VM's chain there); replacing a fence with
// AllowIPsec toggled rewrites those two jumps in place (same handles),
// and only those; List finds AllowIPsec again.
func TestBatchAllowIPsecJumps(t *testing.T) {
	k := newFakeNFT()
	f := k.fencer()
	ctx := context.Background()
	require.NoError(t, f.Fence(ctx, batchSpec))
	before := k.jumpRules(t, f, "vm-1")
	require.Len(t, before, len(baseChains))
	for name, r := range before {
		assert.False(t, hasSecpath(r), "%s: a fence without AllowIPsec tests secpath", name)
	}

	ipsec := batchSpec
	ipsec.AllowIPsec = true
	n := len(k.batches)
	require.NoError(t, f.Fence(ctx, ipsec))
	require.Len(t, k.batches, n+1, "one transaction")
	after := k.jumpRules(t, f, "vm-1")
	require.Len(t, after, len(baseChains), "no jump added or lost")
	for name, r := range after {
		assert.Equal(t, before[name].Handle, r.Handle, "%s: the jump is replaced in place", name)
		want := name == "inet/input" || name == "inet/forward"
		assert.Equal(t, want, hasSecpath(r), "%s: secpath test", name)
	}
	got, err := f.List(ctx)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.True(t, got[0].AllowIPsec, "List: %+v", got[0].Spec)

	// The same spec again: nothing sent. Back to a full block: the plain jumps.
	n = len(k.batches)
	require.NoError(t, f.Fence(ctx, ipsec))
	assert.Len(t, k.batches, n)
	require.NoError(t, f.Fence(ctx, batchSpec))
	for name, r := range k.jumpRules(t, f, "vm-1") {
		assert.False(t, hasSecpath(r), "%s: secpath test left after AllowIPsec went", name)
		assert.Equal(t, before[name].Handle, r.Handle, "%s", name)
	}

	// A new fence with AllowIPsec gets the secpath jumps at once.
	other := ipsec
	other.VM, other.Port = "vm-2", "vm2"
	require.NoError(t, f.Fence(ctx, other))
	for name, r := range k.jumpRules(t, f, "vm-2") {
		assert.Equal(t, name == "inet/input" || name == "inet/forward", hasSecpath(r), "%s", name)
	}
	require.NoError(t, f.Lift(ctx, "vm-2"))
	assert.Empty(t, k.jumpRules(t, f, "vm-2"), "Lift removes the secpath jumps too")
}
