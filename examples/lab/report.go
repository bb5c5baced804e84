package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/migration"
)

// Result is the lab's JSON report.
type Result struct {
	Scenario             string            `json:"scenario"`
	Steps                []Step            `json:"steps"`
	BlackoutMS           float64           `json:"blackout_ms"`
	BaselineBlackoutMS   float64           `json:"baseline_blackout_ms"`
	TrafficAfterResumeMS float64           `json:"traffic_after_resume_ms"`
	PlaintextFramesOnWAN int               `json:"plaintext_frames_on_wan"`
	WAN                  wanStats          `json:"wan"`
	Migration            Stats             `json:"migration"`
	Baseline             Stats             `json:"baseline_migration"`
	Audit                AuditResult       `json:"audit"`
	VMReachableAfter     bool              `json:"vm_reachable_after"`
	PeersReachAll        bool              `json:"peers_reach_all"`
	Unreachable          []string          `json:"unreachable,omitempty"`
	CounterContinued     bool              `json:"counter_continued"`
	JournalComplete      bool              `json:"journal_complete"`
	Migrations           []MigrationResult `json:"migrations"`
	// Diagnostics, when a guest is unreachable afterwards: what B's
	// hypervisor, kernel and the guest's console say.
	Diagnostics map[string]string `json:"diagnostics,omitempty"`
}

// Step is one block of FIG. 3 with its duration.
type Step struct {
	Block int     `json:"block"`
	Name  string  `json:"name"`
	MS    float64 `json:"ms"`
	Err   string  `json:"err,omitempty"`
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
	Kept                []string `json:"kept"`
	Reset               []string `json:"reset"`
	ReestablishedSecure bool     `json:"reestablished_secure"`
	Reestablished       string   `json:"reestablished"`
}

type wanStats struct {
	Frames, ESP, UDP, TCP, ICMP, Dropped int
}

// MigrationResult is one secure migration of the run.
type MigrationResult struct {
	VM                   string   `json:"vm"`
	Outcome              string   `json:"outcome"`
	Error                string   `json:"error,omitempty"`
	Link                 string   `json:"link"`
	SubnetMoved          bool     `json:"subnet_moved"`
	RedirectTunnel       string   `json:"redirect_tunnel,omitempty"`
	ConvergedMS          float64  `json:"converged_ms,omitempty"`
	RedirectRemoved      bool     `json:"redirect_removed"`
	RedirectRemovalLost  int      `json:"redirect_removal_lost"`
	BlackoutMS           float64  `json:"blackout_ms"`
	TrafficAfterResumeMS float64  `json:"traffic_after_resume_ms"`
	Steps                []Step   `json:"steps"`
	Migration            Stats    `json:"migration"`
	Warnings             []string `json:"warnings,omitempty"`
	kept, reset          []string
	after                conn.Policy
}

