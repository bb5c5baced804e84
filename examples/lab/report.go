package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
)

// Result is the lab's JSON report. Every figure in it comes from what
// really happened (reply arrivals at the peers, frames on the wan,
// packet counters on the path), and Verdicts say what failed.
type Result struct {
	Scenario string `json:"scenario"`
	// Remote: agents in their own processes, the controller in its own
	// namespace (-remote); Controller is what the lab saw of it.
	Remote     bool              `json:"remote"`
	Controller *ControllerResult `json:"controller,omitempty"`
	// Kill: the crash scenario's result (-kill).
	Kill *KillResult `json:"kill,omitempty"`
	// Batch: the batch scenario's (-subnet -vms N).
	Batch *BatchResult `json:"batch,omitempty"`
	// Pass is true when every verdict holds.
	Pass     bool      `json:"pass"`
	Verdicts []Verdict `json:"verdicts"`
	// The headline: the first secure migration against the baseline with
	// a TLS stream (same hypervisor backend, A to B, nothing of sealift).
	BlackoutMS           float64  `json:"blackout_ms"`
	BaselineBlackoutMS   float64  `json:"baseline_blackout_ms"`
	BlackoutRatio        float64  `json:"blackout_ratio"`
	TrafficAfterResumeMS *float64 `json:"traffic_after_resume_ms"`
	// BlackoutV6MS: the first migration's blackout seen by the peers'
	// IPv6 pings (-ipv6), measured as BlackoutMS is.
	BlackoutV6MS *float64 `json:"blackout_v6_ms,omitempty"`

	Baselines  []BaselineResult  `json:"baselines"`
	Migrations []MigrationResult `json:"migrations"`
	WAN        WANResult         `json:"wan"`
	Audit      AuditResult       `json:"audit"`

	VMReachableAfter bool     `json:"vm_reachable_after"`
	PeersReachAll    bool     `json:"peers_reach_all"`
	Unreachable      []string `json:"unreachable,omitempty"`
	CounterContinued bool     `json:"counter_continued"`
	Journal          string   `json:"journal"` // "ok" or what is wrong
	// IPv6 (-ipv6): what the peers saw of the guests over IPv6.
	IPv6 *IPv6Result `json:"ipv6,omitempty"`
	// Diagnostics, when something failed: what B's hypervisor, kernel and
	// the guests' consoles say.
	Diagnostics map[string]string `json:"diagnostics,omitempty"`
}

// IPv6Result is the dual-stack run's IPv6 side, measured as the IPv4
// one is.
type IPv6Result struct {
	// PeersReachAll: every peer's IPv6 pings to every guest were answered
	// in the last 300 ms after the migrations.
	PeersReachAll bool     `json:"peers_reach_all"`
	Unreachable   []string `json:"unreachable,omitempty"`
	// Paths: per peer, its IPv6 echoes with the moved guest, counted for
	// a second after the migrations at B's forward hook by the way they
	// took (through the link's device, or any secure device of B's, or
	// not).
	Paths []EchoPath `json:"paths"`
	// Audit: the IPv6 plaintext session's new connection after the reset,
	// judged by its path at B.
	Audit *AuditResult `json:"audit,omitempty"`
}

// EchoPath is one peer's IPv6 pings to the moved guest at B.
type EchoPath struct {
	Peer    string `json:"peer"`
	ViaLink uint64 `json:"via_link_packets"`
	Other   uint64 `json:"other_path_packets"`
	Secure  bool   `json:"secure"`
	Detail  string `json:"detail,omitempty"`
}

// Verdict is one check of the run.
type Verdict struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail,omitempty"`
}

// Blackout is what the peers saw of one migration (the worst pinger).
type Blackout struct {
	// MS: the longest time in which no reply arrived, minus one interval.
	MS float64 `json:"ms"`
	// From: when that longest silence began (the worst pinger's).
	From time.Time `json:"from,omitzero"`
	// LateReplies answered after more than 20 ms; MaxRTTMS the longest.
	LateReplies int     `json:"late_replies"`
	MaxRTTMS    float64 `json:"max_rtt_ms"`
	Lost        int     `json:"lost"`
	Sent        int     `json:"sent"`
}

