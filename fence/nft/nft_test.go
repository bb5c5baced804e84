package nft

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/internal/fencetest"
	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/lab"
)

var (
	counters = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)

func newWorld(t *testing.T, brnf bool) *fencetest.World {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		lab.Missing(t, "nft (apt: nftables)")
	}
	return fencetest.NewWorld(t, func(l *lab.Lab) {
		// br_netfilter hands bridged packets to the inet hooks too; the
		// fence must be right either way.
		for _, k := range []string{"net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"} {
			err := lab.Sysctl(l.A, k, map[bool]string{false: "0", true: "1"}[brnf])
			if err != nil && brnf {
				lab.Missing(t, "br_netfilter (modprobe br_netfilter): "+err.Error())
			}
		}
	})
}

func ruleset(t *testing.T, ns string) string {
	t.Helper()
	out, err := lab.Exec(ns, "nft", "list", "ruleset")
	if err != nil {
		t.Fatal(err)
	}
	// Counters move with background traffic (ND, MLD); the rules do not.
	return counters.ReplaceAllString(string(out), "counter")
}

func dropped(t *testing.T, f *Fencer, vm string) uint64 {
	t.Helper()
	n, err := f.Dropped(context.Background(), vm)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestFenceTraffic runs the traffic scenarios with br_netfilter off and on.
func TestFenceTraffic(t *testing.T) {
	scenarios := []struct {
		name string
		fn   func(*testing.T, bool)
	}{
		{"BlocksAndLiftRestores", fenceBlocksAndLiftRestores},
		{"HoldsWhenGuestChangesMACAndIP", fenceHoldsWhenGuestChangesMACAndIP},
		{"ByMACAndIPAlone", fenceByMACAndIPAlone},
		{"AllowViaBridgePort", fenceAllowViaBridgePort},
		{"AllowViaRoutedDevice", fenceAllowViaRoutedDevice},
		{"AllowMarks", fenceAllowMarks},
		{"RoutedPort", fenceRoutedPort},
	}
	for _, sc := range scenarios {
		for _, brnf := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/brnf=%v", sc.name, brnf), func(t *testing.T) {
				t.Parallel()
				sc.fn(t, brnf)
			})
		}
	}
}

func fenceBlocksAndLiftRestores(t *testing.T, brnf bool) {
	w := newWorld(t, brnf)
	ctx := context.Background()
	f := New(WithHost(w.A))
	const n = 3

	if tr := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, n); !tr.Flows(n, true) {
		t.Fatalf("before the fence: %+v", tr)
	}
	if tr := w.Probe(t, w.Peer2, lab.VMAddr, netip.Addr{}, n); !tr.Flows(n, false) {
		t.Fatalf("before the fence, routed: %+v", tr)
	}
	fencetest.Must(t, f.Fence(ctx, w.Spec()))
	before := dropped(t, f, "vm-1")
	if tr := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, n); !tr.None() {
		t.Errorf("fenced, same LAN: %+v; want nothing sent back nor delivered", tr)
	}
	if tr := w.Probe(t, w.Peer2, lab.VMAddr, netip.Addr{}, n); !tr.None() {
		t.Errorf("fenced, routed: %+v; want nothing", tr)
	}
	after := dropped(t, f, "vm-1")
	// At least: 4 kinds of probes x n from peer, 3 x n from peer2.
	if after-before < 7*n {
		t.Errorf("drop counters rose by %d, want >= %d", after-before, 7*n)
	}
	t.Logf("drop counters: %d -> %d", before, after)

	fencetest.Must(t, f.Lift(ctx, "vm-1"))
	if tr := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, n); !tr.Flows(n, true) {
		t.Errorf("after lift: %+v", tr)
	}
	if tr := w.Probe(t, w.Peer2, lab.VMAddr, netip.Addr{}, n); !tr.Flows(n, false) {
		t.Errorf("after lift, routed: %+v", tr)
	}
	// Only the empty base chains stay (no VM chain, no rule); Remove
	// takes those too.
	if rs := ruleset(t, w.A); strings.Contains(rs, "vm-") || strings.Contains(rs, "drop") || strings.Contains(rs, "jump") {
		t.Errorf("ruleset still holds a fence after the last lift:\n%s", rs)
	}
	fencetest.Must(t, f.Remove(ctx))
	if rs := ruleset(t, w.A); strings.Contains(rs, "sealift") {
		t.Errorf("ruleset still holds sealift after Remove:\n%s", rs)
	}
}

