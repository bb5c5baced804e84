package ipsec

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/klab"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nshv"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// TestInGuestMigrator runs the TestMigratorGuest* tests (the Migrator over
// a real XFRM link with real fences) in the full-kernel guest.
func TestInGuestMigrator(t *testing.T) {
	klab.Run(t, klab.Options{Run: "^TestMigratorGuest", Modules: []string{
		"crc32c_generic", "libcrc32c", "nf_tables", "nft_meta_bridge", // the fences
		"nf_conntrack_netlink", // conn/conntrack's auditor
	}})
}

// The migrated VM and its peers in the reference lab: the peers stay on
// A's bridge, the VM moves from A's bridge to B's.
var (
	migVM     = "vm1"
	peerBAddr = netip.MustParseAddr("10.1.0.21")
)

// migLab is the reference lab with a second peer, the test hypervisor
// moving the VM's port, and the real fences, auditors and link.
type migLab struct {
	l      *lab.Lab
	peers  []string // namespaces of the peers (10.1.0.20, 10.1.0.21)
	hv     *nshv.Cluster
	a, b   *nshv.Host
	fa, fb *nft.Fencer
	k      *Linker
}

func newMigLab(t *testing.T) *migLab {
	t.Helper()
	l := lab.New(t)
	peerB := l.Prefix + "-peerb"
	require.NoError(t, l.AddHost(peerB))
	require.NoError(t, l.Endpoint(peerB, l.A, "pr1", "br0", peerBAddr.String()+"/24", lab.Gateway))
	// Another (idle) guest on B's bridge, as a real host's bridge holds
	// other guests' taps: it keeps the bridge's carrier up while the
	// test hypervisor replaces the incoming port with the VM's. Without
	// it, B's bridge had no port with carrier until the VM's arrived, and
	// in about one run of six a carrier-down change of B's br0, handled
	// after the link's Activate had added its proxy ARP entries there,
	// deleted them (the kernel's neigh_carrier_down drops a device's
	// proxy entries), so the VM's ARP for the peers went unanswered and
	// the peers' pings through the link were never answered (seen in
	// TestMigratorGuestXFRMNonPeers's diagnostics: no proxy entry left
	// at B, the VM's neighbour entries for the peers FAILED). That is the
	// ipsec backend's to fix (its proxy entries do not survive a carrier
	// drop of the LAN device); this lab does not test it.
	nbB := l.Prefix + "-nbb"
	require.NoError(t, l.AddHost(nbB))
	require.NoError(t, l.Endpoint(nbB, l.B, "nb0", "br0", "10.1.0.30/24", lab.Gateway))
	hv := nshv.New(migVM, l.VM, "eth0")
	w := &migLab{l: l, peers: []string{l.Peer, peerB}, hv: hv,
		a: hv.Host(l.A, "vm0", "br0"), b: hv.Host(l.B, "vmb0", "br0"),
		fa: nft.New(nft.WithHost(l.A)), fb: nft.New(nft.WithHost(l.B)),
		k: New(WithProbeTimeout(6 * time.Second))}
	require.NoError(t, hv.Start(w.a))
	return w
}

// migrator returns a Migrator over the lab; wrap may replace the linker
// and the target's auditor (failure injection).
func (w *migLab) migrator(t *testing.T, linker tunnel.SecureLinker, dstAuditor conn.ConnAuditor) *migration.Migrator {
	t.Helper()
	m, err := migration.New(migration.Config{
		Environments: map[string]migration.Environment{
			"a": {Hypervisor: w.a, Fencer: w.fa, Auditor: conntrack.New(conntrack.WithHost(w.l.A)), Host: w.l.A, Underlay: lab.AUplink},
			"b": {Hypervisor: w.b, Fencer: w.fb, Auditor: dstAuditor, Host: w.l.B, Underlay: lab.BUnderlay},
		},
		Linkers: map[tunnel.Kind]tunnel.SecureLinker{tunnel.IPsec: linker},
	})
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	return m
}

func (w *migLab) plan(mode migration.FenceMode) migration.Plan {
	return migration.Plan{VM: migVM, From: "a", To: "b", Link: tunnel.IPsec, FenceMode: mode,
		Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)},
		Peers: []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32), netip.PrefixFrom(peerBAddr, 32)}}
}

