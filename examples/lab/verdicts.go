package main

import (
	"fmt"
	"strings"

	"github.com/sealift/sealift/internal/lab"

	"github.com/sealift/sealift/migration"
)

// judge computes the run's verdicts from what it measured (never from a
// default: a run that failed early fails its checks) and sets Pass.
func (r *Result) judge(runErr error, o Options) {
	r.Verdicts = nil
	add := func(name string, ok bool, detail string, args ...any) {
		r.Verdicts = append(r.Verdicts, Verdict{Name: name, OK: ok, Detail: fmt.Sprintf(detail, args...)})
	}
	if runErr != nil {
		add("run", false, "%v", runErr)
	}
	w := r.WAN
	add("wan capture saw traffic", w.Frames > 0, "%d frames", w.Frames)
	add("wan capture dropped nothing", w.Dropped == 0, "%d dropped", w.Dropped)
	add("control counted by address", w.ControlByAddress == 1, "%d frames, want 1: the counter must see a deliberate leak", w.ControlByAddress)
	add("control counted by marker", w.ControlByMarker == 1, "%d frames, want 1", w.ControlByMarker)
	samples := strings.Join(w.Samples, "; ")
	add("no plaintext by address", w.PlaintextByAddress == 0, "%d frames with a guest or peer address in clear: %s", w.PlaintextByAddress, samples)
	add("no plaintext by marker", w.PlaintextByMarker == 0, "%d frames with the marker", w.PlaintextByMarker)
	add("no unknown frames", w.Unknown == 0, "%d frames neither WireGuard/ESP nor TCP between underlay addresses: %s", w.Unknown, samples)
	if p := w.LeakProbe; p != nil {
		add("target sends nothing to peers in clear", p.PlaintextByAddress == 0, "%d frames after %v: %s", p.PlaintextByAddress, p.Targets, strings.Join(p.Samples, "; "))
	}
	if o.Kill != "" {
		r.judgeKill(add)
		r.Pass = true
		for _, v := range r.Verdicts {
			r.Pass = r.Pass && v.OK
		}
		return
	}
	want := 1
	if o.Subnet {
		want = 2
	}
	if o.VMs > 0 {
		want = o.VMs
	}
	add("every migration ran", len(r.Migrations) == want, "%d of %d", len(r.Migrations), want)
	for _, m := range r.Migrations {
		add("outcome "+m.VM, m.Outcome == string(migration.Completed), "%s %s", m.Outcome, m.Error)
	}
	if o.VMs == 0 {
		add("baselines ran", len(r.Baselines) == 2, "%d of 2", len(r.Baselines))
	}
	add("VM reachable after, at B only", r.VMReachableAfter, "")
	add("every peer reaches every guest", r.PeersReachAll, "unreachable: %v", r.Unreachable)
	add("guest counter continued", r.CounterContinued, "")
	var sessionReset bool
	for _, c := range r.Audit.Reset {
		sessionReset = sessionReset || strings.HasPrefix(c, "tcp 10.1.0.10:7777->")
	}
	add("plaintext session reset", sessionReset, "reset %v", r.Audit.Reset)
	add("came back secure, by path", r.Audit.ReestablishedSecure, "%s", r.Audit.Reestablished)
	add("journal complete", r.Journal == "ok", "%s", r.Journal)
	if b := r.Batch; o.VMs > 0 {
		ph := (*BatchPhase)(nil)
		if b != nil {
			ph = b.Concurrent
		}
		add("batch completed", ph != nil && ph.Outcome == string(migration.Completed), "%v", func() any {
			if ph == nil {
				return "no batch report"
			}
			return ph.Outcome + " " + ph.Reason
		}())
		add("subnet moved and redirect removed", ph != nil && ph.RedirectRemoved, "the core's kernel has no redirect route, the tunnel is closed, the core converged")
		add("no ping lost removing the redirect", ph != nil && ph.RedirectRemovalLost == 0, "%d lost", func() int {
			if ph == nil {
				return -1
			}
			return ph.RedirectRemovalLost
		}())
	} else if o.Subnet && len(r.Migrations) == want {
		last := r.Migrations[want-1]
		add("subnet moved and redirect removed", last.SubnetMoved && last.RedirectRemoved, "moved %v removed %v", last.SubnetMoved, last.RedirectRemoved)
		add("no ping lost removing the redirect", last.RedirectRemovalLost == 0, "%d lost", last.RedirectRemovalLost)
	}
	if o.IPv6 {
		r.judgeIPv6(add, o)
	}
	if o.Remote && o.Kill == "" {
		r.judgeMetrics(add)
		c := r.Controller
		add("controller holds no link device or VM", c != nil && c.HoldsNothing && len(c.Devices) > 0, "%v", func() any {
			if c == nil {
				return "not checked"
			}
			return c.Devices
		}())
		if c != nil {
			add("no link key in what the controller wrote", c.KeysChecked > 0 && len(c.KeysFound) == 0,
				"%d private keys looked for in its log, journal, configuration and reports: %v", c.KeysChecked, c.KeysFound)
		}
	}
	r.Pass = true
	for _, v := range r.Verdicts {
		r.Pass = r.Pass && v.OK
	}
}

