package linkstate

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/internal/fencetest"
	"github.com/sealift/sealift/internal/lab"
)

// links is the host's link table as `ip -o link` shows it: state and
// aliases, for "nothing changed" assertions.
func links(t *testing.T, ns string) string {
	t.Helper()
	out, err := lab.Exec(ns, "ip", "-o", "link", "show")
	fencetest.Must(t, err)
	return string(out)
}

func TestFenceBlocksAndLiftRestores(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	f := New(WithHost(w.A))
	const n = 3
	if p := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, n); !p.Flows(n, true) {
		t.Fatalf("before the fence: %+v", p)
	}
	setLink(t, w.A, "vm0", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetAlias(l, "operator note") })
	fencetest.Must(t, f.Fence(ctx, w.Spec()))
	if p := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, n); !p.None() {
		t.Errorf("fenced, same LAN: %+v; want nothing", p)
	}
	if p := w.Probe(t, w.Peer2, lab.VMAddr, netip.Addr{}, n); !p.None() {
		t.Errorf("fenced, routed: %+v; want nothing", p)
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
	w.WaitV6(t)
	if p := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, n); !p.Flows(n, true) {
		t.Errorf("after lift: %+v", p)
	}
	if p := w.Probe(t, w.Peer2, lab.VMAddr, netip.Addr{}, n); !p.Flows(n, false) {
		t.Errorf("after lift, routed: %+v", p)
	}
	if ls := links(t, w.A); !strings.Contains(ls, "alias operator note") || strings.Contains(ls, AliasPrefix) {
		t.Errorf("lift did not restore the alias:\n%s", ls)
	}
}

func TestFenceHoldsWhenGuestChangesMACAndIP(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
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
	newV4 := netip.MustParseAddr("10.1.0.11")
	if p := w.Probe(t, w.Peer, newV4, netip.Addr{}, 2); !p.None() {
		t.Errorf("fenced guest with a new MAC/IP: %+v; want nothing", p)
	}
	if p := w.Probe(t, w.Peer2, newV4, netip.Addr{}, 2); !p.None() {
		t.Errorf("fenced guest with a new MAC/IP, routed: %+v; want nothing", p)
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
	fencetest.Must(t, lab.WaitReachable(w.Peer, newV4, 10*time.Second)) // carrier is back
	if p := w.Probe(t, w.Peer, newV4, netip.Addr{}, 2); !p.Flows(2, false) {
		t.Errorf("after lift, new address: %+v", p)
	}
}

func TestFenceIdempotentMoveAndRecover(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	f := New(WithHost(w.A))
	s := w.Spec()
	fencetest.Must(t, f.Fence(ctx, s))
	l1 := links(t, w.A)
	fencetest.Must(t, f.Fence(ctx, s))
	if l2 := links(t, w.A); l2 != l1 {
		t.Errorf("same spec twice changed the links:\n%s\n---\n%s", l1, l2)
	}
	got, err := New(WithHost(w.A)).List(ctx)
	fencetest.Must(t, err)
	if len(got) != 1 || !sameSpec(got[0].Spec, s) || got[0].Backend != "linkstate" || got[0].Since.IsZero() {
		t.Fatalf("List after restart: %+v; want %+v", got, s)
	}
	// Someone sets the port up: fencing again takes it down again.
	setLink(t, w.A, "vm0", func(h *netlink.Handle, l netlink.Link) error { return h.LinkSetUp(l) })
	fencetest.Must(t, f.Fence(ctx, s))
	if up := isUp(t, w.A, "vm0"); up {
		t.Error("re-fence left the port up")
	}
	// A different spec moves the fence to another port.
	fencetest.Must(t, lab.Veth(w.A, "alt0", "", w.A, "alt1", ""))
	s2 := s
	s2.Port = "alt0"
	fencetest.Must(t, f.Fence(ctx, s2))
	got, err = New(WithHost(w.A)).List(ctx)
	fencetest.Must(t, err)
	if len(got) != 1 || got[0].Port != "alt0" || !isUp(t, w.A, "vm0") || isUp(t, w.A, "alt0") {
		t.Errorf("after moving the fence: %+v, vm0 up %v, alt0 up %v", got, isUp(t, w.A, "vm0"), isUp(t, w.A, "alt0"))
	}
	before := links(t, w.A)
	if err := f.Lift(ctx, "nope"); !errors.Is(err, fence.ErrNotFenced) {
		t.Errorf("Lift(absent) = %v, want ErrNotFenced", err)
	}
	if after := links(t, w.A); after != before {
		t.Error("Lift(absent) changed the links")
	}
	fencetest.Must(t, f.Lift(ctx, "vm-1"))
	if err := f.Lift(ctx, "vm-1"); !errors.Is(err, fence.ErrNotFenced) {
		t.Errorf("second Lift = %v, want ErrNotFenced", err)
	}
}

func setLink(t *testing.T, ns, ifname string, fn func(*netlink.Handle, netlink.Link) error) {
	t.Helper()
	h, err := lab.Handle(ns)
	fencetest.Must(t, err)
	defer h.Close()
	l, err := h.LinkByName(ifname)
	fencetest.Must(t, err)
	fencetest.Must(t, fn(h, l))
}

func isUp(t *testing.T, ns, ifname string) bool {
	t.Helper()
	h, err := lab.Handle(ns)
	fencetest.Must(t, err)
	defer h.Close()
	l, err := h.LinkByName(ifname)
	fencetest.Must(t, err)
	return l.Attrs().Flags&net.FlagUp != 0
}

func TestFenceRejectsBadInputUnchanged(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	f := New(WithHost(w.A))
	fencetest.Must(t, f.Fence(ctx, w.Spec()))
	before := links(t, w.A)
	good := w.Spec()
	good.VM, good.Port = "vm-2", "pr0"
	cases := []struct {
		name   string
		mutate func(*fence.Spec)
		want   error
		field  string
	}{
		{"unknown port", func(s *fence.Spec) { s.Port = "nosuch0" }, fence.ErrNoPort, "nosuch0"},
		{"bad MAC", func(s *fence.Spec) { s.MAC = "02:zz:00:00:00:01" }, fence.ErrInvalid, "MAC"},
		{"empty VM", func(s *fence.Spec) { s.VM = "" }, fence.ErrInvalid, "VM"},
		{"AllowVia", func(s *fence.Spec) { s.AllowVia = []string{"wg0"} }, fence.ErrUnsupported, "AllowVia"},
		{"AllowMarks", func(s *fence.Spec) { s.AllowMarks = []uint32{7} }, fence.ErrUnsupported, "AllowMarks"},
		{"Peers", func(s *fence.Spec) { s.Peers = []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")} }, fence.ErrUnsupported, "Peers"},
		{"Hold", func(s *fence.Spec) { s.Hold = true }, fence.ErrUnsupported, "Hold"},
		{"port of another fence", func(s *fence.Spec) { s.Port = "vm0" }, fence.ErrInvalid, "vm-1"},
		{"VM too long", func(s *fence.Spec) { s.VM = strings.Repeat("v", 300) }, fence.ErrInvalid, "alias"},
	}
	for _, c := range cases {
		s := good
		c.mutate(&s)
		err := f.Fence(ctx, s)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.field) {
			t.Errorf("%s: %v; want %v naming %q", c.name, err, c.want, c.field)
		}
	}
	bad := good
	bad.VM, bad.Port = "vm-3", "nosuch0"
	if err := f.FenceAll(ctx, []fence.Spec{good, bad}); !errors.Is(err, fence.ErrNoPort) {
		t.Errorf("FenceAll with a bad port: %v", err)
	}
	if err := f.Lift(ctx, ""); !errors.Is(err, fence.ErrInvalid) {
		t.Errorf("Lift(\"\") = %v", err)
	}
	if after := links(t, w.A); after != before {
		t.Errorf("bad input changed the links:\n%s\n---\n%s", before, after)
	}
}

// addPorts creates n veth pairs in ns, the first end of each on br0, up.
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
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, MasterIndex: br.Attrs().Index, Flags: net.FlagUp}, PeerName: fmt.Sprintf("mq%d", i)}
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
			Addrs: []netip.Addr{netip.AddrFrom4([4]byte{10, 1, 1 + byte(i/200), byte(10 + i%200)})}}
	}
	return specs
}