// BaselineResult is one baseline migration of the run.
type BaselineResult struct {
	Name      string   `json:"name"`
	Migration Stats    `json:"migration"`
	Blackout  Blackout `json:"blackout"`
	// TrafficAfterResumeMS and FirstGuestPacketMS: measured as for the
	// secure migrations, from the target's RESUME event.
	TrafficAfterResumeMS *float64 `json:"traffic_after_resume_ms"`
	FirstGuestPacketMS   *float64 `json:"first_guest_packet_ms"`
}

// Step is one block of FIG. 3 with its start and duration.
type Step struct {
	Block int       `json:"block"`
	Name  string    `json:"name"`
	Start time.Time `json:"start"`
	MS    float64   `json:"ms"`
	Err   string    `json:"err,omitempty"`
}

// Stats are the hypervisor's numbers for one migration.
type Stats struct {
	TotalMS    float64 `json:"total_ms"`
	DowntimeMS float64 `json:"downtime_ms"`
	Bytes      uint64  `json:"bytes"`
	// HookMS is the time the switchover hook took (source paused).
	HookMS float64 `json:"switchover_hook_ms"`
}

// AuditResult is blocks 355-365 plus the re-establishment check.
type AuditResult struct {
	Kept  []string `json:"kept"`
	Reset []string `json:"reset"`
	// ReestablishedSecure: the plaintext session's new connection took
	// only the link's device at B (packet counters on B's forward path).
	ReestablishedSecure bool   `json:"reestablished_secure"`
	Reestablished       string `json:"reestablished"`
	ViaLinkPackets      uint64 `json:"via_link_packets"`
	OtherPackets        uint64 `json:"other_path_packets"`
}

// WANResult is what the capture of every interface of the wan namespace
// saw, each packet counted once where it entered the wan.
type WANResult struct {
	Frames int            `json:"frames"`
	ByKind map[string]int `json:"by_kind"`
	// After the control: frames with a guest's or a peer subnet's address
	// in any IP header, with the marker, of no expected kind.
	PlaintextByAddress int `json:"plaintext_by_address"`
	// PlaintextByAddressV6: those of them whose watched address is IPv6.
	PlaintextByAddressV6 int `json:"plaintext_by_address_v6"`
	PlaintextByMarker    int `json:"plaintext_by_marker"`
	Unknown              int `json:"unknown"`
	Dropped              int `json:"dropped"`
	// Control: one marked packet from a peer's address sent in clear
	// across the wan on purpose before any link exists; both counts must
	// be 1, or the counters prove nothing.
	ControlByAddress int `json:"control_by_address"`
	ControlByMarker  int `json:"control_by_marker"`
	// ControlV6*: a dual-stack run over an IPv4 wan sends a second
	// control, ICMPv6 from a peer's IPv6 address: the IPv6 count
	// (plaintext_by_address_v6) must see it once, and the marker count.
	ControlV6ByAddress *int `json:"control_v6_by_address,omitempty"`
	ControlV6ByMarker  *int `json:"control_v6_by_marker,omitempty"`
	// Samples describe the first suspicious frames (the control among
	// them).
	Samples []string `json:"samples,omitempty"`
	// LeakProbe: after the migrations, peers send to an address of the
	// moved subnet with no VM and to a guest that is down at B; the
	// frames with a watched address that this caused (must be 0).
	LeakProbe *LeakProbe `json:"leak_probe,omitempty"`
	Error     string     `json:"error,omitempty"`
}

// LeakProbe is the result of provoking the target's own ICMP errors.
type LeakProbe struct {
	Targets            []string `json:"targets"`
	PlaintextByAddress int      `json:"plaintext_by_address"`
	Samples            []string `json:"samples,omitempty"`
}

