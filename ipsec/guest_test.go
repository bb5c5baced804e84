package ipsec

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// TestInGuest runs the TestGuest* tests in a full kernel (ESP) via klab.
func TestInGuest(t *testing.T) {
	// nf_tables for TestGuestVerifyFencedVM (the target's fence).
	klab.Run(t, klab.Options{Run: "^TestGuest", Modules: []string{"crc32c_generic", "libcrc32c", "nf_tables", "nft_meta_bridge"}})
}

// BenchmarkInGuest runs the BenchmarkGuest* benchmarks in the guest and
// reports their metrics here, prefixed with the guest benchmark's name.
func BenchmarkInGuest(b *testing.B) {
	res := klab.Run(b, klab.Options{Run: "^$", Bench: "^BenchmarkGuest", Args: []string{"-test.benchtime=5x"}})
	for _, gb := range res.Benchmarks {
		name := strings.TrimPrefix(gb.Name, "BenchmarkGuest")
		name = strings.SplitN(name, "-", 2)[0]
		for unit, v := range gb.Metrics {
			b.ReportMetric(v, name+"-"+unit)
		}
	}
}

// world is the reference lab with the VM moved from A to B.
type world struct {
	l  *lab.Lab
	vm string // the moved VM's namespace (at B)
}

// movedVM builds the lab, unplugs the VM from A and attaches it to B with
// the same address: the situation after a migration.
func movedVM(t testing.TB) *world {
	t.Helper()
	l := lab.New(t)
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
		t.Fatal(err)
	}
	vm, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	if err != nil {
		t.Fatal(err)
	}
	return &world{l: l, vm: vm}
}