// A guest that changes its MAC and IP while fenced stays fenced.
func fenceHoldsWhenGuestChangesMACAndIP(t *testing.T, brnf bool) {
	w := newWorld(t, brnf)
	ctx := context.Background()
	f := New(WithHost(w.A))
	fencetest.Must(t, f.Fence(ctx, w.Spec()))

	h, err := lab.Handle(w.VM)
	fencetest.Must(t, err)
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	fencetest.Must(t, err)
	fencetest.Must(t, h.LinkSetHardwareAddr(eth0, net.HardwareAddr{0x02, 0x5e, 0xa1, 0x1f, 0, 0x99}))
	fencetest.Must(t, lab.AddAddr(w.VM, "eth0", "10.1.0.11/24"))
	fencetest.Must(t, lab.AddAddr(w.VM, "eth0", "fd00:1::11/64"))
	newV4, newV6 := netip.MustParseAddr("10.1.0.11"), netip.MustParseAddr("fd00:1::11")

	if tr := w.Probe(t, w.Peer, newV4, newV6, 2); !tr.None() {
		t.Errorf("fenced guest with a new MAC/IP, same LAN: %+v; want nothing", tr)
	}
	if tr := w.Probe(t, w.Peer2, newV4, netip.Addr{}, 2); !tr.None() {
		t.Errorf("fenced guest with a new MAC/IP, routed: %+v; want nothing", tr)
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
	if tr := w.Probe(t, w.Peer, newV4, newV6, 2); !tr.Flows(2, true) {
		t.Errorf("after lift, new address: %+v", tr)
	}
}

// The MAC and IP rules hold on their own: a fence on another port with
// the VM's MAC and addresses still cuts the VM off (a guest that moved).
func fenceByMACAndIPAlone(t *testing.T, brnf bool) {
	w := newWorld(t, brnf)
	ctx := context.Background()
	fencetest.Must(t, lab.Veth(w.A, "other0", "", w.A, "other1", ""))
	f := New(WithHost(w.A))
	s := w.Spec()
	s.Port = "other0"
	fencetest.Must(t, f.Fence(ctx, s))
	if tr := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, 2); !tr.Blocked() {
		t.Errorf("fence by MAC/IP: %+v; want no replies", tr)
	}
	if tr := w.Probe(t, w.Peer2, lab.VMAddr, netip.Addr{}, 2); !tr.Blocked() {
		t.Errorf("fence by MAC/IP, routed: %+v; want nothing", tr)
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
}

// AllowVia on a bridge port (an L2 secure link): the far end reaches the
// VM, the peer does not.
func fenceAllowViaBridgePort(t *testing.T, brnf bool) {
	w := newWorld(t, brnf)
	ctx := context.Background()
	far, err := w.AttachVM("far", w.A, "sl0", "10.1.0.30/24")
	fencetest.Must(t, err)
	f := New(WithHost(w.A))
	s := w.Spec()
	s.AllowVia = []string{"sl0"}
	fencetest.Must(t, f.Fence(ctx, s))
	if tr := w.Probe(t, far, lab.VMAddr, netip.Addr{}, 2); !tr.Flows(2, false) {
		t.Errorf("via the secure link: %+v; want flowing\n%s", tr, ruleset(t, w.A))
	}
	if tr := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, 2); !tr.Blocked() {
		t.Errorf("from the peer: %+v; want nothing", tr)
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
}

// AllowVia on a routed device (like a WireGuard interface): peer2,
// routed in through up0, reaches the VM; the peer on the LAN does not;
// and a guest that changes its MAC cannot use the link any more.
func fenceAllowViaRoutedDevice(t *testing.T, brnf bool) {
	w := newWorld(t, brnf)
	ctx := context.Background()
	f := New(WithHost(w.A))
	routeV6(t, w)
	peer2v6 := netip.MustParseAddr("fd00:2::20")
	s := w.Spec()
	s.AllowVia = []string{"up0"}
	fencetest.Must(t, f.Fence(ctx, s))
	// IPv6 works through the link: neighbour discovery between the VM
	// and the host passes the fence.
	fencetest.Must(t, lab.WaitReachable(w.Peer2, fencetest.VM6, 10*time.Second))
	if tr := w.Probe(t, w.Peer2, lab.VMAddr, fencetest.VM6, 2); !tr.Flows(2, true) {
		t.Errorf("via the routed secure link: %+v; want flowing", tr)
	}
	if r, err := lab.Ping(w.VM, peer2v6, 2, time.Second); err != nil || r != 2 {
		t.Errorf("VM -> peer2 over IPv6 via the link: %d, %v", r, err)
	}
	if tr := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, 2); !tr.Blocked() {
		t.Errorf("from the peer: %+v; want nothing", tr)
	}
	// The guest takes another IP: the port may not send from it.
	fencetest.Must(t, lab.AddAddr(w.VM, "eth0", "10.1.0.12/24"))
	if tr := w.Probe(t, w.Peer2, netip.MustParseAddr("10.1.0.12"), netip.Addr{}, 2); !tr.Blocked() {
		t.Errorf("guest with a new IP via the link: %+v; want no replies", tr)
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
}

// routeV6 gives the path VM - A - core - peer2 IPv6 addresses and routes.
func routeV6(t *testing.T, w *fencetest.World) {
	t.Helper()
	for _, a := range []struct{ ns, ifname, addr string }{
		{w.A, "br0", "fd00:1::1/64"}, {w.A, "up0", "fd00:ff::1/64"},
		{w.Core, "a0", "fd00:ff::2/64"}, {w.Core, "p2", "fd00:2::1/64"}, {w.Peer2, "eth0", "fd00:2::20/64"},
	} {
		fencetest.Must(t, lab.AddAddr(a.ns, a.ifname, a.addr))
	}
	fencetest.Must(t, lab.AddRoute(w.A, "::/0", "fd00:ff::2", ""))
	fencetest.Must(t, lab.AddRoute(w.Core, "fd00:1::/64", "fd00:ff::1", ""))
	fencetest.Must(t, lab.AddRoute(w.Peer2, "::/0", "fd00:2::1", ""))
	fencetest.Must(t, lab.AddRoute(w.VM, "::/0", "fd00:1::1", ""))
	for _, ns := range []string{w.A, w.Core} {
		fencetest.Must(t, lab.Sysctl(ns, "net/ipv6/conf/all/forwarding", "1"))
	}
}

// A VM whose port is routed, not bridged (a tap with an address on the
// host side): the inet chain alone fences it.
func fenceRoutedPort(t *testing.T, brnf bool) {
	w := newWorld(t, brnf)
	ctx := context.Background()
	rvm := w.Prefix + "-rvm"
	fencetest.Must(t, w.AddHost(rvm))
	fencetest.Must(t, lab.Veth(w.A, "rv0", "10.9.0.1/24", rvm, "eth0", "10.9.0.10/24"))
	fencetest.Must(t, lab.AddRoute(rvm, "0.0.0.0/0", "10.9.0.1", ""))
	// IPv4 only: the host's own router solicitations on a new interface
	// (neighbour discovery, hop limit 255, which fences pass) leave A's
	// end every 4 s after it comes up, and one falling into the fenced
	// probe counted as a frame that reached the VM.
	fencetest.Must(t, lab.Sysctl(w.A, "net/ipv6/conf/rv0/disable_ipv6", "1"))
	fencetest.Must(t, lab.Sysctl(rvm, "net/ipv6/conf/eth0/disable_ipv6", "1"))
	target, err := lab.StartTarget(rvm, "eth0", 7000, 7001)
	fencetest.Must(t, err)
	defer target.Close()
	dst := netip.MustParseAddr("10.9.0.10")
	fencetest.Must(t, lab.WaitReachable(w.Peer, dst, 10*time.Second)) // carrier of a new veth
	probe := func() lab.Probe {
		p, err := target.Probe(w.Peer, dst, netip.Addr{}, 2)
		fencetest.Must(t, err)
		return p
	}
	if p := probe(); !p.Flows(2, false) {
		t.Fatalf("before the fence: %+v", p)
	}
	f := New(WithHost(w.A))
	fencetest.Must(t, f.Fence(ctx, fence.Spec{VM: "routed", Port: "rv0", Addrs: []netip.Addr{dst}}))
	if p := probe(); !p.None() {
		t.Errorf("fenced routed port: %+v; want nothing", p)
	}
	// At least a SYN (its retransmission depends on the dial's timeout),
	// the 2 datagrams and the 2 echo requests.
	if n := dropped(t, f, "routed"); n < 5 {
		t.Errorf("drop counters: %d, want >= 5", n)
	}
	fencetest.Must(t, f.Lift(ctx, "routed"))
	if p := probe(); !p.Flows(2, false) {
		t.Errorf("after lift: %+v", p)
	}
}

// AllowMarks: frames marked by another table pass; unmarked replies do not.
func fenceAllowMarks(t *testing.T, brnf bool) {
	w := newWorld(t, brnf)
	ctx := context.Background()
	script := `table bridge marker { chain pre { type filter hook prerouting priority -300; iifname "pr0" meta mark set 0x42 ; } ; }`
	if out, err := lab.Exec(w.A, "nft", script); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	f := New(WithHost(w.A))
	s := w.Spec()
	s.AllowMarks = []uint32{0x42}
	fencetest.Must(t, f.Fence(ctx, s))
	// The VM's ARP replies are unmarked and dropped: give the peer a
	// static neighbour entry.
	if out, err := lab.Exec(w.Peer, "ip", "neigh", "replace", "10.1.0.10", "lladdr", w.MAC, "dev", "eth0", "nud", "permanent"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	tr := w.Probe(t, w.Peer, lab.VMAddr, netip.Addr{}, 2)
	if tr.UDPIn != 2 || tr.UDP != 0 {
		t.Errorf("marked requests: %+v; want 2 UDP delivered, 0 replies back", tr)
	}
	// Control: without the marks nothing arrives.
	if out, err := lab.Exec(w.A, "nft", "delete", "table", "bridge", "marker"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if tr := w.Probe(t, w.Peer, lab.VMAddr, netip.Addr{}, 2); !tr.Blocked() {
		t.Errorf("unmarked requests: %+v; want nothing", tr)
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
}

func TestFenceIdempotentReplaceAndRecover(t *testing.T) {
	t.Parallel()
	w := newWorld(t, false)
	ctx := context.Background()
	f := New(WithHost(w.A))
	s := w.Spec()
	fencetest.Must(t, f.Fence(ctx, s))
	rs1 := ruleset(t, w.A)
	fencetest.Must(t, f.Fence(ctx, s))
	if rs2 := ruleset(t, w.A); rs2 != rs1 {
		t.Errorf("same spec twice changed the ruleset:\n%s\n---\n%s", rs1, rs2)
	}
	got, err := New(WithHost(w.A)).List(ctx)
	fencetest.Must(t, err)
	if len(got) != 1 || !sameSpec(got[0].Spec, s) || got[0].Backend != "nft" || got[0].Since.IsZero() {
		t.Fatalf("List after restart: %+v; want one fence %+v", got, s)
	}
	// Replace: a different spec; still one fence, the new one.
	s2 := s
	s2.AllowVia = []string{"sl0"}
	s2.Addrs = []netip.Addr{lab.VMAddr}
	fencetest.Must(t, f.Fence(ctx, s2))
	got, err = New(WithHost(w.A)).List(ctx)
	fencetest.Must(t, err)
	if len(got) != 1 || !sameSpec(got[0].Spec, s2) {
		t.Fatalf("List after replace: %+v; want %+v", got, s2)
	}
	if strings.Count(ruleset(t, w.A), `comment "sealift-jump `+chainID("vm-1")+`"`) != 6 {
		t.Errorf("replace changed the jumps:\n%s", ruleset(t, w.A))
	}
	// Lift of an absent fence: ErrNotFenced, nothing changed.
	before := ruleset(t, w.A)
	if err := f.Lift(ctx, "nope"); !errors.Is(err, fence.ErrNotFenced) {
		t.Errorf("Lift(absent) = %v, want ErrNotFenced", err)
	}
	if after := ruleset(t, w.A); after != before {
		t.Errorf("Lift(absent) changed the ruleset")
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
	if err := f.Lift(ctx, "vm-1"); !errors.Is(err, fence.ErrNotFenced) {
		t.Errorf("second Lift = %v, want ErrNotFenced", err)
	}
}

func TestFenceRejectsBadInputUnchanged(t *testing.T) {
	t.Parallel()
	w := newWorld(t, false)
	ctx := context.Background()
	f := New(WithHost(w.A))
	// A host without sealift tables: nothing listed, nothing to lift.
	if got, err := f.List(ctx); err != nil || len(got) != 0 {
		t.Errorf("List on a clean host: %v, %v", got, err)
	}
	if err := f.Lift(ctx, "vm-1"); !errors.Is(err, fence.ErrNotFenced) {
		t.Errorf("Lift on a clean host: %v", err)
	}
	if err := f.LiftAll(ctx, nil); err != nil {
		t.Errorf("LiftAll(nil): %v", err)
	}
	if rs := ruleset(t, w.A); strings.TrimSpace(rs) != "" {
		t.Errorf("clean host has a ruleset:\n%s", rs)
	}
	fencetest.Must(t, f.Fence(ctx, w.Spec())) // a non-empty ruleset to compare
	before := ruleset(t, w.A)
	good := w.Spec()
	cases := []struct {
		name   string
		mutate func(*fence.Spec)
		want   error
		field  string
	}{
		{"unknown port", func(s *fence.Spec) { s.Port = "nosuch0" }, fence.ErrNoPort, "nosuch0"},
		{"bad MAC", func(s *fence.Spec) { s.MAC = "02:zz:00:00:00:01" }, fence.ErrInvalid, "MAC"},
		{"empty VM", func(s *fence.Spec) { s.VM = "" }, fence.ErrInvalid, "VM"},
		{"empty port", func(s *fence.Spec) { s.Port = "" }, fence.ErrInvalid, "Port"},
		{"long AllowVia", func(s *fence.Spec) { s.AllowVia = []string{"a-very-long-name0"} }, fence.ErrInvalid, "AllowVia"},
		{"mark 0", func(s *fence.Spec) { s.AllowMarks = []uint32{0} }, fence.ErrInvalid, "AllowMarks"},
		{"invalid addr", func(s *fence.Spec) { s.Addrs = []netip.Addr{{}} }, fence.ErrInvalid, "Addrs"},
		{"via is port", func(s *fence.Spec) { s.AllowVia = []string{s.Port} }, fence.ErrInvalid, "AllowVia"},
	}
	for _, c := range cases {
		s := good
		s.VM = "vm-2"
		c.mutate(&s)
		err := f.Fence(ctx, s)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v; want %v naming %q", c.name, err, c.want, c.field)
		}
	}
	// One bad spec in a batch spoils the batch, before anything changes.
	bad := good
	bad.VM, bad.Port = "vm-3", "nosuch0"
	other := good
	other.VM = "vm-4"
	if err := f.FenceAll(ctx, []fence.Spec{other, bad}); !errors.Is(err, fence.ErrNoPort) {
		t.Errorf("FenceAll with a bad port: %v", err)
	}
	if err := f.FenceAll(ctx, []fence.Spec{other, other}); !errors.Is(err, fence.ErrInvalid) {
		t.Errorf("FenceAll with a duplicate: %v", err)
	}
	if err := New(WithHost(w.Prefix+"-nohost")).Fence(ctx, good); !errors.Is(err, host.ErrNotFound) {
		t.Errorf("Fence on a missing host: %v, want host.ErrNotFound", err)
	}
	if after := ruleset(t, w.A); after != before {
		t.Errorf("bad input changed the ruleset:\n%s\n---\n%s", before, after)
	}
}

// addPorts creates n veth pairs in ns, the first end of each on br0.
func addPorts(t testing.TB, ns string, n int) []string {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br, err := h.LinkByName("br0")
	if err != nil {
		t.Fatal(err)
	}
	var ports []string
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("mp%d", i)
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index}, PeerName: fmt.Sprintf("mq%d", i)}
		if err := h.LinkAdd(v); err != nil {
			t.Fatalf("add %s: %v", name, err)
		}
		ports = append(ports, name)
	}
	return ports
}

func manySpecs(ports []string) []fence.Spec {
	specs := make([]fence.Spec, len(ports))
	for i, p := range ports {
		specs[i] = fence.Spec{VM: fmt.Sprintf("guest-%03d", i), Port: p,
			MAC:   fmt.Sprintf("02:00:00:00:%02x:%02x", i/256, i%256),
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 1 + byte(i/200), byte(10 + i%200)}), netip.MustParseAddr(fmt.Sprintf("fd00:2::%x", i+1))}}
	}
	return specs
}