// wanCapture counts, on every interface of wan (each packet once, where
// it entered), frames carrying the VM's subnet (the VM and both peers)
// in any IP or ARP header, and ESP between the hosts.
func (w *migLab) wanCapture(t *testing.T) *lab.Capture {
	t.Helper()
	c, err := lab.StartCaptureWith(w.l.WAN, lab.CaptureOptions{IngressOnly: true, Classify: &lab.Classifier{
		Watch:    []netip.Prefix{lab.VMSubnet, netip.PrefixFrom(lab.PeerAddr, 32), netip.PrefixFrom(peerBAddr, 32)},
		Underlay: []netip.Addr{lab.AUplink, lab.CoreToA, lab.CoreWAN, lab.WANCore, lab.WANB, lab.BUnderlay},
	}})
	require.NoError(t, err)
	t.Cleanup(func() { c.Stop() })
	return c
}

// control sends one packet from a peer's address across the wan in
// clear (to B's underlay address, which does not answer an echo reply)
// and requires the capture to count exactly it: the check can fail.
func (w *migLab) control(t *testing.T, c *lab.Capture) lab.CaptureStats {
	t.Helper()
	before := c.Snapshot()
	require.NoError(t, lab.SendControl(w.l.Peer, lab.BUnderlay, []byte("sealift-control")))
	require.Eventually(t, func() bool { return c.Snapshot().Watched > before.Watched }, 5*time.Second, 10*time.Millisecond,
		"control: a peer's plain packet across the wan was not counted; the check could not fail")
	time.Sleep(100 * time.Millisecond) // nothing else may follow it
	st := c.Snapshot()
	require.Equal(t, 1, st.Watched-before.Watched, "control: exactly the one plain packet: %v", st.Samples)
	return st
}

// pinger sends an ICMP echo request from ns to dst every interval and
// records when each reply arrived.
type pinger struct {
	ns   string
	c    net.PacketConn
	id   uint16
	mu   sync.Mutex
	sent int
	got  []time.Time // arrival of each distinct reply, in order
	seen map[uint16]bool
	stop chan struct{}
	wg   sync.WaitGroup
}

func startPinger(t *testing.T, ns string, dst netip.Addr, interval time.Duration) *pinger {
	t.Helper()
	p := &pinger{ns: ns, id: uint16(time.Now().UnixNano()), seen: map[uint16]bool{}, stop: make(chan struct{})}
	require.NoError(t, nsutil.Do(ns, func() (err error) { p.c, err = net.ListenPacket("ip4:icmp", "0.0.0.0"); return }))
	p.wg.Add(2)
	go func() {
		defer p.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := p.c.ReadFrom(buf)
			if err != nil {
				return
			}
			m := buf[:n]
			if n < 8 || m[0] != 0 || binary.BigEndian.Uint16(m[4:]) != p.id {
				continue
			}
			seq := binary.BigEndian.Uint16(m[6:])
			p.mu.Lock()
			if !p.seen[seq] {
				p.seen[seq] = true
				p.got = append(p.got, time.Now())
			}
			p.mu.Unlock()
		}
	}()
	go func() {
		defer p.wg.Done()
		tk := time.NewTicker(interval)
		defer tk.Stop()
		to := &net.IPAddr{IP: dst.AsSlice()}
		for seq := uint16(0); ; seq++ {
			msg := make([]byte, 8+16)
			msg[0] = 8
			binary.BigEndian.PutUint16(msg[4:], p.id)
			binary.BigEndian.PutUint16(msg[6:], seq)
			copy(msg[8:], "sealift-migrate")
			binary.BigEndian.PutUint16(msg[2:], lab.Checksum(msg))
			if _, err := p.c.WriteTo(msg, to); err == nil {
				p.mu.Lock()
				p.sent++
				p.mu.Unlock()
			}
			select {
			case <-p.stop:
				return
			case <-tk.C:
			}
		}
	}()
	t.Cleanup(p.halt)
	return p
}

// since returns how many replies arrived after t.
func (p *pinger) since(t time.Time) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	i, _ := slices.BinarySearchFunc(p.got, t, func(a, b time.Time) int { return a.Compare(b) })
	return len(p.got) - i
}

// gap returns the longest time between two replies arrived in [from, to].
func (p *pinger) gap(from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var g time.Duration
	prev := time.Time{}
	for _, at := range p.got {
		if at.Before(from) || at.After(to) {
			continue
		}
		if !prev.IsZero() && at.Sub(prev) > g {
			g = at.Sub(prev)
		}
		prev = at
	}
	return g
}

func (p *pinger) halt() {
	select {
	case <-p.stop:
		return
	default:
	}
	close(p.stop)
	p.c.Close()
	p.wg.Wait()
}

// failVerify is the real link with a Verify that fails after the real
// one ran: a failure after the target resumed (block 345).
type failVerify struct{ *Linker }

