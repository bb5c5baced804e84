package main

// The controller's crash matrix (issue 13, item 4): `-remote -kill
// controller -kill-at POINT` kills `sealift migrate` with SIGKILL when it
// reports reaching POINT of FIG. 3, then lets another controller finish
// the migration: `sealift recover` on the same bbolt journal (the killed
// controller's restart). The lab's own QEMU monitors watch where the VM
// runs throughout; after the recovery it lists what every host still
// holds (the agents' lists, and nft, ip link and ip xfrm in the hosts'
// namespaces) and judges it against where the VM ended.

import (
	"context"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/migration"
)

// crashPoint is where in FIG. 3 the controller is killed: right after it
// prints a line matching prefix (and containing contains).
type crashPoint struct {
	name             string
	prefix, contains string
	subnet           bool // the point exists only when the subnet moves
}

var crashPoints = []crashPoint{
	{"after-310", "block 310 ", " done in ", false},
	{"after-315", "block 315 ", " done in ", false},
	{"hook-before-320", "block 320 ", " ...", false},
	{"hook-after-320", "block 320 ", " done in ", false},
	{"after-330", "block 330 ", " done in ", false},
	{"after-345", "block 345 ", " done in ", false},
	{"355-365", "block 360 ", " done in ", false},
	{"after-370", "block 370 ", " done in ", false},
	{"during-380", "block 380 ", " ...", true},
	{"after-390", "block 390 ", " done in ", true},
}

// pointNames are the points' names, in order.
func pointNames() []string {
	var out []string
	for _, p := range crashPoints {
		out = append(out, p.name)
	}
	return out
}

func findPoint(name string) (crashPoint, bool) {
	i := slices.IndexFunc(crashPoints, func(p crashPoint) bool { return p.name == name })
	if i < 0 {
		return crashPoint{}, false
	}
	return crashPoints[i], true
}

func (p crashPoint) matches(line string) bool {
	return strings.HasPrefix(line, p.prefix) && strings.Contains(line, p.contains)
}

// controllerKill runs the crash matrix's scenario at one point: the
// migration of the last guest (with -subnet, the one that moves the
// subnet; the others move first, normally).
func (w *world) controllerKill(ctx context.Context, t lab.TB, res *Result, k *KillResult, pingers map[string][]*pinger) error {
	o := w.opts
	pt, _ := findPoint(o.KillAt)
	k.Point, k.Journal = pt.name, "bolt"
	var sb *standbyProc
	if o.Standby {
		k.Journal = "etcd"
		if err := w.startEtcd(t); err != nil {
			return err
		}
		var err error
		if sb, err = w.startStandby(ctx); err != nil {
			return err
		}
		defer sb.stop()
	}
	plan := func(i int) migration.Plan {
		v := w.vms[i]
		p := migration.Plan{VM: v.name, From: "secure", To: "cloud", Link: o.Link, FenceMode: o.Fence, MaxDowntime: maxDowntime,
			Addrs: w.planAddrs(v), Peers: w.planPeers()}
		if o.Subnet {
			p.Subnet = w.subnetPlan()
		}
		return p
	}
	last := len(w.vms) - 1
	for i := range last {
		rep, _, code, _, err := w.migrateRemote(ctx, plan(i), false)
		if err != nil || rep.Outcome != migration.Completed {
			return fmt.Errorf("migrate %s before the crash: exit %d: %v", w.vms[i].name, code, err)
		}
	}
	v := w.vms[last]
	ps := pingers[v.name]
	pl := w.watchPlacement(v.name)
	defer pl.close()
	start := time.Now()
	c, err := w.startController(ctx, append(migrateArgs(plan(last)), "-name", "owner")...)
	if err != nil {
		return err
	}
	timeout := time.After(3 * time.Minute)
	for k.LastLine == "" {
		select {
		case line := <-c.lines:
			if pt.matches(line) {
				k.LastLine = line
			}
		case <-c.done:
			return fmt.Errorf("the controller ended before point %s: %v", pt.name, c.wait().err)
		case <-timeout:
			return fmt.Errorf("the controller did not reach point %s in 3 minutes", pt.name)
		}
	}
	t0 := time.Now()
	if err := c.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill the controller: %w", err)
	}
	run := c.wait()
	k.MigrateExit = run.code
	k.KilledAfterMS = ms(time.Since(t0))
	w.log.Info("controller killed", "point", pt.name, "line", k.LastLine)
	// What an operator sees right after the kill (the migration's
	// fences and link ends, if it got that far).
	if k.InspectAfterKill, err = w.inspectHosts(ctx); err != nil {
		return err
	}

	if sb != nil {
		// The standby claims it once the owner's lease has expired.
		outcome, line, err := w.standbyTakeover(ctx, sb, 2*time.Minute)
		k.RecoveredMS = ms(time.Since(t0))
		if err != nil {
			return err
		}
		select {
		case at := <-sb.claimed:
			k.TakeoverMS = ms(at.Sub(t0))
		default:
			return fmt.Errorf("the standby took the migration over without saying it started recovering it")
		}
		k.Outcome = outcome
		k.RecoverOutcomes = []string{line}
	} else {
		// The controller's restart: `sealift recover` on its journal.
		rc, err := w.startController(ctx, "recover")
		if err != nil {
			return err
		}
		rr := rc.wait()
		k.RecoveredMS = ms(time.Since(t0))
		if !rc.recoveryAt.IsZero() {
			k.TakeoverMS = ms(rc.recoveryAt.Sub(t0))
		}
		k.RecoverExit = rr.code
		k.RecoverOutcomes = []string{}
		for _, r := range rr.reps {
			k.RecoverOutcomes = append(k.RecoverOutcomes, string(r.Outcome)+" "+r.Reason)
			if k.Outcome == "" {
				k.Outcome = string(r.Outcome)
			}
		}
		if rr.code != 0 && rr.code != exitRolledBack && rr.code != exitStayedFenced {
			k.Error = fmt.Sprintf("sealift recover exited %d: %v; its last lines: %s", rr.code, rr.err, strings.Join(rc.tail, " | "))
		}
	}
	k.Final = pl.sample()
	k.PeersReach = peersReach(ctx, ps)
	k.Samples, k.MaxRunning = pl.counts()
	end := time.Now()
	k.BlackoutMS = blackout(ps, start, end).MS
	for _, p := range ps { // where the worst gap began, from the kill
		if s := p.Between(start, end); ms(s.Blackout) == k.BlackoutMS {
			k.BlackoutFromKillMS = ms(s.BlackoutStart.Sub(t0))
		}
	}
	for h, st := range k.Final {
		if st != "none" {
			k.VMActiveCount++
			k.VMRunningAt = append(k.VMRunningAt, h+" "+st)
		}
	}
	slices.Sort(k.VMRunningAt)
	k.Leftovers = w.leftovers(ctx, k.Final["host-b"] == "running", v.name)
	if k.InspectAfterRecovery, err = w.inspectHosts(ctx); err != nil {
		return err
	}
	if k.AgentsHold, err = w.agentsHold(ctx); err != nil {
		return err
	}
	un, err := w.journalUnfinished(ctx)
	if err != nil {
		return err
	}
	k.JournalUnfinished = un
	return nil
}

