package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// Options select the scenario.
type Options struct {
	Hypervisor string // "qemu"
	Link       tunnel.Kind
	Fence      migration.FenceMode
	Subnet     bool // two guests; the second move takes the whole subnet
	// Progress, if set, receives a line per migration progress event.
	Progress func(string)
}

func (o Options) validate() error {
	switch o.Hypervisor {
	case "qemu", "libvirt":
	default:
		return fmt.Errorf("-hypervisor %q: want qemu or libvirt", o.Hypervisor)
	}
	switch o.Link {
	case tunnel.WireGuard:
	case tunnel.IPsec:
		if !kernelHasESP() {
			return fmt.Errorf("-link ipsec: the running kernel %s has no ESP (CONFIG_INET_ESP, module esp4); "+
				"run the lab on a kernel that has it, or see the ipsec package's tests, which prove the XFRM link "+
				"inside a QEMU guest with Debian's kernel", kernelRelease())
		}
	default:
		return fmt.Errorf("-link %q: want wireguard or ipsec", o.Link)
	}
	switch o.Fence {
	case migration.FenceAtSwitchover, migration.FenceBeforeCopy:
	default:
		return fmt.Errorf("-fence %q: want at-switchover or before-copy", o.Fence)
	}
	return nil
}

// marker is carried by every probe between the guests and their peers;
// the wan capture counts frames that show it in clear.
var marker = []byte("SEALIFT-LAB-PLAINTEXT-5b1e")

const pingEvery = 5 * time.Millisecond

// maxDowntime bounds the stop-and-copy phase of the baseline and of the
// secure migrations alike (QEMU's default is 300 ms), so they compare.
const maxDowntime = 30 * time.Millisecond