// plainPath routes peer ↔ addr (an address of the moved VM) in clear:
// A, core and wan route addr toward B, B routes the peer toward wan, A
// and B answer ARP for the far address. It returns the undo function.
func (w *world) plainPath(t testing.TB, addr netip.Addr, withB bool) func() {
	t.Helper()
	l := w.l
	type rt struct{ ns, dst, gw string }
	routes := []rt{
		{l.A, addr.String() + "/32", lab.CoreToA.String()},
		{l.Core, addr.String() + "/32", lab.WANCore.String()},
		{l.WAN, addr.String() + "/32", lab.BUnderlay.String()},
	}
	proxies := []rt{{l.A, addr.String(), "br0"}}
	if withB {
		routes = append(routes, rt{l.B, lab.PeerAddr.String() + "/32", lab.WANB.String()})
		proxies = append(proxies, rt{l.B, lab.PeerAddr.String(), "br0"})
	}
	for _, r := range routes {
		if err := lab.AddRoute(r.ns, r.dst, r.gw, ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range proxies {
		if err := proxy(p.ns, p.gw, p.dst, true); err != nil {
			t.Fatal(err)
		}
	}
	return func() {
		for _, r := range routes {
			h, err := lab.Handle(r.ns)
			if err != nil {
				t.Fatal(err)
			}
			_, dst, _ := net.ParseCIDR(r.dst)
			if err := h.RouteDel(&netlink.Route{Dst: dst, Gw: net.ParseIP(r.gw)}); err != nil {
				t.Errorf("%s: delete route %s: %v", r.ns, r.dst, err)
			}
			h.Close()
		}
		for _, p := range proxies {
			if err := proxy(p.ns, p.gw, p.dst, false); err != nil {
				t.Error(err)
			}
		}
	}
}

// proxy adds or removes a proxy ARP entry for ip on dev in ns.
func proxy(ns, dev, ip string, add bool) error {
	h, err := lab.Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lk, err := h.LinkByName(dev)
	if err != nil {
		return err
	}
	n := &netlink.Neigh{LinkIndex: lk.Attrs().Index, Family: netlink.FAMILY_V4, Flags: netlink.NTF_PROXY, IP: net.ParseIP(ip)}
	if add {
		return h.NeighAdd(n)
	}
	return h.NeighDel(n)
}

// warmUp sends single datagrams until one echo comes back (at most 5
// tries), so the counted traffic that follows does not wait for ARP: proxy
// ARP answers broadcast requests after a random delay of up to 0.8 s
// (proxy_delay), which can exceed lab.ReplyTimeout when both ends resolve.
func warmUp(t testing.TB, ns, dst string) {
	t.Helper()
	for i := 0; i < 5; i++ {
		if n, _ := lab.SendUDP(ns, dst, []byte("warm-up"), 1); n == 1 {
			return
		}
	}
	t.Fatalf("no echo from %s to %s in 5 tries", ns, dst)
}

// newMarker returns a unique plaintext marker.
func newMarker() []byte {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return []byte("SEALIFT-CLEAR-" + hex.EncodeToString(b))
}

// assertGone checks that nothing of the link is left at A and B.
func assertGone(t *testing.T, w *world, reqid uint32) {
	t.Helper()
	for _, host := range []string{w.l.A, w.l.B} {
		ps, ss := dumpOurs(t, host, reqid)
		p, s := countAll(t, host)
		if len(ps)+len(ss)+p+s != 0 {
			t.Errorf("host %s: %d policies, %d SAs left after Close", host, p, s)
		}
		h, err := lab.Handle(host)
		if err != nil {
			t.Fatal(err)
		}
		rs, _ := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
		pn, _ := h.NeighProxyList(0, netlink.FAMILY_V4)
		h.Close()
		if len(rs)+len(pn) != 0 {
			t.Errorf("host %s: %d routes, %d proxy ARP entries left after Close", host, len(rs), len(pn))
		}
	}
}

// TestGuestESPTunnel proves the link end to end in the full kernel: the
// plaintext control leaks the marker across wan, the prepared link drops
// it, the active link carries it encrypted (ESP only on wan, counters
// rising), a rekey under a stream loses nothing, Close leaves nothing.
func TestGuestESPTunnel(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := movedVM(t)
	l := w.l
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	marker := newMarker()
	dst := "10.1.0.10:7000"

	// 1. Control: without the link the same traffic shows the marker.
	undo := w.plainPath(t, lab.VMAddr, true)
	warmUp(t, l.Peer, dst)
	capt, err := lab.StartCapture(l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	n, err := lab.SendUDP(l.Peer, dst, marker, 5)
	st := capt.Stop()
	if err != nil || n != 5 || st.Marker < 10 {
		t.Fatalf("control: %d/5 replies (%v), %d marker frames on wan; the check could not fail", n, err, st.Marker)
	}
	t.Logf("control (no link): %d marker frames in clear on wan", st.Marker)

	// 2. Prepared, not active: the same clear routes stay, but the block
	// policies drop the traffic at A and B: nothing arrives, nothing leaks.
	k := New()
	spec := specFor(l, "g1")
	lk, err := k.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("prepared link policy:\n%s", strings.Join(lk.Policy, "\n"))
	if _, err := k.Verify(ctx, spec.ID); !errors.Is(err, tunnel.ErrNotProven) {
		t.Errorf("Verify of a prepared link: %v, want ErrNotProven", err)
	}
	before, _ := echo.Received()
	capt, err = lab.StartCapture(l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	n, _ = lab.SendUDP(l.Peer, dst, marker, 2)
	st = capt.Stop()
	after, _ := echo.Received()
	if n != 0 || after != before || st.Marker != 0 {
		t.Fatalf("prepared link: %d replies, %d datagrams at the VM, %d marker frames on wan; want all 0", n, after-before, st.Marker)
	}
	undo()

	// 3. Active: encrypted, counted.
	if err := k.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	warmUp(t, l.Peer, dst)
	capt, err = lab.StartCapture(l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	before, _ = echo.Received()
	n, err = lab.SendUDP(l.Peer, dst, marker, 20)
	st = capt.Stop()
	after, _ = echo.Received()
	if err != nil || n != 20 || after-before != 20 {
		t.Fatalf("through the link: %d/20 replies, %d/20 at the VM (%v)", n, after-before, err)
	}
	if st.Marker != 0 || st.ByProto[50] < 40 || st.Dropped != 0 {
		t.Fatalf("wan capture: %d marker frames (want 0), %d ESP frames (want >= 40), %d dropped", st.Marker, st.ByProto[50], st.Dropped)
	}
	proof, err := k.Verify(ctx, spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if proof.TxPackets < 40 || proof.RxPackets < 40 || proof.TxBytes == 0 || proof.RxBytes == 0 {
		t.Fatalf("proof %+v: want >= 40 packets each way", proof)
	}
	t.Logf("wan saw %d ESP frames, 0 in clear; %s", st.ByProto[50], proof.Detail)

	// 4. Rekey under a continuous stream: nothing lost.
	t.Run("rekey", func(t *testing.T) { rekeyUnderStream(t, k, w, spec) })

	// 5. Close removes everything, at both ends.
	if err := k.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, w, ReqID(spec.ID))
	if n, _ := lab.SendUDP(l.Peer, dst, marker, 1); n != 0 {
		t.Errorf("after Close: %d replies, want 0 (no route left)", n)
	}
}

// stream sends numbered datagrams from ns to dst every interval and
// counts the distinct echoes.
type stream struct {
	c       net.Conn
	sent    atomic.Int64
	mu      sync.Mutex
	seen    map[uint64]bool
	stop    chan struct{}
	stopped chan struct{}
	readErr chan error
}

func startStream(ns, dst string, payload []byte, interval time.Duration) (*stream, error) {
	var c net.Conn
	if err := nsutil.Do(ns, func() (err error) { c, err = net.Dial("udp", dst); return }); err != nil {
		return nil, err
	}
	s := &stream{c: c, seen: map[uint64]bool{}, stop: make(chan struct{}), stopped: make(chan struct{}), readErr: make(chan error, 1)}
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := c.Read(buf)
			if err != nil {
				s.readErr <- err
				return
			}
			if n >= 8 {
				s.mu.Lock()
				s.seen[binary.BigEndian.Uint64(buf)] = true
				s.mu.Unlock()
			}
		}
	}()
	go func() {
		defer close(s.stopped)
		tk := time.NewTicker(interval)
		defer tk.Stop()
		msg := make([]byte, 8+len(payload))
		copy(msg[8:], payload)
		for seq := uint64(0); ; seq++ {
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
			binary.BigEndian.PutUint64(msg, seq)
			if _, err := c.Write(msg); err != nil {
				return
			}
			s.sent.Add(1)
		}
	}()
	return s, nil
}

func (s *stream) replies() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.seen)
}

func (s *stream) halt() { close(s.stop); <-s.stopped }

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
	return true
}

