package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

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
	// VMs (with Subnet): the subnet's N guests move in one RunBatch, all
	// at once, compared in the same run with the same N moved one by one
	// (batch.go).
	VMs int
	// Parallel (with VMs): the second phase's Batch.Parallel (0: VMs).
	Parallel int
	parallel int // the batch phase's (0: both phases)
	// Remote: an agent process per host, the controller (`sealift
	// migrate`) in a namespace of its own (remote.go).
	Remote bool
	// Kill (remote only): "source" or "target": kill that agent with
	// SIGKILL mid-migration, at KillAt ("copy" or "switchover"), then
	// restart it and recover (kill.go); "controller": kill sealift
	// migrate at the crash point KillAt (crash.go). No baselines, no
	// figures.
	Kill, KillAt string
	// Standby (with Kill "controller"): the controllers share an etcd
	// journal and a standby finishes the killed owner's migration
	// (standby.go); else `sealift recover` on the bbolt journal does.
	Standby bool
	// Logs, if set, is a directory the run's logs are copied to at its
	// end (-remote: each agent's, the controller's, its journal).
	Logs string
	// Progress, if set, receives a line per migration progress event.
	Progress func(string)
	// IPv6: guests, peers and hosts are dual-stack; peers ping the guests
	// and hold a plaintext session to them over IPv6 too, and the run is
	// judged for both families.
	IPv6 bool
	// WAN6: the untrusted wan is IPv6 only; the link's endpoints and the
	// migration stream use the hosts' IPv6 underlay addresses.
	WAN6 bool
	// NSPrefix starts the names of the lab's namespaces (NSPrefix + 6
	// random hex digits; "" means "sl") and, when set, of its site VPN's
	// WireGuard devices: labs run at once on one machine must differ.
	NSPrefix string
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
	if len(o.NSPrefix) > 5 || !validPrefix(o.NSPrefix) {
		return fmt.Errorf("-ns-prefix %q: want at most 5 lower-case letters or digits (device names are at most 15 characters)", o.NSPrefix)
	}
	if o.IPv6 || o.WAN6 {
		switch {
		case o.Hypervisor != "qemu":
			return fmt.Errorf("-ipv6/-wan6: only with -hypervisor qemu for now")
		}
	}
	if o.VMs != 0 {
		switch {
		case !o.Subnet:
			return fmt.Errorf("-vms %d: needs -subnet (a batch moves a subnet)", o.VMs)
		case o.Parallel < 0 || o.Parallel > o.VMs:
			return fmt.Errorf("-parallel %d: want 0 (all) to -vms %d", o.Parallel, o.VMs)
		case o.VMs < 2 || o.VMs > maxBatchVMs:
			return fmt.Errorf("-vms %d: want 2 to %d", o.VMs, maxBatchVMs)
		case o.Kill != "":
			return fmt.Errorf("-vms %d: the batch scenario kills nothing (no -kill)", o.VMs)
		case o.Hypervisor != "qemu":
			return fmt.Errorf("-vms %d: -hypervisor %q: the batch scenario runs qemu only", o.VMs, o.Hypervisor)
		}
	}
	return o.checkRemote()
}