func scenario(o Options) string {
	s := fmt.Sprintf("%s+%s, fence %s", o.Hypervisor, o.Link, o.Fence)
	if o.Subnet {
		s += ", whole subnet"
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

func migrationResult(rep *migration.Report, err error) MigrationResult {
	mr := MigrationResult{VM: rep.VM, Outcome: string(rep.Outcome), Link: rep.Link.Backend,
		SubnetMoved: rep.SubnetMoved, Migration: migrationStats(rep.Migration), Warnings: rep.Warnings,
		after: rep.Audit.After}
	if err != nil {
		mr.Error = err.Error()
	}
	for _, s := range rep.Steps {
		mr.Steps = append(mr.Steps, Step{Block: int(s.Block), Name: s.Name, MS: ms(time.Duration(s.Duration)), Err: s.Err})
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

// fromFirst fills the top-level fields from the first migration.
func (r *Result) fromFirst(mr MigrationResult) {
	r.Steps, r.Migration, r.BlackoutMS, r.TrafficAfterResumeMS = mr.Steps, mr.Migration, mr.BlackoutMS, mr.TrafficAfterResumeMS
	r.Audit.Kept, r.Audit.Reset = nonNil(mr.kept), nonNil(mr.reset)
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// maxBlackout is the longest peer-observed blackout over the pingers.
func maxBlackout(ps []*pinger, from, to time.Time) float64 {
	var worst time.Duration
	for _, p := range ps {
		s := p.Between(from, to)
		if s.Answered == 0 {
			return ms(to.Sub(from)) // never answered: the whole window
		}
		worst = max(worst, s.Blackout)
	}
	return ms(worst)
}

// firstReplyAfter is the time from t (the target's resume) to the first
// answered ping sent after it, over the pingers (the worst one).
func firstReplyAfter(ps []*pinger, t time.Time) float64 {
	var worst time.Duration
	for _, p := range ps {
		at, ok := p.firstAnsweredAfter(t)
		if !ok {
			return -1
		}
		worst = max(worst, at.Sub(t))
	}
	return ms(worst)
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
		n += p.lostBetween(from, to)
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

// relay prints progress and, in the subnet scenario, makes B's speaker
// announce the subnet once the Migrator starts watching the core (what
// the target environment's routing does when the subnet is up there).
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
		case migration.StepStarted:
			if e.Block == migration.BlockInspect && w.bgpB != nil {
				go func() {
					if err := w.bgpB.Announce(context.Background(), lab.VMSubnet, bSite); err != nil {
						w.log.Error("B: announce the subnet", "err", err)
					}
				}()
			}
		}
	}
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

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
		for _, s := range m.Steps {
			fmt.Fprintf(&b, "  block %d %-21s %9.2f ms %s\n", s.Block, s.Name, s.MS, s.Err)
		}
		fmt.Fprintf(&b, "  migration %.0f ms total, %.1f ms downtime (switchover hook %.1f ms), %.1f MiB; peer-observed blackout %.1f ms; traffic %.1f ms after resume\n",
			m.Migration.TotalMS, m.Migration.DowntimeMS, m.Migration.HookMS, mib(m.Migration.Bytes), m.BlackoutMS, m.TrafficAfterResumeMS)
		for _, w := range m.Warnings {
			fmt.Fprintf(&b, "  warning: %s\n", w)
		}
	}
	fmt.Fprintf(&b, "\nbaseline (plain QEMU migration): %.0f ms total, %.1f ms downtime, peer-observed blackout %.1f ms\n",
		r.Baseline.TotalMS, r.Baseline.DowntimeMS, r.BaselineBlackoutMS)
	if r.BaselineBlackoutMS > 0 {
		fmt.Fprintf(&b, "blackout ratio (secure / baseline): %.2f\n", r.BlackoutMS/r.BaselineBlackoutMS)
	}
	fmt.Fprintf(&b, "audit: kept %v, reset %v; came back secure: %v (%s)\n", r.Audit.Kept, r.Audit.Reset, r.Audit.ReestablishedSecure, r.Audit.Reestablished)
	fmt.Fprintf(&b, "wan: %d frames (%d ESP, %d UDP, %d TCP, %d ICMP), %d with the plaintext marker\n",
		r.WAN.Frames, r.WAN.ESP, r.WAN.UDP, r.WAN.TCP, r.WAN.ICMP, r.PlaintextFramesOnWAN)
	fmt.Fprintf(&b, "every peer reaches every guest: %v %v\n", r.PeersReachAll, r.Unreachable)
	fmt.Fprintf(&b, "VM reachable after: %v; counter continued: %v; journal complete: %v\n", r.VMReachableAfter, r.CounterContinued, r.JournalComplete)
	return b.String()
}

// GuestPanicked reports whether a guest's console shows a kernel panic
// (the diagnostics hold the consoles' last lines).
func (r *Result) GuestPanicked() bool {
	for k, v := range r.Diagnostics {
		if strings.HasPrefix(k, "serial_") && strings.Contains(v, "Kernel panic") {
			return true
		}
	}
	return false
}