func (f failVerify) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	p, err := f.Linker.Verify(ctx, id)
	if err != nil {
		return p, err
	}
	return p, fmt.Errorf("%w: injected after the resume (the probe crossed: %s)", tunnel.ErrNotProven, p.Detail)
}

// failActivate is the real link whose Activate fails: in the switchover
// hook, before the target resumes (the Migrator rolls back).
type failActivate struct{ *Linker }

func (f failActivate) Activate(ctx context.Context, id string) error {
	return fmt.Errorf("injected activate failure in the switchover hook")
}

// rolledBack checks a migration rolled back before the resume: the VM
// runs at A, its port never left A's bridge, the peers reach it there
// again, no fence is left at either host and nothing of the link.
func rolledBack(t *testing.T, w *migLab, rep *migration.Report, err error, pingers []*pinger, ended time.Time) {
	t.Helper()
	ctx := context.Background()
	require.ErrorIs(t, err, migration.ErrRolledBack)
	t.Logf("Run: %v", err)
	assert.Equal(t, migration.RolledBack, rep.Outcome)
	assert.Contains(t, rep.Reason, "injected")
	assert.Equal(t, w.l.A, w.hv.At(), "the VM runs at A")
	vm, lerr := w.a.Lookup(ctx, migVM)
	require.NoError(t, lerr)
	assert.Equal(t, hypervisor.Running, vm.State)
	_, lerr = w.b.Lookup(ctx, migVM)
	assert.ErrorIs(t, lerr, hypervisor.ErrNotFound, "the incoming instance at B is discarded")
	hb, herr := lab.Handle(w.l.B)
	require.NoError(t, herr)
	_, perr := hb.LinkByName("vmb0")
	hb.Close()
	assert.Error(t, perr, "the incoming port at B is deleted")
	for _, f := range []*nft.Fencer{w.fa, w.fb} {
		_, fenced := fenceOf(t, f)
		assert.False(t, fenced, "a fence is left after the rollback")
	}
	links, lerr := w.k.List(ctx)
	require.NoError(t, lerr)
	assert.Empty(t, links, "the link is closed")
	for _, host := range []string{w.l.A, w.l.B} {
		p, sa := countAll(t, host)
		assert.Zero(t, p+sa, "host %s: %d XFRM policies, %d SAs left", host, p, sa)
	}
	require.Eventually(t, func() bool { return pingers[0].since(ended) >= 5 && pingers[1].since(ended) >= 5 }, 30*time.Second, 20*time.Millisecond,
		"the peers' pings are not answered at A after the rollback")
}

// failList is the real target auditor with a List that fails: a
// failure of block 355, after the resume.
type failList struct{ *conntrack.Auditor }

func (f failList) List(ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
	if _, err := f.Auditor.List(ctx, sel); err != nil {
		return nil, err
	}
	return nil, fmt.Errorf("injected audit failure after the resume")
}

// fenceOf returns host's fence of the VM (ok false if none).
func fenceOf(t *testing.T, f *nft.Fencer) (fence.Fence, bool) {
	t.Helper()
	fs, err := f.List(context.Background())
	require.NoError(t, err)
	for _, fc := range fs {
		if fc.VM == migVM {
			return fc, true
		}
	}
	return fence.Fence{}, false
}

// TestMigratorGuestXFRM runs Migrator.Run in the full kernel with the
// real ipsec linker (device-less XFRM link), the real nftables fences
// and conntrack auditors, the VM a namespace whose port the test
// hypervisor moves from A's bridge to B's, and two peers pinging it
// through the move. A capture on every interface of the wan counts
// frames carrying the VM's or a peer's address in clear (a control
// packet proves it counts) and ESP frames between the hosts.
func TestMigratorGuestXFRM(t *testing.T) {
	klab.RequireGuest(t)
	for _, tc := range []struct {
		name string
		mode migration.FenceMode
		// fail injects a failure after the resume: "verify" (block 345,
		// before 370) or "audit" (block 355; at-switchover: after 370).
		fail string
	}{
		{"at-switchover", migration.FenceAtSwitchover, ""},
		{"before-copy", migration.FenceBeforeCopy, ""},
		{"verify-fails-after-resume", migration.FenceAtSwitchover, "verify"},
		{"audit-fails-after-enable", migration.FenceAtSwitchover, "audit"},
		{"verify-fails-before-copy", migration.FenceBeforeCopy, "verify"},
		// Before the resume: the link's Activate fails in the switchover
		// hook, the Migrator rolls back, the port never moves.
		{"activate-fails-in-hook", migration.FenceAtSwitchover, "activate"},
	} {
		t.Run(tc.name, func(t *testing.T) { migrateXFRM(t, tc.mode, tc.fail) })
	}
}