// Run builds the lab, runs the scenario and returns the result.
func Run(ctx context.Context, t lab.TB, o Options, log *slog.Logger) (*Result, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	res := &Result{Scenario: scenario(o)}
	w, err := build(ctx, t, o, log)
	if err != nil {
		return nil, fmt.Errorf("build lab: %w", err)
	}
	l := w.l
	journalPath := filepath.Join(w.dir, "journal.db")
	j, err := migration.OpenBoltJournal(journalPath)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { j.Close() })

	// Capture the wan for the whole run, between the wan router and B.
	capture, err := lab.StartCapture(l.WAN, "b0", marker)
	if err != nil {
		return nil, err
	}
	defer capture.Stop()

	// Peers keep talking to the guests all along: pings every 5 ms and a
	// plaintext TCP session from the other subnet.
	peers := []string{l.Peer2}
	if !o.Subnet {
		peers = append(peers, l.Peer)
	}
	pingers := map[string][]*pinger{}
	for vi, v := range w.vms {
		for pi, ns := range peers {
			p, err := startPinger(ns, v.addr, pingEvery, uint16(0x5100+vi*16+pi), marker)
			if err != nil {
				return nil, err
			}
			defer p.Stop()
			pingers[v.name] = append(pingers[v.name], p)
		}
	}
	sess := startSession(l.Peer2, netip.AddrPortFrom(lab.VMAddr, guest.EchoPort).String(), string(marker), 20*time.Millisecond)
	defer sess.Stop()
	before, err := guest.Query(ctx, l.Peer2, lab.VMAddr)
	if err != nil {
		return nil, fmt.Errorf("guest status before: %w", err)
	}
	if err := waitFor(ctx, 10*time.Second, func() bool { return len(sess.Connections()) == 1 && sess.echoedN() > 5 }); err != nil {
		return nil, fmt.Errorf("plaintext session did not start: %w (last error %v)", err, sess.err())
	}

	// Baseline: a plain, insecure QEMU migration (no TLS, no fence, no
	// link) of an identical guest within A, measured the same way.
	basePingers := []*pinger{}
	for pi, ns := range peers {
		p, err := startPinger(ns, baseVM.addr, pingEvery, uint16(0x5200+pi), marker)
		if err != nil {
			return nil, err
		}
		defer p.Stop()
		basePingers = append(basePingers, p)
	}
	if err := waitFor(ctx, 5*time.Second, func() bool { return basePingers[0].Between(time.Now().Add(-time.Second), time.Now()).Answered > 10 }); err != nil {
		return nil, fmt.Errorf("baseline guest does not answer pings: %w", err)
	}
	t0 := time.Now()
	st, err := plainMigrate(ctx, w.base, w.base2, baseVM.name, maxDowntime)
	if err != nil {
		return nil, fmt.Errorf("baseline migration: %w", err)
	}
	time.Sleep(300 * time.Millisecond) // let replies in flight arrive
	res.Baseline = migrationStats(st)
	res.BaselineBlackoutMS = maxBlackout(basePingers, t0, time.Now())
	for _, p := range basePingers {
		p.Stop()
	}
	w.cfg.Journal = j
	m, err := migration.New(w.cfg)
	if err != nil {
		return nil, err
	}
	events, unsubscribe := m.Subscribe(1024)
	go relay(events, o, w)
	defer unsubscribe()

	// The secure migrations.
	for i, v := range w.vms {
		p := migration.Plan{VM: v.name, From: "secure", To: "cloud", Link: o.Link, FenceMode: o.Fence, MaxDowntime: maxDowntime,
			Addrs: []netip.Prefix{netip.PrefixFrom(v.addr, 32)},
			Peers: []netip.Prefix{lab.Peer2Net}}
		if !o.Subnet {
			p.Peers = append(p.Peers, netip.PrefixFrom(lab.PeerAddr, 32))
		} else {
			p.Subnet = &migration.Subnet{Prefix: lab.VMSubnet, Members: []string{"vm1", "vm2"}, Via: bSite,
				ConvergeTimeout: 60 * time.Second}
		}
		t0 := time.Now()
		rep, err := m.Run(ctx, p)
		if rep == nil {
			return res, fmt.Errorf("migrate %s: %w", v.name, err)
		}
		time.Sleep(300 * time.Millisecond)
		mr := migrationResult(rep, err)
		mr.BlackoutMS = maxBlackout(pingers[v.name], t0, time.Now())
		if st, ok := rep.Step(migration.BlockRestart); ok {
			mr.TrafficAfterResumeMS = firstReplyAfter(pingers[v.name], time.Unix(0, st.Start))
		}
		if o.Subnet && rep.SubnetMoved {
			mr.RedirectRemovalLost = lostDuring(allPingers(pingers), rep, migration.BlockRemoveTunnel)
		}
		res.Migrations = append(res.Migrations, mr)
		if i == 0 {
			res.fromFirst(mr)
		}
		if err != nil {
			res.Diagnostics = w.diagnose(ctx)
			return res, fmt.Errorf("migrate %s: %w", v.name, err)
		}
	}

	// After: the guest answers at B, its counter went on, the plaintext
	// session came back over the link and is classified secure.
	after, err := guest.Query(ctx, l.Peer2, lab.VMAddr)
	res.VMReachableAfter = err == nil
	res.CounterContinued = err == nil && after.BootID == before.BootID && after.Counter > before.Counter
	for _, v := range w.vms {
		if where, _ := w.hv.b.Lookup(ctx, v.name); where.State != hypervisor.Running {
			res.VMReachableAfter = false
		}
		if _, err := w.hv.a.Lookup(ctx, v.name); !errors.Is(err, hypervisor.ErrNotFound) {
			res.VMReachableAfter = false // still (or also) at the source
		}
	}
	// Every peer still reaches every guest (answered pings in the last 300 ms).
	res.PeersReachAll = true
	for name, ps := range pingers {
		for _, p := range ps {
			s := p.Between(time.Now().Add(-300*time.Millisecond), time.Now())
			if s.Answered == 0 {
				res.PeersReachAll = false
				res.Unreachable = append(res.Unreachable, fmt.Sprintf("%s from pinger %#x", name, p.id))
			}
		}
	}
	if !res.VMReachableAfter || !res.PeersReachAll {
		res.Diagnostics = w.diagnose(ctx)
	}
	res.Audit.ReestablishedSecure, res.Audit.Reestablished = w.reestablished(ctx, sess, res.Migrations[0])
	res.JournalComplete = journalComplete(ctx, j)
	for _, ps := range pingers {
		for _, p := range ps {
			p.Stop()
		}
	}
	sess.Stop()
	cs := capture.Stop()
	res.PlaintextFramesOnWAN = cs.Marker
	res.WAN = wanStats{Frames: cs.Frames, ESP: cs.ByProto[50], UDP: cs.ByProto[17], TCP: cs.ByProto[6], ICMP: cs.ByProto[1], Dropped: cs.Dropped}
	return res, nil
}