// judgeIPv6 adds the dual-stack run's IPv6 verdicts, judged as the IPv4
// ones are: by replies that arrived, by the path packets took at B, by
// frames on the wan.
func (r *Result) judgeIPv6(add func(string, bool, string, ...any), o Options) {
	if !o.WAN6 { // over an IPv6-only wan the control itself is ICMPv6
		a, m := r.WAN.ControlV6ByAddress, r.WAN.ControlV6ByMarker
		add("IPv6 control counted by address and marker", a != nil && *a == 1 && *m == 1, "%s: the IPv6 count must see a deliberate IPv6 leak", func() string {
			if a == nil {
				return "not sent"
			}
			return fmt.Sprintf("%d by address, %d by marker, want 1 and 1", *a, *m)
		}())
	}
	add("no plaintext by address, IPv6", r.WAN.PlaintextByAddressV6 == 0, "%d frames with a guest's or peer's IPv6 address in clear", r.WAN.PlaintextByAddressV6)
	for _, m := range r.Migrations {
		b := m.Blackout6
		add("IPv6 pings measured "+m.VM, b != nil && b.Sent > 0 && b.Sent > b.Lost, "%v", func() any {
			if b == nil {
				return "no IPv6 pinger"
			}
			return fmt.Sprintf("%d sent, %d lost", b.Sent, b.Lost)
		}())
	}
	if o.Subnet && o.VMs == 0 && len(r.Migrations) == 2 { // (a batch: its phase's verdicts, both families)
		last := r.Migrations[1]
		n := last.RedirectRemovalLost6
		add("no IPv6 ping lost removing the redirect", n != nil && *n == 0, "%v lost", func() any {
			if n == nil {
				return "not measured:"
			}
			return *n
		}())
		// The core's route, by its kernel table: via B's site address (BGP
		// over the site VPN), the redirect and the IGP route to A gone.
		// (The first line is the route in use, the lowest metric; the IGP
		// route to A stays below it.)
		rt := last.CoreRoute6
		first, _, _ := strings.Cut(rt, "\n")
		redirectGone := last.RedirectTunnel != "" && !strings.Contains(rt, "slw"+last.RedirectTunnel)
		add("the core routes the IPv6 subnet via B's site address", strings.HasPrefix(first, lab.VMSubnet6.String()+" via "+bSite6.String()+" ") && redirectGone,
			"ip -6 route show %s at the core: %q", lab.VMSubnet6, rt)
	}
	v := r.IPv6
	if v == nil {
		add("IPv6 judged", false, "the run did not get as far as judging IPv6")
		return
	}
	add("every peer reaches every guest by IPv6", v.PeersReachAll, "unreachable: %v", v.Unreachable)
	add("IPv6 paths judged", len(v.Paths) > 0, "%d peers", len(v.Paths))
	for _, p := range v.Paths {
		add("IPv6 from "+p.Peer+" over the link, by path", p.Secure, "%d packets via the link, %d by another way: %s", p.ViaLink, p.Other, p.Detail)
	}
	var reset bool
	for _, c := range r.Audit.Reset {
		reset = reset || strings.HasPrefix(c, "tcp [fd00:1::10]:7777->")
	}
	add("IPv6 plaintext session reset", reset, "reset %v", r.Audit.Reset)
	a := v.Audit
	add("IPv6 session came back secure, by path", a != nil && a.ReestablishedSecure, "%v", func() any {
		if a == nil {
			return "no IPv6 session"
		}
		return a.Reestablished
	}())
}