func migrateXFRM(t *testing.T, mode migration.FenceMode, fail string) {
	ctx := context.Background()
	w := newMigLab(t)
	var linker tunnel.SecureLinker = w.k
	var dstAud conn.ConnAuditor = conntrack.New(conntrack.WithHost(w.l.B))
	switch fail {
	case "verify":
		linker = failVerify{w.k}
	case "audit":
		dstAud = failList{conntrack.New(conntrack.WithHost(w.l.B))}
	case "activate":
		linker = failActivate{w.k}
	}
	m := w.migrator(t, linker, dstAud)

	wan := w.wanCapture(t)
	control := w.control(t, wan)
	t.Logf("control: %d frame with a peer's address in clear counted on wan", control.Watched)

	var pingers []*pinger
	for _, ns := range w.peers {
		pingers = append(pingers, startPinger(t, ns, lab.VMAddr, 50*time.Millisecond))
	}
	start := time.Now()
	require.Eventually(t, func() bool { return pingers[0].since(start) > 0 && pingers[1].since(start) > 0 }, 10*time.Second, 20*time.Millisecond,
		"the peers cannot ping the VM at A before the migration")

	began := time.Now()
	rep, err := m.Run(ctx, w.plan(mode))
	ended := time.Now()
	require.NotNil(t, rep)
	for _, s := range rep.Steps {
		t.Logf("block %d %-20s %7.1f ms %s", s.Block, s.Name, float64(s.Duration)/1e6, s.Err)
	}
	if fail == "activate" {
		rolledBack(t, w, rep, err, pingers, ended)
		for _, p := range pingers {
			p.halt()
		}
		st := wan.Stop().Sub(control)
		t.Logf("wan after the control: %d frames, %d ESP, %d in clear with a watched address, kinds %v", st.Frames, st.ByKind[lab.KindESP], st.Watched, st.ByKind)
		assert.Zero(t, st.Watched, "frames with the VM's or a peer's address in clear on wan: %v", st.Samples)
		assert.Zero(t, st.Dropped, "frames the capture lost")
		return
	}
	assert.Equal(t, w.l.B, w.hv.At(), "the VM runs at B (its port on B's bridge)")
	vmAtB, lerr := w.b.Lookup(ctx, migVM)
	require.NoError(t, lerr)
	assert.Equal(t, hypervisor.Running, vmAtB.State, "resumed at B")
	_, lerr = w.a.Lookup(ctx, migVM)
	assert.ErrorIs(t, lerr, hypervisor.ErrNotFound, "gone from A")
	assert.Equal(t, Backend, rep.Link.Backend)
	assert.Empty(t, rep.Link.RemoteDevice, "an XFRM link has no device")

	_, fencedA := fenceOf(t, w.fa)
	assert.False(t, fencedA, "the source's fence is lifted")
	fb, fencedB := fenceOf(t, w.fb)

	if fail == "" {
		require.NoError(t, err)
		assert.Equal(t, migration.Completed, rep.Outcome)
		assert.Greater(t, rep.Proof.TxPackets, uint64(0), "Verify's proof: %s", rep.Proof.Detail)
		// 370 for an XFRM link: the target's full block becomes "IPsec-
		// protected traffic only", with the peers guard.
		if assert.True(t, fencedB, "the target stays fenced after 370") {
			assert.True(t, fb.AllowIPsec, "the target's fence after 370 lets IPsec-protected traffic through")
			assert.Equal(t, w.plan(mode).Peers, fb.Peers, "the target's fence after 370 guards the peers")
			assert.Empty(t, fb.AllowVia)
		}
		_, ok := rep.Step(migration.BlockEnable)
		assert.True(t, ok, "block 370 ran")

		// Pings answered after the move, through the link.
		atEnd := wan.Snapshot()
		ok = assert.Eventually(t, func() bool { return pingers[0].since(ended) >= 5 && pingers[1].since(ended) >= 5 }, 30*time.Second, 20*time.Millisecond,
			"the peers' pings are not answered after the migration")
		if !ok {
			diagnose(t, w, rep.Link.ID)
			t.FailNow()
		}
		after := wan.Snapshot().Sub(atEnd)
		assert.Positive(t, after.ByKind[lab.KindESP], "the pings after the move cross the wan as ESP")
		assert.Zero(t, after.Watched, "frames in clear after the move: %v", after.Samples)
		for i, p := range pingers {
			t.Logf("peer %d: %d replies after Run; longest gap between replies during the migration %s", i, p.since(ended), p.gap(began, time.Now()).Round(time.Millisecond))
		}
		sa := linkStats(t, w, rep.Link.ID)
		t.Logf("link SAs after the pings: %s", sa)
	} else {
		require.ErrorIs(t, err, migration.ErrStayedFenced)
		t.Logf("Run: %v", err)
		assert.Equal(t, migration.StayedFenced, rep.Outcome)
		assert.Contains(t, rep.Reason, "injected")
		require.True(t, fencedB, "the VM stays fenced at B")
		assert.Equal(t, "vmb0", fb.Port)
		assert.Empty(t, fb.AllowVia, "a full block (XFRM link: no device to allow)")
		assert.False(t, fb.AllowIPsec, "a full block, IPsec-protected traffic included")
		assert.Equal(t, w.plan(mode).Peers, fb.Peers, "the full block keeps the peers guard")
		assert.Equal(t, []netip.Addr{lab.VMAddr}, fb.Addrs)

		// The peers' pings still cross encrypted; the fence drops them
		// at B: no reply, nothing in clear.
		atEnd := wan.Snapshot()
		dropped, derr := w.fb.Dropped(ctx, migVM)
		require.NoError(t, derr)
		require.Eventually(t, func() bool { return wan.Snapshot().Sub(atEnd).ByKind[lab.KindESP] >= 10 }, 30*time.Second, 20*time.Millisecond,
			"the peers' pings do not cross the wan encrypted after the failure")
		time.Sleep(500 * time.Millisecond) // replies in flight, had there been any
		for i, p := range pingers {
			assert.Zero(t, p.since(ended.Add(200*time.Millisecond)), "peer %d: the fenced VM answered", i)
		}
		d2, derr := w.fb.Dropped(ctx, migVM)
		require.NoError(t, derr)
		assert.Greater(t, d2, dropped, "B's fence drops the decrypted pings")
		t.Logf("B's fence dropped %d packets while the peers kept pinging", d2-dropped)
	}

	for _, p := range pingers {
		p.halt()
	}
	st := wan.Stop().Sub(control)
	t.Logf("wan after the control: %d frames, %d ESP, %d in clear with a watched address, kinds %v", st.Frames, st.ByKind[lab.KindESP], st.Watched, st.ByKind)
	assert.Zero(t, st.Watched, "frames with the VM's or a peer's address in clear on wan: %v", st.Samples)
	assert.Positive(t, st.ByKind[lab.KindESP], "ESP frames on wan")
	assert.Zero(t, st.Dropped, "frames the capture lost")

	if fail == "" {
		// The policies drop uncovered traffic: a packet between a peer
		// and the VM that arrives at B in clear (injected on the wan) is
		// refused by the link's fwd policy, which requires the SA; B's
		// XFRM counts the refusal (the control: the packet arrived).
		got, mismatch := injectAtB(t, w, lab.PeerAddr)
		t.Logf("a plain packet from %s injected on the wan: %d frames at the VM, B's XfrmInTmplMismatch +%d", lab.PeerAddr, got, mismatch)
		assert.Zero(t, got, "a plain packet from a peer's address, injected on the wan, reached the VM")
		assert.Equal(t, 1, mismatch, "B's XfrmInTmplMismatch: the fwd policy refused the plain packet")
	}
}