func validPrefix(p string) bool {
	for _, c := range p {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// marker is carried by every probe between the guests and their peers;
// the wan capture counts frames that show it in clear.
var marker = []byte("SEALIFT-LAB-PLAINTEXT-5b1e")

const pingEvery = 5 * time.Millisecond

// maxDowntime bounds the stop-and-copy phase of the baseline and of the
// secure migrations alike (QEMU's default is 300 ms), so they compare.
const maxDowntime = 30 * time.Millisecond

// Run builds the lab, runs the scenario and returns the result, judged:
// res.Pass is false (and res.Verdicts say why) when anything failed, the
// run itself included. The wan capture is read whatever happens.
func Run(ctx context.Context, t lab.TB, o Options, log *slog.Logger) (*Result, error) {
	if err := o.validate(); err != nil {
		return nil, err
	}
	if o.VMs > 0 && o.parallel == 0 {
		return runBatchScenario(ctx, t, o, log)
	}
	res := &Result{Scenario: scenario(o), Journal: "not checked"}
	w, err := build(ctx, t, o, log)
	if err != nil {
		err = fmt.Errorf("build lab: %w", err)
	}
	if w == nil {
		res.judge(err, o)
		return res, err
	}
	var marks []lab.CaptureStats
	if err == nil {
		err = w.run(ctx, t, res, w.wan, &marks)
	}
	res.WAN = wanResult(w.wan.Stop(), marks, res.WAN.LeakProbe)
	res.judge(err, o)
	if !res.Pass {
		res.Diagnostics = w.diagnose(context.WithoutCancel(ctx))
	}
	return res, err
}

// wanResult sums up the wan capture. marks are the capture's snapshots
// before the control (marks[0]), after it (marks[1]) and, in a
// dual-stack run over an IPv4 wan, after the IPv6 control (marks[2]):
// each control must be exactly one frame by address and marker;
// everything else counts against the run.
func wanResult(final lab.CaptureStats, marks []lab.CaptureStats, probe *LeakProbe) WANResult {
	none := lab.CaptureStats{ByKind: map[string]int{}}
	c, c6 := none, none
	if len(marks) >= 2 {
		c = marks[1].Sub(marks[0])
	}
	r := WANResult{Frames: final.Frames, ByKind: final.ByKind, Dropped: final.Dropped,
		ControlByAddress: c.Watched, ControlByMarker: c.Marker,
		Samples: final.Samples, LeakProbe: probe}
	if len(marks) >= 3 {
		c6 = marks[2].Sub(marks[1])
		v6, m6 := c6.Watched6, c6.Marker
		r.ControlV6ByAddress, r.ControlV6ByMarker = &v6, &m6
	}
	r.PlaintextByAddress = final.Watched - min(c.Watched, 1) - min(c6.Watched, 1)
	r.PlaintextByAddressV6 = final.Watched6 - min(c.Watched6, 1) - min(c6.Watched6, 1)
	r.PlaintextByMarker = final.Marker - min(c.Marker, 1) - min(c6.Marker, 1)
	r.Unknown = final.ByKind[lab.KindUnknown] - min(c.ByKind[lab.KindUnknown], 1) - min(c6.ByKind[lab.KindUnknown], 1)
	if final.Frames == 0 {
		r.Error = "the capture saw no frame"
	}
	return r
}

// run is the scenario: control packet, baselines, secure migrations,
// checks. It fills res as it goes, so a failure still reports.
func (w *world) run(ctx context.Context, t lab.TB, res *Result, wan *lab.Capture, marks *[]lab.CaptureStats) error {
	l, o := w.l, w.opts
	var j migration.Journal
	if !o.Remote { // remote: the controller's, read once it is done
		bj, err := migration.OpenBoltJournal(filepath.Join(w.dir, "journal.db"))
		if err != nil {
			return err
		}
		t.Cleanup(func() { bj.Close() })
		j = bj
	}

	// The control: one marked packet from a peer's address, in clear
	// across the wan, before any link exists. The counters must see it.
	// (-wan6: an ICMPv6 one, the wan being IPv6 only.) A dual-stack run
	// over an IPv4 wan sends an IPv6 one too, after it: the IPv6 count
	// must see it.
	controls := []netip.Addr{w.underB()}
	if o.IPv6 && !o.WAN6 {
		controls = append(controls, lab.BUnderlay6)
	}
	*marks = []lab.CaptureStats{wan.Snapshot()}
	for _, dst := range controls {
		last := (*marks)[len(*marks)-1]
		if err := lab.SendControl(l.Peer2, dst, marker); err != nil {
			return fmt.Errorf("control packet to %s: %w", dst, err)
		}
		_ = waitFor(ctx, 3*time.Second, func() bool { return wan.Snapshot().Watched > last.Watched })
		*marks = append(*marks, wan.Snapshot())
	}

	// B's own interfaces (not its uplinks) for the timeline: the guest's
	// tap, the link's device.
	capB, err := lab.StartCaptureWith(l.B, lab.CaptureOptions{Times: true, Exclude: []string{"wan0", "bw0"}})
	if err != nil {
		return err
	}
	defer capB.Stop()

	// Peers keep talking to the guests all along: pings every 5 ms and a
	// plaintext TCP session from the other subnet.
	peers := []string{l.Peer2}
	if !o.Subnet {
		peers = append(peers, l.Peer)
	}
	pingers := map[string][]*pinger{}
	// pingers6: the same peers pinging the guests' IPv6 addresses (-ipv6).
	pingers6 := map[string][]*pinger{}
	for vi, v := range w.vms {
		for pi, ns := range peers {
			p, err := startPinger(ns, v.addr, pingEvery, uint16(0x5100+vi*16+pi), marker)
			if err != nil {
				return err
			}
			defer p.Stop()
			pingers[v.name] = append(pingers[v.name], p)
			if !v.addr6.IsValid() {
				continue
			}
			p6, err := startPinger(ns, v.addr6, pingEvery, uint16(0x5180+vi*16+pi), marker)
			if err != nil {
				return err
			}
			defer p6.Stop()
			pingers6[v.name] = append(pingers6[v.name], p6)
		}
	}
	sess := startSession(l.Peer2, netip.AddrPortFrom(lab.VMAddr, guest.EchoPort).String(), string(marker), 20*time.Millisecond)
	defer sess.Stop()
	// -ipv6: a second plaintext session, to the guest's IPv6 address.
	var sess6 *session
	if v6 := w.vms[0].addr6; v6.IsValid() {
		sess6 = startSession(l.Peer2, netip.AddrPortFrom(v6, guest.EchoPort).String(), string(marker), 20*time.Millisecond)
		defer sess6.Stop()
	}
	before, err := guest.Query(ctx, l.Peer2, lab.VMAddr)
	if err != nil {
		return fmt.Errorf("guest status before: %w", err)
	}
	if err := waitFor(ctx, 10*time.Second, func() bool { return len(sess.Connections()) == 1 && sess.echoedN() > 5 }); err != nil {
		return fmt.Errorf("plaintext session did not start: %w (last error %v)", err, sess.err())
	}
	if sess6 != nil {
		if err := waitFor(ctx, 10*time.Second, func() bool { return len(sess6.Connections()) == 1 && sess6.echoedN() > 5 }); err != nil {
			return fmt.Errorf("IPv6 plaintext session did not start: %w (last error %v)", err, sess6.err())
		}
	}

	if o.Kill != "" { // the crash scenario instead of the measurements
		res.Remote = true
		if err := w.killScenario(ctx, t, res, pingers); err != nil {
			return err
		}
		for _, ps := range pingers {
			for _, p := range ps {
				p.Stop()
			}
		}
		sess.Stop()
		return nil
	}

	if o.VMs == 0 {
		// The baselines: the same QEMU backend moving an identical guest from
		// A to B, with a TLS stream (a) and without (b), nothing of sealift.
		for i, b := range []struct {
			name     string
			v        vmSpec
			from, to hypervisor.Hypervisor
			tap      string
		}{{o.Hypervisor + " A->B, TLS stream (a)", baseTLS, w.btA, w.btB, w.btTap},
			{o.Hypervisor + " A->B, plain stream (b)", basePlain, w.bpA, w.bpB, w.bpTap}} {
			br, err := w.baseline(ctx, b.name, b.v, b.from, b.to, uint16(0x5200+i*16), capB, b.tap)
			if err != nil {
				return fmt.Errorf("baseline %s: %w", b.name, err)
			}
			res.Baselines = append(res.Baselines, br)
		}
	}

	var m *migration.Migrator
	var keys *keyWatch
	if o.Remote {
		res.Remote = true
		res.Controller = &ControllerResult{AgentRTTMS: w.agentRTTs(ctx)}
		keys = watchKeys()
		defer keys.close()
	} else {
		w.cfg.Journal = j
		if m, err = migration.New(w.cfg); err != nil {
			return err
		}
		events, unsubscribe := m.Subscribe(1024)
		go relay(events, o, w)
		defer unsubscribe()
	}

	// The secure migrations.
	var reps []*migration.Report
	if o.VMs > 0 {
		if reps, err = w.batchMigrations(ctx, res, m, pingers, pingers6); err != nil {
			return err
		}
	} else {
		for i, v := range w.vms {
			p := migration.Plan{VM: v.name, From: "secure", To: "cloud", Link: o.Link, FenceMode: o.Fence, MaxDowntime: maxDowntime,
				Addrs: w.planAddrs(v), Peers: w.planPeers()}
			if o.Subnet {
				p.Subnet = w.subnetPlan()
			}
			w.current.Store(v.name)
			select {
			case <-w.resumes: // a previous migration's, unused
			default:
			}
			t0 := time.Now()
			var rep *migration.Report
			if o.Remote {
				w.resumes <- w.watchRemoteResume(ctx, v.name)
				var code int
				var rpcs []string
				var mr *MetricsResult
				rep, rpcs, code, mr, err = w.migrateRemote(ctx, p, i == 0)
				res.Controller.ExitCodes = append(res.Controller.ExitCodes, code)
				if i == 0 {
					res.Controller.HookRPCs, res.Controller.Metrics = rpcs, mr
				}
			} else {
				rep, err = m.Run(ctx, p)
			}
			if rep == nil {
				return fmt.Errorf("migrate %s: %w", v.name, err)
			}
			reps = append(reps, rep)
			time.Sleep(300 * time.Millisecond) // replies in flight, and an outage still running shows
			mr := migrationResult(rep, err)
			mr.Blackout = blackout(pingers[v.name], t0, time.Now())
			if ps := pingers6[v.name]; len(ps) > 0 {
				b6 := blackout(ps, t0, time.Now())
				mr.Blackout6 = &b6
			}
			mr.resumed, mr.Timeline.ResumeFrom = w.resumeTime(rep)
			if !mr.resumed.IsZero() {
				mr.TrafficAfterResumeMS = trafficAfter(pingers[v.name], mr.resumed)
				if ps := pingers6[v.name]; len(ps) > 0 {
					mr.TrafficAfterResume6MS = trafficAfter(ps, mr.resumed)
				}
			}
			w.timeline(&mr, i, capB, pingers[v.name], peers)
			if o.Subnet && rep.SubnetMoved {
				mr.RedirectRemovalLost = lostDuring(allPingers(pingers), rep, migration.BlockRemoveTunnel)
				if len(pingers6) > 0 {
					n := lostDuring(allPingers(pingers6), rep, migration.BlockRemoveTunnel)
					mr.RedirectRemovalLost6 = &n
				}
			}
			res.Migrations = append(res.Migrations, mr)
			if i == 0 {
				res.BlackoutMS, res.TrafficAfterResumeMS = mr.Blackout.MS, mr.TrafficAfterResumeMS
				if mr.Blackout6 != nil {
					res.BlackoutV6MS = &mr.Blackout6.MS
				}
				res.Audit.Kept, res.Audit.Reset = nonNil(mr.kept), nonNil(mr.reset)
				if len(res.Baselines) > 0 {
					res.BaselineBlackoutMS = res.Baselines[0].Blackout.MS
					if res.BaselineBlackoutMS > 0 {
						res.BlackoutRatio = res.BlackoutMS / res.BaselineBlackoutMS
					}
				}
			}
			if err != nil {
				return fmt.Errorf("migrate %s: %w", v.name, err)
			}
		}

		// The dual-stack subnet: the core's kernel route to its IPv6 prefix,
		// read as an operator would.
		if o.Subnet && o.IPv6 && len(res.Migrations) > 0 {
			out, err := lab.Exec(l.Core, "ip", "-6", "route", "show", lab.VMSubnet6.String())
			last := &res.Migrations[len(res.Migrations)-1]
			last.CoreRoute6 = strings.TrimSpace(string(out))
			if err != nil {
				last.CoreRoute6 = err.Error()
			}
		}
	}

	// After: the guest answers at B, its counter went on, the plaintext
	// session came back, over the link only.
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
	// Every peer still reaches every guest (replies arrived in the last 300 ms).
	res.PeersReachAll = true
	for name, ps := range pingers {
		for _, p := range ps {
			if _, ok := p.FirstArrivalAfter(time.Now().Add(-300 * time.Millisecond)); !ok {
				res.PeersReachAll = false
				res.Unreachable = append(res.Unreachable, fmt.Sprintf("%s from pinger %#x", name, p.id))
			}
		}
	}
	if len(pingers6) > 0 {
		res.IPv6 = w.judgeIPv6(ctx, pingers6, peers, res.Migrations[0])
	}
	w.reestablished(ctx, sess, netip.AddrPortFrom(lab.VMAddr, guest.EchoPort), res.Migrations[0], &res.Audit)
	if sess6 != nil {
		res.IPv6.Audit = &AuditResult{}
		w.reestablished(ctx, sess6, netip.AddrPortFrom(w.vms[0].addr6, guest.EchoPort), res.Migrations[0], res.IPv6.Audit)
	}
	if o.Remote {
		c := res.Controller
		c.HookMS = res.Migrations[0].Migration.HookMS
		c.Devices, c.HoldsNothing = w.controllerDevices()
		var devs []string
		for _, m := range res.Migrations {
			for _, l := range []*tunnel.Link{&m.rep.Link, m.rep.Redirect} {
				if l != nil {
					devs = append(devs, l.SecureDevice, l.RemoteDevice)
				}
			}
		}
		c.KeysChecked, c.KeysFound = keys.check(w, devs)
		bj, err := migration.OpenBoltJournal(w.rm.journal)
		if err != nil {
			res.Journal = "the controller's journal: " + err.Error()
		} else {
			res.Journal = journalCheck(ctx, bj, reps)
			bj.Close()
		}
	} else {
		res.Journal = journalCheck(ctx, j, reps)
	}
	for _, m := range []map[string][]*pinger{pingers, pingers6} {
		for _, ps := range m {
			for _, p := range ps {
				p.Stop()
			}
		}
	}
	sess.Stop()
	if sess6 != nil {
		sess6.Stop()
	}
	res.WAN.LeakProbe = w.leakProbe(ctx, wan)
	return nil
}

// planAddrs are guest v's addresses for its plan.
// subnetPlan: the guests' subnet moves once both are at B.
func (w *world) subnetPlan() *migration.Subnet {
	s := &migration.Subnet{Prefix: lab.VMSubnet, Members: []string{"vm1", "vm2"}, Via: bSite,
		ConvergeTimeout: 60 * time.Second}
	if w.opts.IPv6 { // the dual-stack subnet: its IPv6 prefix moves too
		s.Prefix6, s.Via6 = lab.VMSubnet6, bSite6
	}
	return s
}

func (w *world) planAddrs(v vmSpec) []netip.Prefix {
	ps := []netip.Prefix{netip.PrefixFrom(v.addr, 32)}
	if v.addr6.IsValid() {
		ps = append(ps, netip.PrefixFrom(v.addr6, 128))
	}
	return ps
}

// planPeers are the plans' peers: the other subnet, and the peer in the
// guests' own subnet unless the whole subnet moves; their IPv6 prefixes
// too when the guests are dual-stack.
func (w *world) planPeers() []netip.Prefix {
	v6 := w.vms[0].addr6.IsValid()
	ps := []netip.Prefix{lab.Peer2Net}
	if v6 {
		ps = append(ps, lab.Peer2Net6)
	}
	if w.opts.Subnet {
		return ps
	}
	ps = append(ps, netip.PrefixFrom(lab.PeerAddr, 32))
	if v6 {
		ps = append(ps, netip.PrefixFrom(lab.PeerAddr6, 128))
	}
	return ps
}

// baseline migrates guest v from one handle to the other while bpeer
// pings it, measured exactly as the secure migrations are.
func (w *world) baseline(ctx context.Context, name string, v vmSpec, from, to hypervisor.Hypervisor, id uint16, capB *lab.Capture, tap string) (BaselineResult, error) {
	p, err := startPinger(w.bpeer, v.addr, pingEvery, id, marker)
	if err != nil {
		return BaselineResult{}, err
	}
	defer p.Stop()
	if err := waitFor(ctx, 5*time.Second, func() bool { return p.Between(time.Now().Add(-time.Second), time.Now()).Answered > 10 }); err != nil {
		return BaselineResult{}, fmt.Errorf("guest %s does not answer pings: %w", v.name, err)
	}
	t0 := time.Now()
	st, resumed, err := plainMigrate(ctx, from, to, v.name, maxDowntime, w.hv.watch)
	if err != nil {
		return BaselineResult{}, err
	}
	time.Sleep(300 * time.Millisecond)
	br := BaselineResult{Name: name, Migration: migrationStats(st), Blackout: blackout([]*pinger{p}, t0, time.Now())}
	select {
	case at := <-resumed:
		br.TrafficAfterResumeMS = trafficAfter([]*pinger{p}, at)
		if first, ok := capB.FirstAfter(tap, false, unix.ETH_P_IP, at); ok {
			br.FirstGuestPacketMS = msp(first.Sub(at))
		}
	default:
	}
	return br, nil
}

// resumeTime is when the target resumed: QEMU's RESUME event at B, or
// (libvirt) the start of block 345, which precedes the resume.
func (w *world) resumeTime(rep *migration.Report) (time.Time, string) {
	select {
	case ch := <-w.resumes:
		if ch != nil {
			select {
			case at := <-ch:
				return at, map[string]string{"qemu": "QEMU's RESUME event at B", "libvirt": "libvirt's resumed event at B"}[w.opts.Hypervisor]
			case <-time.After(time.Second):
			}
		}
	default:
	}
	if st, ok := rep.Step(migration.BlockRestart); ok {
		return time.Unix(0, st.Start), "start of block 345 (no resume event)"
	}
	return time.Time{}, "none"
}

// timeline fills mr.Timeline from the hypervisor's stats, the resume, B's
// capture and the pingers.
func (w *world) timeline(mr *MigrationResult, i int, capB *lab.Capture, ps []*pinger, peers []string) {
	st := mr.rep.Migration
	tl := &mr.Timeline
	if st.Switchover.IsZero() {
		return
	}
	tl.SourcePaused = st.Switchover
	rel := func(t time.Time, ok bool) *float64 {
		if !ok || t.IsZero() {
			return nil
		}
		return msp(t.Sub(st.Switchover))
	}
	tl.HookEndMS = rel(st.SwitchoverDone, true)
	if s, ok := mr.rep.Step(migration.BlockMigrate); ok {
		tl.MigrateReturnedMS = rel(time.Unix(0, s.Start+s.Duration), true)
	}
	if at, ok := w.loaded.Load().(time.Time); ok && at.After(st.Switchover) {
		tl.TargetLoadedMS = rel(at, true)
	}
	tl.TargetResumedMS = rel(mr.resumed, true)
	from := mr.resumed
	if from.IsZero() {
		from = st.SwitchoverDone
	}
	tl.FirstToGuestMS = rel(capB.FirstAfter(w.hv.targetTap(i), true, unix.ETH_P_IP, st.Switchover))
	tl.FirstGuestPacketMS = rel(capB.FirstAfter(w.hv.targetTap(i), false, unix.ETH_P_IP, from))
	if dev := mr.rep.Link.RemoteDevice; dev != "" {
		tl.FirstFromLinkMS = rel(capB.FirstAfter(dev, false, 0, st.Switchover))
		tl.FirstLinkPacketMS = rel(capB.FirstAfter(dev, true, 0, from))
	}
	tl.FirstReplyMS = map[string]*float64{}
	for k, p := range ps {
		name := strings.TrimPrefix(peers[k], w.l.Prefix+"-")
		tl.FirstReplyMS[name] = rel(p.FirstArrivalAfter(from))
	}
}

// leakProbe provokes the target's own ICMP errors toward a peer: pings to
// an address of the moved subnet that has no VM (subnet scenario) and to
// a guest that is down at B (its QEMU stopped; qemu only). Whatever B
// answers must not cross the wan in clear.
func (w *world) leakProbe(ctx context.Context, wan *lab.Capture) *LeakProbe {
	lp := &LeakProbe{}
	targets := []netip.Addr{}
	if w.opts.Subnet {
		targets = append(targets, unusedAddr)
		lp.Targets = append(lp.Targets, unusedAddr.String()+" (no VM)")
		if w.opts.IPv6 {
			targets = append(targets, unusedAddr6)
			lp.Targets = append(lp.Targets, unusedAddr6.String()+" (no VM)")
		}
	}
	if w.hv.stop != nil {
		v := w.vms[len(w.vms)-1]
		if err := w.hv.stop(ctx, v.name); err != nil {
			lp.Targets = append(lp.Targets, fmt.Sprintf("%s: could not stop: %v", v.name, err))
		} else {
			targets = append(targets, v.addr)
			lp.Targets = append(lp.Targets, v.addr.String()+" ("+v.name+" stopped at B)")
			if v.addr6.IsValid() { // B's ICMPv6 errors (address unreachable) too
				targets = append(targets, v.addr6)
				lp.Targets = append(lp.Targets, v.addr6.String()+" ("+v.name+" stopped at B)")
			}
		}
	}
	if len(targets) == 0 {
		return nil
	}
	before := wan.Snapshot()
	for _, a := range targets {
		_, _ = lab.Ping(w.l.Peer2, a, 20, time.Second)
	}
	// A leak is an absence to wait for, not an event: give the host's last
	// (delayed, rate-limited) ICMP errors time to reach the wan.
	time.Sleep(100 * time.Millisecond)
	d := wan.Snapshot().Sub(before)
	lp.PlaintextByAddress, lp.Samples = d.Watched, d.Samples
	return lp
}

// plainMigrate is the baseline: QEMU's migration between two instances,
// nothing else.
func plainMigrate(ctx context.Context, from, to hypervisor.Hypervisor, name string, downtime time.Duration,
	watch func(hypervisor.Hypervisor, string) <-chan time.Time) (hypervisor.Stats, <-chan time.Time, error) {
	vm, err := from.Lookup(ctx, name)
	if err != nil {
		return hypervisor.Stats{}, nil, err
	}
	ep, err := to.PrepareIncoming(ctx, vm)
	if err != nil {
		return hypervisor.Stats{}, nil, err
	}
	resumed := watch(to, name)
	st, err := from.Migrate(ctx, name, ep, hypervisor.MigrateOptions{MaxDowntime: downtime})
	if err != nil {
		to.Abort(ctx, name)
		return st, nil, err
	}
	return st, resumed, to.Resume(ctx, name)
}

// reestablished waits for the plaintext session's new connection and
// judges it by the path its packets really take at B: counters on B's
// forward hook split them by whether they enter or leave through one of
// the target's secure devices (the link's, a redirect's, the site VPN).
func (w *world) reestablished(ctx context.Context, s *session, vm netip.AddrPort, mr MigrationResult, a *AuditResult) {
	if err := waitFor(ctx, 20*time.Second, func() bool { return len(s.Connections()) >= 2 && s.echoedN() > 0 }); err != nil {
		a.Reestablished = fmt.Sprintf("no new connection: %v (last error %v)", err, s.err())
		return
	}
	cs := s.Connections()
	latest := cs[len(cs)-1]
	secure := w.secureDevicesAtB(mr)
	if len(secure) == 0 {
		a.Reestablished = "no secure device at B to judge the path by (a device-less XFRM link)"
		return
	}
	pw, err := lab.WatchPath(w.l.B, latest, vm, secure)
	if err != nil {
		a.Reestablished = err.Error()
		return
	}
	defer pw.Close()
	n0 := s.echoedN()
	if err := waitFor(ctx, 10*time.Second, func() bool { return s.echoedN() >= n0+5 }); err != nil {
		a.Reestablished = fmt.Sprintf("new connection %s: too few echoes while watched: %v", latest, err)
	}
	c, err := pw.Counts()
	if err != nil {
		a.Reestablished = err.Error()
		return
	}
	a.ViaLinkPackets, a.OtherPackets = c.ViaSecure, c.Other
	a.ReestablishedSecure = c.Secure() && s.echoedN() >= n0+5
	a.Reestablished = fmt.Sprintf("tcp %s->%s at B: %d packets through %v, %d by another way", latest, vm, c.ViaSecure, secure, c.Other)
}

// judgeIPv6 judges the guests' IPv6 side after the migrations: every
// peer's IPv6 pings answered lately, and, for a second, the path each
// peer's IPv6 echoes with the first guest take at B (counters on B's
// forward hook, split by whether they enter or leave through one of B's
// secure devices), as the IPv4 session's path is judged.
func (w *world) judgeIPv6(ctx context.Context, pingers6 map[string][]*pinger, peers []string, mr MigrationResult) *IPv6Result {
	r := &IPv6Result{PeersReachAll: true, Paths: []EchoPath{}}
	for name, ps := range pingers6 {
		for _, p := range ps {
			if _, ok := p.FirstArrivalAfter(time.Now().Add(-300 * time.Millisecond)); !ok {
				r.PeersReachAll = false
				r.Unreachable = append(r.Unreachable, fmt.Sprintf("%s from pinger %#x", name, p.id))
			}
		}
	}
	slices.Sort(r.Unreachable)
	secure := w.secureDevicesAtB(mr)
	addr6 := map[string]netip.Addr{w.l.Peer: lab.PeerAddr6, w.l.Peer2: lab.Peer2Addr6}
	vm := w.vms[0].addr6
	for k, ns := range peers {
		ep := EchoPath{Peer: strings.TrimPrefix(ns, w.l.Prefix+"-")}
		ps := pingers6[w.vms[0].name]
		if k >= len(ps) || len(secure) == 0 {
			ep.Detail = "no pinger or no secure device at B to judge by"
			r.Paths = append(r.Paths, ep)
			continue
		}
		pw, err := lab.WatchEcho(w.l.B, addr6[ns], vm, secure)
		if err != nil {
			ep.Detail = err.Error()
			r.Paths = append(r.Paths, ep)
			continue
		}
		from := time.Now()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
		c, err := pw.Counts()
		pw.Close()
		answered := ps[k].Between(from, time.Now().Add(-100*time.Millisecond)).Answered
		if err != nil {
			ep.Detail = err.Error()
		} else {
			ep.ViaLink, ep.Other = c.ViaSecure, c.Other
			// Secure only if the counted packets are this peer's pings and
			// their replies, which really arrived.
			ep.Secure = c.Secure() && answered > 0
			ep.Detail = fmt.Sprintf("%s <-> %s through %v; %d of its echoes answered meanwhile", addr6[ns], vm, secure, answered)
		}
		r.Paths = append(r.Paths, ep)
	}
	return r
}

// secureDevicesAtB are B's devices that carry a moved guest's traffic
// securely: the link's, a redirect's, the cloud environment's own.
func (w *world) secureDevicesAtB(mr MigrationResult) []string {
	var secure []string
	for _, l := range []*tunnel.Link{&mr.rep.Link, mr.rep.Redirect} {
		if l != nil && l.RemoteDevice != "" {
			secure = append(secure, l.RemoteDevice)
		}
	}
	return append(secure, w.cfg.Environments["cloud"].SecureDevices...)
}

// journalCheck reads the journal as a recovering controller would: no
// migration unfinished, each record completed, a begin and a done entry
// for every step the report lists and for every block FIG. 3 requires.
func journalCheck(ctx context.Context, j migration.Journal, reps []*migration.Report) string {
	un, err := j.Unfinished(ctx)
	if err != nil {
		return err.Error()
	}
	if len(un) > 0 {
		return fmt.Sprintf("%d unfinished records", len(un))
	}
	var bad []string
	batches := map[string]bool{}
	for _, rep := range reps {
		rec, entries, err := j.Load(ctx, rep.ID)
		if err != nil {
			return err.Error()
		}
		if rec.Plan.Batch != "" {
			batches[rec.Plan.Batch] = true
		}
		if rec.Outcome != migration.Completed {
			bad = append(bad, fmt.Sprintf("%s: outcome %q", rep.VM, rec.Outcome))
		}
		need := []migration.Block{310, 315, 320, 325, 330, 335, 345, 355, 360, 370, 375, 395}
		for _, s := range rep.Steps {
			need = append(need, s.Block)
		}
		if rep.SubnetMoved {
			need = append(need, 340)
			if rec.Plan.Batch == "" { // a batch member's 380-390 are the batch's
				need = append(need, 380, 390)
			}
		}
		bad = append(bad, lacking(rep.VM, entries, need)...)
	}
	// A batch's own record: its redirect tunnel (315), the decision once
	// all had moved (375), the core's watch and the tunnel's removal.
	for id := range batches {
		rec, entries, err := j.Load(ctx, id)
		if err != nil {
			return err.Error()
		}
		if rec.Outcome != migration.Completed {
			bad = append(bad, fmt.Sprintf("batch %s: outcome %q", id, rec.Outcome))
		}
		bad = append(bad, lacking("batch "+id, entries, []migration.Block{315, 375, 380, 390})...)
	}
	if len(bad) > 0 {
		return strings.Join(slices.Compact(bad), "; ")
	}
	return "ok"
}

// lacking names the blocks of need without a begin and a done entry.
func lacking(who string, entries []migration.Entry, need []migration.Block) []string {
	phases := map[migration.Block]map[migration.Phase]bool{}
	for _, e := range entries {
		if phases[e.Block] == nil {
			phases[e.Block] = map[migration.Phase]bool{}
		}
		phases[e.Block][e.Phase] = true
	}
	var bad []string
	for _, b := range need {
		if !phases[b][migration.PhaseBegin] || !phases[b][migration.PhaseDone] {
			bad = append(bad, fmt.Sprintf("%s: block %d lacks a begin or done entry", who, b))
		}
	}
	return bad
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