// Timeline is one migration's switchover, in ms after the source paused.
type Timeline struct {
	SourcePaused time.Time `json:"source_paused"`
	HookEndMS    *float64  `json:"hook_end_ms"`
	// TargetResumedMS: the resume at B (QEMU's RESUME event, libvirt's
	// resumed lifecycle event; ResumeFrom says which).
	TargetResumedMS *float64 `json:"target_resumed_ms"`
	// MigrateReturnedMS: the end of block 330 (the controller's Migrate
	// returned: the source said it had completed); TargetLoadedMS: the
	// incoming QEMU at B said it had the whole VM (its MIGRATION
	// "completed" event): the resume can follow.
	MigrateReturnedMS *float64 `json:"migrate_returned_ms"`
	TargetLoadedMS    *float64 `json:"target_loaded_ms"`
	ResumeFrom        string   `json:"resume_from"`
	// FirstFromLinkMS: the first packet out of the link's device at B
	// (decrypted, toward the guest) after the source paused;
	// FirstToGuestMS: the first IPv4 frame B put into the guest's tap after
	// the source paused (before the resume, the paused guest's tap queues
	// it).
	FirstFromLinkMS *float64 `json:"first_from_link_ms"`
	FirstToGuestMS  *float64 `json:"first_to_guest_ms"`
	// FirstGuestPacketMS: the first IPv4 frame out of the guest's tap at
	// B after the resume; FirstLinkPacketMS: the first packet B sent into
	// the link's device after it.
	FirstGuestPacketMS *float64 `json:"first_guest_packet_ms"`
	FirstLinkPacketMS  *float64 `json:"first_link_packet_ms"`
	// FirstReplyMS: per pinger, the first reply arriving after the resume.
	FirstReplyMS map[string]*float64 `json:"first_reply_ms"`
}

// MigrationResult is one secure migration of the run.
type MigrationResult struct {
	VM                  string  `json:"vm"`
	ID                  string  `json:"id"`
	Outcome             string  `json:"outcome"`
	Error               string  `json:"error,omitempty"`
	Link                string  `json:"link"`
	SubnetMoved         bool    `json:"subnet_moved"`
	RedirectTunnel      string  `json:"redirect_tunnel,omitempty"`
	ConvergedMS         float64 `json:"converged_ms,omitempty"`
	RedirectRemoved     bool    `json:"redirect_removed"`
	RedirectRemovalLost int     `json:"redirect_removal_lost"`
	// RedirectRemovalLost6: the same, of the IPv6 pings (-ipv6).
	RedirectRemovalLost6 *int `json:"redirect_removal_lost_v6,omitempty"`
	// CoreRoute6 (-subnet -ipv6): the routing core's kernel route to the
	// subnet's IPv6 prefix after the move, as `ip -6 route` shows it.
	CoreRoute6 string   `json:"core_route_v6,omitempty"`
	Blackout   Blackout `json:"blackout"`
	// Blackout6 and TrafficAfterResume6MS: the same, by the peers' IPv6
	// pings (-ipv6).
	Blackout6             *Blackout `json:"blackout_v6,omitempty"`
	TrafficAfterResume6MS *float64  `json:"traffic_after_resume_v6_ms,omitempty"`
	// ReleasedPackets: packets A's fence held during the switchover and
	// sent on through the link (migration.Report.Released).
	ReleasedPackets int `json:"released_packets"`
	// TrafficAfterResumeMS: from the target's resume to the first reply
	// received for a ping sent after it (worst pinger); null: none.
	TrafficAfterResumeMS *float64 `json:"traffic_after_resume_ms"`
	Timeline             Timeline `json:"timeline"`
	Steps                []Step   `json:"steps"`
	Migration            Stats    `json:"migration"`
	Warnings             []string `json:"warnings,omitempty"`
	kept, reset          []string
	resumed              time.Time
	rep                  *migration.Report
}

func scenario(o Options) string {
	s := fmt.Sprintf("%s+%s, fence %s", o.Hypervisor, o.Link, o.Fence)
	if o.Subnet {
		s += ", whole subnet"
	}
	if o.VMs > 0 {
		s += fmt.Sprintf(", %d guests in one batch (parallel %d)", o.VMs, o.parallel)
	}
	if o.Remote {
		s += ", remote (an agent per host)"
	}
	if o.IPv6 {
		s += ", dual-stack"
	}
	if o.WAN6 {
		s += ", IPv6-only wan"
	}
	if o.Kill != "" {
		if o.Kill == "controller" && o.Standby {
			s += fmt.Sprintf(", owning controller killed at %s, a standby takes over (etcd journal)", o.KillAt)
		} else if o.Kill == "controller" {
			s += fmt.Sprintf(", controller killed at %s", o.KillAt)
		} else {
			s += fmt.Sprintf(", %s agent killed at %s", o.Kill, o.KillAt)
		}
	}
	return s
}