// injectAtB sends, from the wan namespace, one ICMP echo reply (no
// answer) from src to the VM in clear to B, as an attacker on the
// untrusted network could, and returns how many frames carrying its
// marker the VM received and how far B's XfrmInTmplMismatch rose.
func injectAtB(t *testing.T, w *migLab, src netip.Addr) (atVM, mismatch int) {
	t.Helper()
	l := w.l
	dst := netip.PrefixFrom(lab.VMAddr, 32).String()
	require.NoError(t, lab.AddRoute(l.WAN, dst, lab.BUnderlay.String(), ""))
	defer func() {
		h, err := lab.Handle(l.WAN)
		require.NoError(t, err)
		defer h.Close()
		assert.NoError(t, h.RouteDel(&netlink.Route{Dst: ipNet(netip.PrefixFrom(lab.VMAddr, 32)), Gw: ipOf(lab.BUnderlay)}))
	}()
	marker := newMarker()
	vm, err := lab.StartCapture(l.VM, "eth0", marker)
	require.NoError(t, err)
	before := xfrmStat(t, l.B, "XfrmInTmplMismatch")
	require.NoError(t, nsutil.Do(l.WAN, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		icmp := append([]byte{0, 0, 0, 0, 0x5c, 0x02, 0, 1}, marker...)
		binary.BigEndian.PutUint16(icmp[2:], lab.Checksum(icmp))
		ip := make([]byte, 20, 20+len(icmp))
		ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_ICMP
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
		a, b := src.As4(), lab.VMAddr.As4()
		copy(ip[12:], a[:])
		copy(ip[16:], b[:])
		return unix.Sendto(fd, append(ip, icmp...), 0, &unix.SockaddrInet4{Addr: b})
	}))
	time.Sleep(500 * time.Millisecond)
	st := vm.Stop()
	return st.Marker, xfrmStat(t, l.B, "XfrmInTmplMismatch") - before
}