func TestFence100(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	ports := addPorts(t, w.A, 100)
	specs := manySpecs(ports)
	f := New(WithHost(w.A))
	fencetest.Must(t, f.FenceAll(ctx, specs))
	got, err := New(WithHost(w.A)).List(ctx)
	fencetest.Must(t, err)
	if len(got) != len(specs) {
		t.Fatalf("List: %d fences, want %d", len(got), len(specs))
	}
	for i, g := range got {
		if !sameSpec(g.Spec, specs[i]) {
			t.Errorf("List[%d] = %+v, want %+v", i, g.Spec, specs[i])
		}
		if isUp(t, w.A, specs[i].Port) {
			t.Errorf("%s is up while fenced", specs[i].Port)
		}
	}
	if p := w.Probe(t, w.Peer, lab.VMAddr, fencetest.VM6, 2); !p.Flows(2, true) {
		t.Errorf("unfenced VM among 100 fences: %+v", p)
	}
	vms := make([]string, len(specs))
	for i, s := range specs {
		vms[i] = s.VM
	}
	if err := f.LiftAll(ctx, append([]string{"nope"}, vms...)); !errors.Is(err, fence.ErrNotFenced) {
		t.Errorf("LiftAll with one absent: %v", err)
	}
	if got, _ := f.List(ctx); len(got) != 100 {
		t.Errorf("a failed LiftAll changed the fences: %d left", len(got))
	}
	fencetest.Must(t, f.LiftAll(ctx, vms))
	if got, _ := f.List(ctx); len(got) != 0 {
		t.Errorf("after lifting all: %d fences", len(got))
	}
}

func BenchmarkFence(b *testing.B) {
	for _, n := range []int{1, 100} {
		b.Run(fmt.Sprintf("vms=%d", n), func(b *testing.B) {
			lab.RequireRoot(b)
			l := lab.New(b)
			specs := manySpecs(addPorts(b, l.A, n))
			f := New(WithHost(l.A))
			ctx := context.Background()
			vms := make([]string, n)
			for i, s := range specs {
				vms[i] = s.VM
			}
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

func newWorld(t *testing.T) *fencetest.World { return fencetest.NewWorld(t, nil) }

// TestMissingHost: every entry point on a host (netns) that does not
// exist fails with host.ErrNotFound naming it.
func TestMissingHost(t *testing.T) {
	t.Parallel()
	const gone = "sl-no-such-ns"
	f := New(WithHost(gone))
	spec := fence.Spec{VM: "vm-1", Port: "vm0"}
	fencetest.MissingHost(t, f, gone, map[string]func(context.Context) error{
		"FenceAll": func(ctx context.Context) error { return f.FenceAll(ctx, []fence.Spec{spec}) },
		"LiftAll":  func(ctx context.Context) error { return f.LiftAll(ctx, []string{spec.VM}) },
	})
}
