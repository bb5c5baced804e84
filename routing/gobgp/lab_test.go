package gobgp

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
)

var (
	coreSite = netip.MustParseAddr("100.64.0.1") // core end of the permanent site link
	bSite    = netip.MustParseAddr("100.64.0.2") // B end: the proper route's next hop
	bTunnel  = netip.MustParseAddr("100.64.1.2") // B end of the stand-in redirect tunnel
)

// streamMarker is carried in every stream datagram; a capture on the wan
// counts frames that show it in clear.
var streamMarker = []byte("SEALIFT-ROUTING-CLEARTEXT-7d3a")

// stream sends numbered UDP datagrams from one namespace to an address,
// one every interval, and a receiver counts which numbers arrived.
type stream struct {
	sent     atomic.Uint64
	mu       sync.Mutex
	got      map[uint64]bool
	dups     int
	stopSend chan struct{}
	sendDone chan struct{}
	rx, tx   net.Conn
	rxDone   chan struct{}
}

func startStream(t testing.TB, fromNS, toNS string, to netip.AddrPort, every time.Duration) *stream {
	t.Helper()
	s := &stream{got: map[uint64]bool{}, stopSend: make(chan struct{}), sendDone: make(chan struct{}), rxDone: make(chan struct{})}
	if err := nsutil.Do(toNS, func() (err error) {
		s.rx, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(to))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := nsutil.Do(fromNS, func() (err error) {
		s.tx, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(to))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(s.rxDone)
		buf := make([]byte, 64)
		for {
			n, err := s.rx.Read(buf)
			if err != nil {
				return
			}
			if n < 8 {
				continue
			}
			seq := binary.BigEndian.Uint64(buf)
			s.mu.Lock()
			if s.got[seq] {
				s.dups++
			}
			s.got[seq] = true
			s.mu.Unlock()
		}
	}()
	go func() {
		defer close(s.sendDone)
		tick := time.NewTicker(every)
		defer tick.Stop()
		buf := append(make([]byte, 8), streamMarker...)
		for {
			select {
			case <-s.stopSend:
				return
			case <-tick.C:
			}
			binary.BigEndian.PutUint64(buf, s.sent.Load())
			if _, err := s.tx.Write(buf); err == nil {
				s.sent.Add(1)
			}
		}
	}()
	t.Cleanup(s.close)
	return s
}

// received is the number of distinct datagrams that arrived.
func (s *stream) received() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.got)
}