func rekeyUnderStream(t *testing.T, k *Linker, w *world, spec tunnel.Spec) {
	ctx := context.Background()
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	s, err := startStream(w.l.Peer, "10.1.0.10:7001", newMarker(), 2*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer s.c.Close()
	if !waitFor(30*time.Second, func() bool { return s.replies() >= 50 }) {
		t.Fatalf("stream: only %d replies before the rekey", s.replies())
	}
	old := k.links[spec.ID].spi
	if err := k.Rekey(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	next := k.links[spec.ID].spi
	if next[0] == old[0] || next[1] == old[1] {
		t.Fatalf("SPIs unchanged: %x -> %x", old, next)
	}
	atRekey := s.replies()
	if !waitFor(30*time.Second, func() bool { return s.replies() >= atRekey+100 }) {
		t.Fatalf("stream stalled after the rekey at %d replies", s.replies())
	}
	s.halt()
	sent := int(s.sent.Load())
	waitFor(10*time.Second, func() bool { return s.replies() == sent })
	got, _ := echo.Received()
	if got != sent || s.replies() != sent {
		t.Fatalf("rekey lost packets: sent %d, VM received %d, echoes back %d", sent, got, s.replies())
	}
	for _, host := range []string{w.l.A, w.l.B} {
		_, ss := dumpOurs(t, host, ReqID(spec.ID))
		if len(ss) != 2 {
			t.Errorf("host %s: %d SAs after rekey, want 2 (old ones removed)", host, len(ss))
		}
		for _, st := range ss {
			if uint32(st.Spi) != next[0] && uint32(st.Spi) != next[1] {
				t.Errorf("host %s: SA spi 0x%x is not a new one", host, st.Spi)
			}
		}
	}
	proof, err := k.Verify(ctx, spec.ID)
	if err != nil {
		t.Fatalf("Verify after rekey (new SAs must carry the stream): %v", err)
	}
	t.Logf("rekey under a %d-datagram stream: 0 lost; new SAs: %s", sent, proof.Detail)
}

// TestGuestCBCHMAC runs the link with cbc(aes) + hmac(sha256).
func TestGuestCBCHMAC(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := movedVM(t)
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	k := New(WithAlgorithm(AESCBCHMACSHA256))
	spec := specFor(w.l, "cbc1")
	lk, err := k.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lk.Policy, "\n"), "enc cbc(aes) auth hmac(sha256) trunc 128") {
		t.Errorf("policy lines lack the CBC/HMAC SAs:\n%s", strings.Join(lk.Policy, "\n"))
	}
	if err := k.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	marker := newMarker()
	warmUp(t, w.l.Peer, "10.1.0.10:7000")
	capt, err := lab.StartCapture(w.l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	n, err := lab.SendUDP(w.l.Peer, "10.1.0.10:7000", marker, 10)
	st := capt.Stop()
	if n != 10 || err != nil || st.Marker != 0 || st.ByProto[50] < 20 {
		t.Fatalf("%d/10 replies (%v); wan: %d marker, %d ESP frames", n, err, st.Marker, st.ByProto[50])
	}
	if _, err := k.Verify(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if err := k.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	assertGone(t, w, ReqID(spec.ID))
}

// BenchmarkGuestPrepareToFirstPacket measures Prepare + Activate until the
// first UDP echo crosses the link both ways (then Close, not timed).
func BenchmarkGuestPrepareToFirstPacket(b *testing.B) {
	klab.RequireGuest(b)
	ctx := context.Background()
	w := movedVM(b)
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7000")
	if err != nil {
		b.Fatal(err)
	}
	defer echo.Close()
	k := New()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		spec := specFor(w.l, fmt.Sprintf("b%d", i))
		if _, err := k.Prepare(ctx, spec); err != nil {
			b.Fatal(err)
		}
		if err := k.Activate(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		for tries := 0; ; tries++ {
			if n, _ := lab.SendUDP(w.l.Peer, "10.1.0.10:7000", []byte("first"), 1); n == 1 {
				break
			}
			if tries == 10 {
				b.Fatal("no packet through the link")
			}
		}
		b.StopTimer()
		if err := k.Close(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/first-packet")
}

// BenchmarkGuestThroughput sends 8 MiB over TCP from the peer to the VM
// through the ESP link and 8 MiB over the bare (clear) path, and reports
// both rates and their ratio.
func BenchmarkGuestThroughput(b *testing.B) {
	klab.RequireGuest(b)
	ctx := context.Background()
	w := movedVM(b)
	// The VM's second address 10.1.0.11 takes the clear path (not in the
	// link's selectors); 10.1.0.10 takes the link.
	bare := netip.MustParseAddr("10.1.0.11")
	if err := lab.AddAddr(w.vm, "eth0", "10.1.0.11/24"); err != nil {
		b.Fatal(err)
	}
	k := New()
	spec := specFor(w.l, "thr")
	if _, err := k.Prepare(ctx, spec); err != nil {
		b.Fatal(err)
	}
	if err := k.Activate(ctx, spec.ID); err != nil {
		b.Fatal(err)
	}
	defer k.Close(ctx, spec.ID)
	undo := w.plainPath(b, bare, false) // B's route to the peer is the link's
	defer undo()
	sink, err := startSink(w.vm, "0.0.0.0:7002")
	if err != nil {
		b.Fatal(err)
	}
	defer sink.Close()
	const size = 8 << 20
	var espT, bareT time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := transfer(w.l.Peer, "10.1.0.10:7002", size)
		if err != nil {
			b.Fatal(err)
		}
		espT += d
		if d, err = transfer(w.l.Peer, bare.String()+":7002", size); err != nil {
			b.Fatal(err)
		}
		bareT += d
	}
	b.StopTimer()
	mb := float64(size) * float64(b.N) / (1 << 20)
	b.ReportMetric(mb/espT.Seconds(), "esp-MB/s")
	b.ReportMetric(mb/bareT.Seconds(), "bare-MB/s")
	b.ReportMetric(bareT.Seconds()/espT.Seconds(), "esp/bare")
	if _, err := k.Verify(ctx, spec.ID); err != nil {
		b.Fatal(err)
	}
}

// startSink accepts TCP connections in ns, reads each to EOF and answers
// with one byte, so the sender knows everything arrived.
func startSink(ns, addr string) (net.Listener, error) {
	var ln net.Listener
	if err := nsutil.Do(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.Copy(io.Discard, c); err == nil {
					_, _ = c.Write([]byte{1})
				}
			}()
		}
	}()
	return ln, nil
}

// transfer sends size bytes from ns to addr and waits for the sink's ack.
func transfer(ns, addr string, size int) (time.Duration, error) {
	var c net.Conn
	if err := nsutil.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 5*time.Second); return }); err != nil {
		return 0, err
	}
	defer c.Close()
	start := time.Now()
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := c.Write(buf); err != nil {
			return 0, err
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	_ = c.SetReadDeadline(time.Now().Add(60 * time.Second))
	ack := make([]byte, 1)
	if _, err := io.ReadFull(c, ack); err != nil {
		return 0, fmt.Errorf("ack from %s: %w", addr, err)
	}
	return time.Since(start), nil
}