func TestFence100InOneBatch(t *testing.T) {
	t.Parallel()
	w := newWorld(t, false)
	ctx := context.Background()
	specs := manySpecs(addPorts(t, w.A, 100))
	f := New(WithHost(w.A))
	fencetest.Must(t, f.FenceAll(ctx, specs))
	got, err := New(WithHost(w.A)).List(ctx)
	fencetest.Must(t, err)
	if len(got) != len(specs) {
		t.Fatalf("List: %d fences, want %d", len(got), len(specs))
	}
	for i, g := range got { // List sorts by VM, as manySpecs names them
		if !sameSpec(g.Spec, specs[i]) {
			t.Errorf("List[%d] = %+v, want %+v", i, g.Spec, specs[i])
		}
	}
	// The VM's own traffic is untouched by the other 100 fences.
	if tr := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, 2); !tr.Flows(2, true) {
		t.Errorf("unfenced VM among 100 fences: %+v", tr)
	}
	// Lifting half keeps the other half.
	var half []string
	for _, s := range specs[:50] {
		half = append(half, s.VM)
	}
	fencetest.Must(t, f.LiftAll(ctx, half))
	got, err = f.List(ctx)
	fencetest.Must(t, err)
	if len(got) != 50 || got[0].VM != specs[50].VM {
		t.Fatalf("after lifting 50: %d fences, first %q", len(got), got[0].VM)
	}
	if err := f.LiftAll(ctx, append(half[:1], specs[99].VM)); !errors.Is(err, fence.ErrNotFenced) {
		t.Errorf("LiftAll with one absent: %v", err)
	}
	if got, _ = f.List(ctx); len(got) != 50 {
		t.Errorf("a failed LiftAll changed the fences: %d left", len(got))
	}
}