// leftovers lists what the hosts hold that the migration's end does not
// explain: after a rollback, anything of sealift's; after a completed
// move, anything but the VM's link (one end at A, one at B) and B's fence
// open to it (and the site VPN's devices).
func (w *world) leftovers(ctx context.Context, atB bool, vm string) []string {
	var out []string
	add := func(f string, a ...any) { out = append(out, fmt.Sprintf(f, a...)) }
	ends := 0
	for _, h := range []string{"host-a", "host-b"} {
		cl := w.rm.agents[h].client
		es, err := cl.LinkEnd().List(ctx)
		if err != nil {
			add("%s: link ends: %v", h, err)
		}
		for _, e := range es {
			if e.Spec.ID == siteLinkID {
				continue
			}
			ends++
			if !atB {
				add("%s: link end %s (%s)", h, e.Spec.ID, e.Role)
			}
		}
		f, err := cl.Fencer(ctx)
		if err != nil {
			add("%s: fencer: %v", h, err)
			continue
		}
		fs, err := f.List(ctx)
		if err != nil {
			add("%s: fences: %v", h, err)
		}
		for _, s := range fs {
			if atB && h == "host-b" && len(s.AllowVia) > 0 {
				continue // the moved VM's fence, open to its link
			}
			add("%s: fence of %s (via %v)", h, s.VM, s.AllowVia)
		}
	}
	if atB && ends > 2*len(w.vms) {
		add("%d link ends for %d moved guests", ends, len(w.vms))
	}
	if core := w.rm.agents["core"]; core != nil {
		if rs, err := core.client.RouteWatcher().Redirects(ctx); err != nil {
			add("core: redirects: %v", err)
		} else {
			for _, r := range rs {
				add("core: redirect %s via %s", r.Prefix, r.Device)
			}
		}
	}
	// What the kernels hold, as an operator would look.
	for _, ns := range []string{w.l.A, w.l.B, w.l.Core} {
		if b, err := exec.CommandContext(ctx, "ip", "-n", ns, "xfrm", "state").Output(); err == nil && len(strings.TrimSpace(string(b))) > 0 {
			add("%s: ip xfrm state: %d lines", ns, strings.Count(string(b), "\n"))
		}
		if !atB || ns == w.l.A { // (B keeps the moved VM's fence)
			// A fence is a "vm-..." chain in the sealift tables.
			if b, err := exec.CommandContext(ctx, "ip", "netns", "exec", ns, "nft", "list", "ruleset").Output(); err == nil {
				for _, line := range strings.Split(string(b), "\n") {
					if l := strings.TrimSpace(line); strings.HasPrefix(l, "chain vm-") {
						add("%s: nft %s", ns, strings.TrimSuffix(l, " {"))
					}
				}
			}
		}
		if !atB { // (after a move, A and B keep the VM's link)
			if b, err := exec.CommandContext(ctx, "ip", "-n", ns, "-o", "link", "show").Output(); err == nil {
				for _, line := range strings.Split(string(b), "\n") {
					if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], "slw") && !strings.HasPrefix(f[1], "slw"+siteLinkID) {
						add("%s: ip link %s", ns, strings.TrimSuffix(f[1], ":"))
					}
				}
			}
		}
	}
	return out
}