// linkStats describes the link's current SAs at both hosts.
func linkStats(t *testing.T, w *migLab, id string) string {
	t.Helper()
	lk, err := w.k.get(id)
	require.NoError(t, err)
	s := ""
	for _, host := range []string{w.l.A, w.l.B} {
		for d := range lk.spi {
			st := saStats(t, host, lk, d)
			s += fmt.Sprintf("%s dir %d: %d packets; ", host, d, st.Packets)
		}
	}
	return s
}

// TestMigratorGuestXFRMNonPeers: after a completed migration over an
// XFRM link, the link's policies cover only VM <-> Plan.Peers, and block
// 370 leaves the target fenced with AllowIPsec and the peers guard
// (until that fix, the fence went at 370 and this test, then
// TestGapGuestXFRMUncoveredAfterEnable, failed on purpose). Checked from
// the wan, whose capture first counts a peer's plain control packet:
//   - the peers still reach the VM (through the link, encrypted);
//   - the VM's packet to a non-peer (peer2, 10.2.0.20, behind the routing
//     core) does not cross the wan in clear: B's fence drops it;
//   - a plain packet from a non-peer injected on the wan does not reach
//     the VM;
//   - B's own ICMP errors to a peer, which XFRM does not encrypt (no
//     policy covers B's address): "host unreachable" for an unused
//     address of the VM's subnet (a peer's plain packet to it, injected
//     on the wan; dropped by the guard), and for the VM itself once it is
//     down (a peer's ping through the link; dropped by the VM's fence,
//     as it quotes the VM) do not cross the wan in clear. Control: with
//     B's fence lifted, both errors are counted on the wan.
func TestMigratorGuestXFRMNonPeers(t *testing.T) {
	klab.RequireGuest(t)
	ctx := context.Background()
	w := newMigLab(t)
	l := w.l
	m := w.migrator(t, w.k, conntrack.New(conntrack.WithHost(l.B)))
	wan := w.wanCapture(t)
	control := w.control(t, wan)
	rep, err := m.Run(ctx, w.plan(migration.FenceAtSwitchover))
	require.NoError(t, err)
	require.Equal(t, migration.Completed, rep.Outcome)
	fb, fenced := fenceOf(t, w.fb)
	require.True(t, fenced, "B's fence after 370")
	require.True(t, fb.AllowIPsec)
	require.Equal(t, w.plan(migration.FenceAtSwitchover).Peers, fb.Peers)

	// The peers reach the VM, encrypted.
	before := wan.Snapshot()
	for _, ns := range w.peers {
		n, err := lab.Ping(ns, lab.VMAddr, 3, 3*time.Second)
		require.NoError(t, err)
		if !assert.Equal(t, 3, n, "a peer's pings through the link after 370 (%s)", ns) {
			diagnose(t, w, rep.Link.ID)
		}
	}
	st := wan.Snapshot().Sub(before)
	assert.Positive(t, st.ByKind[lab.KindESP], "the pings cross the wan as ESP")
	assert.Zero(t, st.Watched, "the peers' pings crossed in clear: %v", st.Samples)

	// Outbound to a non-peer.
	dropped := fenceDrops(t, w.fb)
	before = wan.Snapshot()
	require.NoError(t, lab.SendControl(l.VM, lab.Peer2Addr, []byte("sealift-uncovered")))
	require.Eventually(t, func() bool { return fenceDrops(t, w.fb) > dropped }, 5*time.Second, 10*time.Millisecond,
		"B's fence dropped nothing: was the VM's packet to %s sent?", lab.Peer2Addr)
	time.Sleep(300 * time.Millisecond)
	st = wan.Snapshot().Sub(before)
	t.Logf("after block 370: the VM's one packet to %s (not a plan peer): %d frames in clear on wan %v (control counted %d); B's fence dropped +%d",
		lab.Peer2Addr, st.Watched, st.Samples, control.Watched, fenceDrops(t, w.fb)-dropped)
	assert.Zero(t, st.Watched, "the VM's packet to a non-peer crossed the wan in clear")

	// Inbound from a non-peer.
	got, mismatch := injectAtB(t, w, lab.Peer2Addr)
	t.Logf("a plain packet from %s injected on the wan: %d frames at the VM, XfrmInTmplMismatch +%d", lab.Peer2Addr, got, mismatch)
	assert.Zero(t, got, "a plain packet from a non-peer, injected on the wan, reached the VM")

	// B's own ICMP errors to a peer. Fast, unlimited errors: an address
	// without a neighbour fails after 100 ms.
	for k, v := range map[string]string{"net/ipv4/icmp_ratelimit": "0",
		"net/ipv4/neigh/br0/mcast_solicit": "1", "net/ipv4/neigh/br0/retrans_time_ms": "100"} {
		require.NoError(t, lab.Sysctl(l.B, k, v), k)
	}
	unused := netip.MustParseAddr("10.1.0.12")
	require.NoError(t, lab.AddRoute(l.WAN, netip.PrefixFrom(unused, 32).String(), lab.BUnderlay.String(), ""))
	toUnused := func() { injectICMP(t, l.WAN, lab.PeerAddr, unused, 8) }
	// The VM goes down, and B forgets its MAC: a peer's ping through the
	// link then ends in B's "host unreachable".
	out, err := lab.Exec(l.VM, "ip", "link", "set", "eth0", "down")
	require.NoError(t, err, "%s", out)
	toDownVM := func() {
		forgetNeigh(t, l.B, "br0", lab.VMAddr)
		_, err := lab.Ping(l.Peer, lab.VMAddr, 1, 0)
		require.NoError(t, err)
	}
	// errorsOnWAN sends (again every second, up to 5 times, until the
	// error shows: fenced, as a drop of B's fence or guard; unfenced, on
	// the wan) and returns how many frames with a watched address crossed
	// the wan in clear meanwhile, how many packets B's fence and guard
	// dropped (fenced), and how many sends it took.
	errorsOnWAN := func(send func(), fenced bool) (inClear int, drops uint64, sends int) {
		t.Helper()
		dropsNow := func() uint64 {
			if !fenced {
				return 0
			}
			return fenceDrops(t, w.fb) + guardDrops(t, w.fb)
		}
		d0 := dropsNow()
		before := wan.Snapshot()
		shown := func() bool {
			if fenced {
				return dropsNow() > d0
			}
			return wan.Snapshot().Sub(before).Watched > 0
		}
		for sends < 5 && !shown() {
			send()
			sends++
			deadline := time.Now().Add(time.Second) // ARP fails after 100 ms
			for time.Now().Before(deadline) && !shown() {
				time.Sleep(20 * time.Millisecond)
			}
		}
		time.Sleep(300 * time.Millisecond) // anything still in flight
		st := wan.Snapshot().Sub(before)
		if st.Watched > 0 {
			t.Logf("in clear on wan: %v", st.Samples)
		}
		return st.Watched, dropsNow() - d0, sends
	}
	for _, c := range []struct {
		name  string
		send  func()
		guard bool // the guard, not the VM's fence, must drop it
	}{{"host-unreachable-unused-address", toUnused, true}, {"host-unreachable-vm-down", toDownVM, false}} {
		g0 := guardDrops(t, w.fb)
		n, drops, sends := errorsOnWAN(c.send, true)
		t.Logf("%s: fenced: %d frames in clear on wan, B's fence and guard dropped +%d (%d sends)", c.name, n, drops, sends)
		assert.Zero(t, n, "%s: B's ICMP error to a peer crossed the wan in clear", c.name)
		assert.Positive(t, drops, "%s: B's fence dropped nothing: was the error made?", c.name)
		if c.guard {
			assert.Greater(t, guardDrops(t, w.fb), g0, "%s: the peers guard dropped nothing", c.name)
		}
	}
	// Control: without B's fence the same errors cross the wan in clear.
	require.NoError(t, w.fb.Lift(ctx, migVM))
	for _, c := range []struct {
		name string
		send func()
	}{{"host-unreachable-unused-address", toUnused}, {"host-unreachable-vm-down", toDownVM}} {
		n, _, sends := errorsOnWAN(c.send, false)
		t.Logf("%s: control, B unfenced: %d frames in clear on wan (%d sends)", c.name, n, sends)
		assert.Positive(t, n, "%s: control: B's error to a peer was not counted on the wan unfenced; the zero above proves nothing", c.name)
	}
}