func BenchmarkFence(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			lab.RequireRoot(b)
			l := lab.New(b)
			specs := manySpecs(addPorts(b, l.A, n))
			vms := make([]string, n)
			for i, s := range specs {
				vms[i] = s.VM
			}
			f := New(WithHost(l.A))
			ctx := context.Background()
			var fenceT, liftT time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				if err := f.FenceAll(ctx, specs); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := f.LiftAll(ctx, vms); err != nil {
					b.Fatal(err)
				}
				fenceT += t1.Sub(t0)
				liftT += time.Since(t1)
			}
			b.ReportMetric(float64(fenceT.Microseconds())/float64(b.N)/1000, "fence-ms")
			b.ReportMetric(float64(liftT.Microseconds())/float64(b.N)/1000, "lift-ms")
		})
	}
}

// TestMissingHost: every entry point on a host (netns) that does not
// exist fails with host.ErrNotFound naming it.
func TestMissingHost(t *testing.T) {
	t.Parallel()
	const gone = "sl-no-such-ns"
	f := New(WithHost(gone))
	spec := fence.Spec{VM: "vm-1", Port: "vm0"}
	fencetest.MissingHost(t, f, gone, map[string]func(context.Context) error{
		"FenceAll":     func(ctx context.Context) error { return f.FenceAll(ctx, []fence.Spec{spec}) },
		"LiftAll":      func(ctx context.Context) error { return f.LiftAll(ctx, []string{spec.VM}) },
		"Dropped":      func(ctx context.Context) error { _, err := f.Dropped(ctx, spec.VM); return err },
		"GuardDropped": func(ctx context.Context) error { _, err := f.GuardDropped(ctx); return err },
		"Remove":       func(ctx context.Context) error { return f.Remove(ctx) },
	})
}