// plainMigrate is the baseline: QEMU's migration between two instances,
// nothing else.
func plainMigrate(ctx context.Context, from, to hypervisor.Hypervisor, name string, downtime time.Duration) (hypervisor.Stats, error) {
	vm, err := from.Lookup(ctx, name)
	if err != nil {
		return hypervisor.Stats{}, err
	}
	ep, err := to.PrepareIncoming(ctx, vm)
	if err != nil {
		return hypervisor.Stats{}, err
	}
	st, err := from.Migrate(ctx, name, ep, hypervisor.MigrateOptions{MaxDowntime: downtime})
	if err != nil {
		to.Abort(ctx, name)
		return st, err
	}
	return st, to.Resume(ctx, name)
}

// reestablished waits for the plaintext session's new connection and
// judges its flow at B with the policy that holds once the link is up.
func (w *world) reestablished(ctx context.Context, s *session, mr MigrationResult) (secure bool, detail string) {
	if err := waitFor(ctx, 20*time.Second, func() bool { return len(s.Connections()) >= 2 && s.echoedN() > 0 }); err != nil {
		return false, fmt.Sprintf("no new connection: %v (last error %v)", err, s.err())
	}
	cs := s.Connections()
	latest := cs[len(cs)-1]
	sel := conn.Selector{Host: w.l.B, Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}
	var found *conn.Conn
	err := waitFor(ctx, 10*time.Second, func() bool {
		flows, err := w.audit.List(ctx, sel)
		if err != nil {
			return false
		}
		for i := range flows {
			if flows[i].Remote == latest && flows[i].Proto == conn.TCP {
				found = &flows[i]
				return true
			}
		}
		return false
	})
	if err != nil {
		return false, fmt.Sprintf("new connection %s not seen at B: %v", latest, err)
	}
	cls := conn.Classify([]conn.Conn{*found}, mr.after)
	if len(cls.Keep) == 1 {
		return true, fmt.Sprintf("%s secure (%s)", found, cls.Keep[0].Reason)
	}
	return false, fmt.Sprintf("%s unsecured", found)
}

func journalComplete(ctx context.Context, j migration.Journal) bool {
	un, err := j.Unfinished(ctx)
	return err == nil && len(un) == 0
}

func waitFor(ctx context.Context, d time.Duration, ok func() bool) error {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for !ok() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

func kernelRelease() string {
	b, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return string(trimNL(b))
}

func kernelHasESP() bool {
	if _, err := os.Stat("/sys/module/esp4"); err == nil {
		return true
	}
	rel := kernelRelease()
	for _, suffix := range []string{".ko", ".ko.xz", ".ko.zst"} {
		if _, err := os.Stat("/lib/modules/" + rel + "/kernel/net/ipv4/esp4" + suffix); err == nil {
			return true
		}
	}
	return false
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == ' ') {
		b = b[:len(b)-1]
	}
	return b
}