// forgetNeigh deletes host's neighbour entry for a on dev (if any), so
// the next packet to a resolves it anew.
func forgetNeigh(t *testing.T, host, dev string, a netip.Addr) {
	t.Helper()
	h, err := lab.Handle(host)
	require.NoError(t, err)
	defer h.Close()
	lk, err := h.LinkByName(dev)
	require.NoError(t, err)
	ns, err := h.NeighList(lk.Attrs().Index, netlink.FAMILY_V4)
	require.NoError(t, err)
	for _, n := range ns {
		if n.IP.Equal(ipOf(a)) {
			n := n
			require.NoError(t, h.NeighDel(&n), "delete the neighbour %s on %s at %s", a, dev, host)
		}
	}
}

// fenceDrops and guardDrops read B's drop counters for the VM's fence and
// the peers guard.
func fenceDrops(t *testing.T, f *nft.Fencer) uint64 {
	t.Helper()
	n, err := f.Dropped(context.Background(), migVM)
	require.NoError(t, err)
	return n
}

func guardDrops(t *testing.T, f *nft.Fencer) uint64 {
	t.Helper()
	n, err := f.GuardDropped(context.Background())
	require.NoError(t, err)
	return n
}

// injectICMP sends, from ns, one ICMP message of type typ (8: echo
// request) from src to dst in clear, through a raw socket with its own IP
// header (src need not be ns's).
func injectICMP(t *testing.T, ns string, src, dst netip.Addr, typ byte) {
	t.Helper()
	require.NoError(t, nsutil.Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		icmp := append([]byte{typ, 0, 0, 0, 0x5c, 0x03, 0, 1}, "sealift-host-error"...)
		binary.BigEndian.PutUint16(icmp[2:], lab.Checksum(icmp))
		ip := make([]byte, 20, 20+len(icmp))
		ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_ICMP
		binary.BigEndian.PutUint16(ip[2:], uint16(20+len(icmp)))
		a, b := src.As4(), dst.As4()
		copy(ip[12:], a[:])
		copy(ip[16:], b[:])
		return unix.Sendto(fd, append(ip, icmp...), 0, &unix.SockaddrInet4{Addr: b})
	}))
}