// neighMAC returns ns's neighbour entry for ip on dev ("" if none).
func neighMAC(t *testing.T, ns, dev string, ip netip.Addr) string {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lk, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	ns2, err := h.NeighList(lk.Attrs().Index, netlink.FAMILY_V4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns2 {
		if addrOf(n.IP) == ip {
			return n.HardwareAddr.String()
		}
	}
	return ""
}

func macOf(t *testing.T, ns, dev string) net.HardwareAddr {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lk, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	return lk.Attrs().HardwareAddr
}

// TestGuestStaleARP: after the move the peer still has the VM's old MAC
// and the VM the peer's MAC. Activate announces the proxied addresses
// (gratuitous ARP), so traffic flows at once, not after the entries expire.
func TestGuestStaleARP(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	l := lab.New(t)
	if n, err := lab.Ping(l.Peer, lab.VMAddr, 1, 5*time.Second); n != 1 {
		t.Fatalf("peer cannot ping the VM at A: %v", err)
	}
	oldVM := macOf(t, l.VM, "eth0").String()
	if got := neighMAC(t, l.Peer, "eth0", lab.VMAddr); got != oldVM {
		t.Fatalf("peer's entry for the VM: %q, want the VM's MAC %s", got, oldVM)
	}
	// Move: unplug at A, plug at B with the same address and the peer's
	// MAC in its neighbour table (as a migrated guest would have it).
	h, err := lab.Handle(l.A)
	if err != nil {
		t.Fatal(err)
	}
	port, err := h.LinkByName("vm0")
	if err == nil {
		err = h.LinkDel(port)
	}
	h.Close()
	if err != nil {
		t.Fatal(err)
	}
	vm, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	if err != nil {
		t.Fatal(err)
	}
	hv, err := lab.Handle(vm)
	if err != nil {
		t.Fatal(err)
	}
	eth, _ := hv.LinkByName("eth0")
	err = hv.NeighSet(&netlink.Neigh{LinkIndex: eth.Attrs().Index, Family: netlink.FAMILY_V4, State: netlink.NUD_REACHABLE,
		IP: ipOf(lab.PeerAddr), HardwareAddr: macOf(t, l.Peer, "eth0")})
	hv.Close()
	if err != nil {
		t.Fatal(err)
	}
	echo, err := lab.StartUDPEcho(vm, "10.1.0.10:7000")
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()

	k := New()
	spec := specFor(l, "arp1")
	if _, err := k.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	defer k.Close(ctx, spec.ID)
	if got := neighMAC(t, l.Peer, "eth0", lab.VMAddr); got != oldVM {
		t.Fatalf("before Activate the peer's entry changed already: %q", got)
	}
	if err := k.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	aMAC := macOf(t, l.A, "br0").String()
	if !waitFor(5*time.Second, func() bool { return neighMAC(t, l.Peer, "eth0", lab.VMAddr) == aMAC }) {
		t.Fatalf("peer's entry for the VM is %q, want A's br0 %s (gratuitous ARP)", neighMAC(t, l.Peer, "eth0", lab.VMAddr), aMAC)
	}
	if n, err := lab.SendUDP(l.Peer, "10.1.0.10:7000", []byte("after-move"), 5); n != 5 {
		t.Fatalf("%d/5 replies right after Activate (%v)", n, err)
	}
}