// waitReceived polls until at least n datagrams arrived.
func (s *stream) waitReceived(ctx context.Context, t testing.TB, n int) {
	t.Helper()
	for s.received() < n {
		select {
		case <-ctx.Done():
			t.Fatalf("stream: %d of %d datagrams arrived (%d sent): %v", s.received(), n, s.sent.Load(), ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// stop ends sending, gives the last datagrams up to 3 s to arrive (a
// bounded poll: in flight they need microseconds) and returns how many
// were sent and which are missing.
func (s *stream) stop(ctx context.Context) (sent int, missing []uint64) {
	close(s.stopSend)
	<-s.sendDone
	sent = int(s.sent.Load())
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	for s.received() < sent && ctx.Err() == nil {
		time.Sleep(5 * time.Millisecond)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := 0; i < sent; i++ {
		if !s.got[uint64(i)] {
			missing = append(missing, uint64(i))
		}
	}
	return sent, missing
}

func (s *stream) close() {
	select {
	case <-s.stopSend:
	default:
		close(s.stopSend)
	}
	<-s.sendDone
	s.tx.Close()
	s.rx.Close()
	<-s.rxDone
}

// txPackets reads the transmit counter of ifname in ns.
func txPackets(t testing.TB, ns, ifname string) uint64 {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().Statistics.TxPackets
}

// movedSubnetLab is the reference lab after the whole subnet 10.1.0.0/24
// moved to B: the VM endpoint sits on B's bridge with its address, A no
// longer has it, and the core has a permanent site link to B (s0,
// 100.64.0.1/30 - 100.64.0.2/30). The core's own route to the subnet via
// A is still there; the test replaces it. It returns the moved VM's
// namespace.
func movedSubnetLab(t testing.TB) (*lab.Lab, string) {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	steps := []func() error{
		// B gets the subnet's traffic on the tunnel or on s0 while its
		// route back to peer2 goes through the wan: no reverse-path
		// filter on B's devices (default covers those made later).
		func() error { return lab.Sysctl(l.B, "net/ipv4/conf/all/rp_filter", "0") },
		func() error { return lab.Sysctl(l.B, "net/ipv4/conf/default/rp_filter", "0") },
		func() error { return lab.Veth(l.Core, "s0", "100.64.0.1/30", l.B, "s0", "100.64.0.2/30") },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			t.Fatal(err)
		}
	}
	vmb, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	if err != nil {
		t.Fatal(err)
	}
	h, err := lab.Handle(l.A)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	port, err := h.LinkByName("vm0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(port); err != nil {
		t.Fatalf("%s: remove the VM's port: %v", l.A, err)
	}
	return l, vmb
}

// redirectTunnel is the core's end of the encrypted redirect tunnel.
type redirectTunnel struct {
	device string
	via    netip.Addr // next hop on the device, if it needs one
}

// vethTunnel stands in for the tunnel with a plain veth core <-> B (rt0,
// 100.64.1.1/30 - 100.64.1.2/30), outside the wan.
func vethTunnel(t testing.TB, l *lab.Lab) redirectTunnel {
	t.Helper()
	if err := lab.Veth(l.Core, "rt0", "100.64.1.1/30", l.B, "rt0", "100.64.1.2/30"); err != nil {
		t.Fatal(err)
	}
	return redirectTunnel{device: "rt0", via: bTunnel}
}

// delRoute deletes dst via gw in ns.
func delRoute(t testing.TB, ns string, dst netip.Prefix, gw netip.Addr) {
	t.Helper()
	if _, err := lab.Exec(ns, "ip", "route", "del", dst.String(), "via", gw.String()); err != nil {
		t.Fatal(err)
	}
}

// pairSpeakers builds the core's speaker (AS 65001) and B's (AS 65002),
// each listening in its namespace on its site-link address, and connects
// them.
func pairSpeakers(ctx context.Context, t testing.TB, l *lab.Lab, opts ...Option) (core, target *Watcher) {
	t.Helper()
	core, err := New(ctx, append(opts, WithHost(l.Core), WithSpeaker(Speaker{
		AS: 65001, RouterID: coreSite, ListenAddrs: []netip.Addr{coreSite},
		Neighbors: []Neighbor{{Address: bSite, AS: 65002}},
	}))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = core.Close(context.Background()) })
	target, err = New(ctx, WithHost(l.B), WithSpeaker(Speaker{
		AS: 65002, RouterID: bSite, ListenAddrs: []netip.Addr{bSite},
		Neighbors: []Neighbor{{Address: coreSite, AS: 65001}},
	}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = target.Close(context.Background()) })
	closeSessions, err := Connect(ctx, core, coreSite, target, bSite)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeSessions)
	return core, target
}

// The acceptance scenario of claim 8 with a veth standing in for the
// tunnel.
func TestMovedSubnetRedirectThenBGPWithoutLoss(t *testing.T) {
	l, vmb := movedSubnetLab(t)
	movedSubnetScenario(t, l, vmb, vethTunnel(t, l), nil)
}

// movedSubnetScenario: the moved subnet is redirected into the tunnel, a
// route that never comes leaves the redirect in place, B's speaker
// announces the subnet over the site link, the core learns it and
// installs it below the redirect's metric, the watcher fires, and the
// redirect is removed while a 5 ms stream from peer2 loses nothing.
// onRedirected, if set, runs once traffic flows through the redirect.
func movedSubnetScenario(t *testing.T, l *lab.Lab, vmb string, tun redirectTunnel, onRedirected func()) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	kernel := netlinkroute.New(netlinkroute.WithHost(l.Core))
	core, target := pairSpeakers(ctx, t, l, WithRedirects(kernel))
	stopFIB, err := core.SyncFIB(ctx, 20)
	if err != nil {
		t.Fatal(err)
	}
	defer stopFIB()

	// Block 340: redirect first, then the secure side's own route goes.
	red := routing.Redirect{Prefix: lab.VMSubnet, Device: tun.device, Via: tun.via, Metric: 4096}
	if err := core.AddRedirect(ctx, red); err != nil {
		t.Fatal(err)
	}
	delRoute(t, l.Core, lab.VMSubnet, lab.AUplink)

	tunBefore := txPackets(t, l.Core, tun.device)
	st := startStream(t, l.Peer2, vmb, netip.AddrPortFrom(lab.VMAddr, 9000), 5*time.Millisecond)
	st.waitReceived(ctx, t, 20)
	if d := txPackets(t, l.Core, tun.device) - tunBefore; d < 20 {
		t.Fatalf("the core sent %d packets into the redirect tunnel %s, want >= 20", d, tun.device)
	}
	if onRedirected != nil {
		onRedirected()
	}

	expect := routing.Expect{Prefix: lab.VMSubnet, Via: bSite, NotDevice: tun.device}
	// A route that never comes: the context's error, the redirect stays.
	short, cancelShort := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = core.Wait(short, expect)
	cancelShort()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait before the announcement = %v, want the deadline error", err)
	}
	if rs, err := core.Redirects(ctx); err != nil || len(rs) != 1 || rs[0] != red {
		t.Fatalf("redirects after a failed wait: %+v, %v (want [%+v])", rs, err, red)
	}

	// Blocks 375-385: the target environment announces the subnet.
	res := startWait(ctx, t, core, expect)
	if err := target.Announce(ctx, lab.VMSubnet, bSite); err != nil {
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := routing.Route{Prefix: lab.VMSubnet, Via: bSite, Device: "s0", Protocol: "bgp"}
	if r.c.Route != want || r.c.After <= 0 {
		t.Fatalf("BGP converged on %+v after %v, want %+v", r.c.Route, r.c.After, want)
	}
	// The kernel has the learned route, below the redirect's metric.
	kc, err := kernel.Wait(ctx, expect)
	if err != nil {
		t.Fatal(err)
	}
	if kc.Route.Protocol != "bgp" || kc.Route.Device != "s0" {
		t.Fatalf("kernel route: %+v", kc.Route)
	}

	// Block 390: the redirect goes, under traffic.
	s0Before := txPackets(t, l.Core, "s0")
	atRemoval := st.received()
	if err := core.RemoveRedirect(ctx, lab.VMSubnet); err != nil {
		t.Fatal(err)
	}
	st.waitReceived(ctx, t, atRemoval+100)
	sent, missing := st.stop(ctx)
	if len(missing) != 0 {
		t.Fatalf("%d of %d datagrams lost: %v", len(missing), sent, missing)
	}
	if d := txPackets(t, l.Core, "s0") - s0Before; d < 100 {
		t.Fatalf("the core sent %d packets over the site link after convergence, want >= 100", d)
	}
	if rs, err := core.Redirects(ctx); err != nil || len(rs) != 0 {
		t.Fatalf("redirects after removal: %+v, %v", rs, err)
	}
	t.Logf("stream: %d datagrams sent, all received (%d duplicates); BGP converged %v after Wait started", sent, st.dups, r.c.After)
}