// diagnose logs what may explain unanswered pings after a migration: B's
// fence and guard drop counters, the link's SA counters, the neighbour
// tables of the VM, both hosts and a peer, and the hosts' XFRM errors.
func diagnose(t *testing.T, w *migLab, id string) {
	t.Helper()
	d, _ := w.fb.Dropped(context.Background(), migVM)
	g, _ := w.fb.GuardDropped(context.Background())
	t.Logf("DIAG B fence dropped %d guard %d; SAs %s", d, g, linkStats(t, w, id))
	for _, ns := range []string{w.l.VM, w.l.B, w.l.A, w.peers[0]} {
		h, err := lab.Handle(ns)
		if err != nil {
			continue
		}
		ns4, _ := h.NeighList(0, netlink.FAMILY_V4)
		for _, n := range ns4 {
			t.Logf("DIAG %s neigh %s %s state %#x idx %d", ns, n.IP, n.HardwareAddr, n.State, n.LinkIndex)
		}
		h.Close()
	}
	for _, ns := range []string{w.l.B, w.l.A} {
		h, err := lab.Handle(ns)
		if err != nil {
			continue
		}
		px, _ := h.NeighProxyList(0, netlink.FAMILY_V4)
		for _, n := range px {
			t.Logf("DIAG %s proxy %s idx %d", ns, n.IP, n.LinkIndex)
		}
		rs, _ := h.RouteList(nil, netlink.FAMILY_V4)
		for _, r := range rs {
			t.Logf("DIAG %s route %s via %s idx %d proto %d", ns, r.Dst, r.Gw, r.LinkIndex, r.Protocol)
		}
		ls, _ := h.LinkList()
		for _, l := range ls {
			a := l.Attrs()
			t.Logf("DIAG %s link %d %s master %d oper %s flags %s", ns, a.Index, a.Name, a.MasterIndex, a.OperState, a.Flags)
		}
		h.Close()
	}
	for _, k := range []string{"XfrmInTmplMismatch", "XfrmInNoPols", "XfrmOutNoStates", "XfrmOutPolBlock", "XfrmFwdHdrError", "XfrmInStateMismatch"} {
		t.Logf("DIAG B %s %d A %d", k, xfrmStat(t, w.l.B, k), xfrmStat(t, w.l.A, k))
	}
}