func migrationStats(st hypervisor.Stats) Stats {
	s := Stats{TotalMS: ms(st.Total), DowntimeMS: ms(st.Downtime), Bytes: st.Bytes}
	if !st.Switchover.IsZero() && !st.SwitchoverDone.IsZero() {
		s.HookMS = ms(st.SwitchoverDone.Sub(st.Switchover))
	}
	return s
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func msp(d time.Duration) *float64 { v := ms(d); return &v }

func migrationResult(rep *migration.Report, err error) MigrationResult {
	mr := MigrationResult{VM: rep.VM, ID: rep.ID, Outcome: string(rep.Outcome), Link: rep.Link.Backend,
		SubnetMoved: rep.SubnetMoved, Migration: migrationStats(rep.Migration), Warnings: rep.Warnings, rep: rep,
		ReleasedPackets: rep.Released}
	if err != nil {
		mr.Error = err.Error()
	}
	for _, s := range rep.Steps {
		mr.Steps = append(mr.Steps, Step{Block: int(s.Block), Name: s.Name, Start: time.Unix(0, s.Start).UTC(),
			MS: ms(time.Duration(s.Duration)), Err: s.Err})
	}
	for _, v := range rep.Audit.Kept {
		mr.kept = append(mr.kept, fmt.Sprintf("%s (%s)", v.Conn, v.Reason))
	}
	for _, v := range rep.Audit.Reset {
		mr.reset = append(mr.reset, v.Conn.String())
	}
	if rep.Redirect != nil {
		mr.RedirectTunnel = rep.Redirect.ID
		_, removed := rep.Step(migration.BlockRemoveTunnel)
		mr.RedirectRemoved = removed && rep.Converged != nil
	}
	if rep.Converged != nil {
		mr.ConvergedMS = ms(rep.Converged.After)
	}
	return mr
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// blackout is the worst of the pingers over [from, to].
func blackout(ps []*pinger, from, to time.Time) Blackout {
	var b Blackout
	for _, p := range ps {
		s := p.Between(from, to)
		if ms(s.Blackout) >= b.MS {
			b.MS, b.From = ms(s.Blackout), s.BlackoutStart
		}
		b.LateReplies += s.Late
		b.MaxRTTMS = max(b.MaxRTTMS, ms(s.MaxRTT))
		b.Lost += s.Sent - s.Answered
		b.Sent += s.Sent
	}
	return b
}

// trafficAfter is the time from t (the target's resume) to the first
// reply received for a ping sent at or after t: the worst pinger; nil if
// one never got such a reply.
func trafficAfter(ps []*pinger, t time.Time) *float64 {
	var worst time.Duration
	for _, p := range ps {
		at, ok := p.FirstReplyAfter(t)
		if !ok {
			return nil
		}
		worst = max(worst, at.Sub(t))
	}
	return msp(worst)
}

// lostDuring counts pings sent while block b ran (and for 20 ms after:
// the packets in flight when it ended) that were never answered.
func lostDuring(ps []*pinger, rep *migration.Report, b migration.Block) int {
	st, ok := rep.Step(b)
	if !ok {
		return -1
	}
	from := time.Unix(0, st.Start)
	to := time.Unix(0, st.Start+st.Duration).Add(20 * time.Millisecond)
	n := 0
	for _, p := range ps {
		s := p.Between(from, to)
		n += s.Sent - s.Answered
	}
	return n
}

func allPingers(m map[string][]*pinger) []*pinger {
	var all []*pinger
	for _, ps := range m {
		all = append(all, ps...)
	}
	return all
}

// relay prints progress; in the subnet scenario it makes B's speaker
// announce the subnet once the Migrator starts watching the core (what
// the target environment's routing does when the subnet is up there);
// once the incoming instance exists it watches for its resume.
func relay(events <-chan migration.Event, o Options, w *world) {
	for e := range events {
		switch e := e.(type) {
		case migration.MigrationProgress:
			if o.Progress != nil && e.Total > 0 {
				o.Progress(fmt.Sprintf("  migrating: %3.0f%%  %6.1f MiB sent, %6.1f MiB left (pass %d)",
					100*float64(e.Transferred)/float64(e.Total), mib(e.Transferred), mib(e.Remaining), e.Pass))
			}
		case migration.StepFinished:
			if o.Progress != nil {
				errs := ""
				if e.Err != nil {
					errs = " error: " + e.Err.Error()
				}
				o.Progress(fmt.Sprintf("  block %d %-21s %8.2f ms%s", e.Block, e.Block, ms(e.Duration), errs))
			}
			if e.Block == migration.BlockTarget && e.Err == nil {
				name, _ := w.current.Load().(string)
				select {
				case w.resumes <- w.hv.watch(w.hv.b, name):
				default:
				}
			}
		case migration.Finished:
			if o.VMs > 0 {
				w.batchFinished(e)
			}
		case migration.StepStarted:
			if e.Block == migration.BlockInspect && w.bgpB != nil && o.VMs == 0 {
				go w.announceSubnet()
			}
		}
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

func fmtMS(v *float64) string {
	if v == nil {
		return "n/a"
	}
	return fmt.Sprintf("%.1f ms", *v)
}

// Text renders the report for people.
func (r *Result) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "sealift lab: %s\n", r.Scenario)
	for _, m := range r.Migrations {
		fmt.Fprintf(&b, "\n%s: %s over %s", m.VM, m.Outcome, m.Link)
		if m.SubnetMoved {
			fmt.Fprintf(&b, ", whole subnet moved (redirect %s, converged in %.1f ms, removed %v, %d pings lost while removing)",
				m.RedirectTunnel, m.ConvergedMS, m.RedirectRemoved, m.RedirectRemovalLost)
		}
		fmt.Fprintln(&b)
		if m.CoreRoute6 != "" || m.RedirectRemovalLost6 != nil {
			lost := "n/a"
			if m.RedirectRemovalLost6 != nil {
				lost = fmt.Sprint(*m.RedirectRemovalLost6)
			}
			fmt.Fprintf(&b, "  IPv6 prefix: %s IPv6 pings lost while removing the redirect; the core's routes after: %q\n", lost, m.CoreRoute6)
		}
		if m.Error != "" {
			fmt.Fprintf(&b, "  error: %s\n", m.Error)
		}
		for _, s := range m.Steps {
			fmt.Fprintf(&b, "  block %d %-21s %9.2f ms %s\n", s.Block, s.Name, s.MS, s.Err)
		}
		fmt.Fprintf(&b, "  migration %.0f ms total, %.1f ms downtime (switchover hook %.1f ms), %.1f MiB\n",
			m.Migration.TotalMS, m.Migration.DowntimeMS, m.Migration.HookMS, mib(m.Migration.Bytes))
		fmt.Fprintf(&b, "  peers: blackout %.1f ms (no reply arriving), %d late replies (max RTT %.1f ms), %d of %d lost; traffic %s after resume\n",
			m.Blackout.MS, m.Blackout.LateReplies, m.Blackout.MaxRTTMS, m.Blackout.Lost, m.Blackout.Sent, fmtMS(m.TrafficAfterResumeMS))
		if b6 := m.Blackout6; b6 != nil {
			fmt.Fprintf(&b, "  peers over IPv6: blackout %.1f ms (no reply arriving), %d late replies (max RTT %.1f ms), %d of %d lost; traffic %s after resume\n",
				b6.MS, b6.LateReplies, b6.MaxRTTMS, b6.Lost, b6.Sent, fmtMS(m.TrafficAfterResume6MS))
		}
		if m.ReleasedPackets > 0 {
			fmt.Fprintf(&b, "  %d packets to the VM held at A during the switchover, sent on through the link\n", m.ReleasedPackets)
		}
		tl := m.Timeline
		if !tl.SourcePaused.IsZero() {
			fmt.Fprintf(&b, "  timeline after the source paused: hook end %s, first packet out of the link at B %s, into the guest's tap %s, migrate returned %s, target loaded %s, target resumed %s (%s), guest's first packet at B %s, first packet into the link %s",
				fmtMS(tl.HookEndMS), fmtMS(tl.FirstFromLinkMS), fmtMS(tl.FirstToGuestMS), fmtMS(tl.MigrateReturnedMS), fmtMS(tl.TargetLoadedMS),
				fmtMS(tl.TargetResumedMS), tl.ResumeFrom, fmtMS(tl.FirstGuestPacketMS), fmtMS(tl.FirstLinkPacketMS))
			for k, v := range tl.FirstReplyMS {
				fmt.Fprintf(&b, ", first reply at %s %s", k, fmtMS(v))
			}
			fmt.Fprintln(&b)
		}
		for _, w := range m.Warnings {
			fmt.Fprintf(&b, "  warning: %s\n", w)
		}
	}
	fmt.Fprintln(&b)
	for _, bl := range r.Baselines {
		fmt.Fprintf(&b, "baseline %s: %.0f ms total, %.1f ms downtime; peers: blackout %.1f ms, %d late (max RTT %.1f ms), %d of %d lost; after resume: guest's first packet %s, traffic %s\n",
			bl.Name, bl.Migration.TotalMS, bl.Migration.DowntimeMS, bl.Blackout.MS, bl.Blackout.LateReplies, bl.Blackout.MaxRTTMS, bl.Blackout.Lost, bl.Blackout.Sent,
			fmtMS(bl.FirstGuestPacketMS), fmtMS(bl.TrafficAfterResumeMS))
	}
	if r.BaselineBlackoutMS > 0 {
		fmt.Fprintf(&b, "blackout ratio (secure / baseline with TLS): %.2f\n", r.BlackoutRatio)
	}
	if bt := r.Batch; bt != nil {
		for _, ph := range []*BatchPhase{bt.OneByOne, bt.Concurrent} {
			if ph == nil {
				continue
			}
			fmt.Fprintf(&b, "batch of %d, parallel %d: %s; members done %.0f ms after the start (each member %v ms, median %.0f), whole batch %.0f ms (core converged %s); blackouts %v, max %.1f ms, median %.1f ms; redirect removed %v, %d pings lost removing it",
				bt.VMs, ph.Parallel, ph.Outcome, ph.MembersMS, ph.MemberMS, ph.MedianMemberMS, ph.TotalMS, fmtMS(ph.ConvergedMS),
				ph.Blackouts, ph.MaxBlackoutMS, ph.MedianBlackoutMS, ph.RedirectRemoved, ph.RedirectRemovalLost)
			if ph.Reason != "" {
				fmt.Fprintf(&b, " (%s)", ph.Reason)
			}
			fmt.Fprintln(&b)
		}
		fmt.Fprintf(&b, "batch: concurrent members' time / one guest's alone %.2f (goal <= 2), worst concurrent blackout / median alone %.2f (goal <= 1.5)\n",
			bt.TimeRatio, bt.BlackoutRatio)
	}
	if r.Kill == nil {
		fmt.Fprintf(&b, "audit: kept %v, reset %v\ncame back secure (by path at B: %d packets via the link, %d by another way): %v (%s)\n",
			r.Audit.Kept, r.Audit.Reset, r.Audit.ViaLinkPackets, r.Audit.OtherPackets, r.Audit.ReestablishedSecure, r.Audit.Reestablished)
	}
	if wn := r.WAN; wn.ControlV6ByAddress != nil {
		fmt.Fprintf(&b, "IPv6 control seen by address (IPv6 count) %d, by marker %d\n", *wn.ControlV6ByAddress, *wn.ControlV6ByMarker)
	}
	if v := r.IPv6; v != nil {
		fmt.Fprintf(&b, "IPv6: every peer reaches every guest: %v %v\n", v.PeersReachAll, v.Unreachable)
		for _, p := range v.Paths {
			fmt.Fprintf(&b, "  IPv6 echoes %s <-> the moved guest at B: %d packets via the link, %d by another way (%s)\n", p.Peer, p.ViaLink, p.Other, p.Detail)
		}
		if a := v.Audit; a != nil {
			fmt.Fprintf(&b, "  IPv6 session came back secure (by path at B: %d packets via the link, %d by another way): %v (%s)\n",
				a.ViaLinkPackets, a.OtherPackets, a.ReestablishedSecure, a.Reestablished)
		}
	}
	wn := r.WAN
	fmt.Fprintf(&b, "wan: %d frames %v; control seen by address %d, by marker %d; after it: plaintext by address %d (IPv4 %d, IPv6 %d), by marker %d, unknown %d; dropped %d\n",
		wn.Frames, wn.ByKind, wn.ControlByAddress, wn.ControlByMarker, wn.PlaintextByAddress, wn.PlaintextByAddress-wn.PlaintextByAddressV6, wn.PlaintextByAddressV6,
		wn.PlaintextByMarker, wn.Unknown, wn.Dropped)
	if wn.Error != "" {
		fmt.Fprintf(&b, "wan capture: %s\n", wn.Error)
	}
	for _, s := range wn.Samples {
		fmt.Fprintf(&b, "  wan frame: %s\n", s)
	}
	if lp := wn.LeakProbe; lp != nil {
		fmt.Fprintf(&b, "leak probe (%s): %d frames with a watched address\n", strings.Join(lp.Targets, ", "), lp.PlaintextByAddress)
		for _, s := range lp.Samples {
			fmt.Fprintf(&b, "  wan frame: %s\n", s)
		}
	}
	if k := r.Kill; k != nil && k.Agent == "controller" {
		fmt.Fprintf(&b, "crash: the controller killed (SIGKILL) at %s (its last line %q), sealift migrate exit %d; then %s journal: recovery exit %d %v, taken over %.0f ms and done %.0f ms after the kill; placement (the lab's monitors, %d samples): at most %d running at once, finally %v; left over: %v; peers' blackout %.0f ms (from %.0f ms after the kill), reach the VM after: %v; journal unfinished: %d\n",
			k.Point, k.LastLine, k.MigrateExit, k.Journal, k.RecoverExit, k.RecoverOutcomes, k.TakeoverMS, k.RecoveredMS,
			k.Samples, k.MaxRunning, k.Final, k.Leftovers, k.BlackoutMS, k.BlackoutFromKillMS, k.PeersReach, k.JournalUnfinished)
		if k.Error != "" {
			fmt.Fprintf(&b, "crash scenario error: %s\n", k.Error)
		}
	} else if k != nil {
		fmt.Fprintf(&b, "crash: %s's agent killed (SIGKILL) %.0f ms after the %s began; sealift migrate exit %d (%s %s); agent restarted, sealift recover exit %d %v; placement (the lab's monitors, %d samples): at most %d running at once, finally %v; %d link ends and %d fences left; peers reach the VM: %v; journal unfinished: %d\n",
			k.Agent, k.KilledAfterMS, k.At, k.MigrateExit, k.MigrateOutcome, k.MigrateError, k.RecoverExit, k.RecoverOutcomes,
			k.Samples, k.MaxRunning, k.Final, k.LinkEnds, k.Fences, k.PeersReach, k.JournalUnfinished)
		if k.Error != "" {
			fmt.Fprintf(&b, "crash scenario error: %s\n", k.Error)
		}
	}
	if c := r.Controller; c != nil {
		cmd := "sealift migrate"
		if r.Batch != nil {
			cmd = "sealift batch"
		}
		fmt.Fprintf(&b, "controller (%s, own namespace): agents' round trips %v ms (median of 20), switchover hook %.1f ms, exit codes %v, its devices %v\n",
			cmd, c.AgentRTTMS, c.HookMS, c.ExitCodes, c.Devices)
		fmt.Fprintf(&b, "  WireGuard private keys looked for in the controller's log, journal, configuration and reports: %d, found: %v\n", c.KeysChecked, c.KeysFound)
		for _, r := range c.HookRPCs {
			fmt.Fprintf(&b, "  in the hook: %s\n", r)
		}
	}
	if r.Kill == nil {
		fmt.Fprintf(&b, "every peer reaches every guest: %v %v\n", r.PeersReachAll, r.Unreachable)
		fmt.Fprintf(&b, "VM reachable after: %v; counter continued: %v; journal: %s\n", r.VMReachableAfter, r.CounterContinued, r.Journal)
	}
	fmt.Fprintln(&b)
	failed := 0
	for _, v := range r.Verdicts {
		if !v.OK {
			failed++
			fmt.Fprintf(&b, "FAILED %s: %s\n", v.Name, v.Detail)
		}
	}
	if failed == 0 {
		fmt.Fprintf(&b, "all %d verdicts hold\n", len(r.Verdicts))
	}
	return b.String()
}
