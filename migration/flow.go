package migration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// forward runs FIG. 3 from block 310. Until the target resumes, any
// failure rolls back; after, failures leave the VM fenced at the target.
func (r *run) forward(ctx context.Context) error {
	if err := r.beforeResume(ctx); err != nil {
		return r.rollback(ctx, err)
	}
	return r.afterMigrate(ctx)
}

func (r *run) beforeResume(ctx context.Context) error {
	p := r.plan
	var vm hypervisor.VM
	// 310: select the VM; it must run at the source and nowhere else.
	err := r.step(ctx, BlockSelect, map[string]string{"from": p.From, "to": p.To}, func() error {
		var err error
		if vm, err = r.src.Hypervisor.Lookup(ctx, p.VM); err != nil {
			return err
		}
		if vm.State != hypervisor.Running {
			return fmt.Errorf("%w: VM %q is %s at %q, want running", hypervisor.ErrState, p.VM, vm.State, p.From)
		}
		if t, err := r.dst.Hypervisor.Lookup(ctx, p.VM); err == nil && t.State.Active() {
			return fmt.Errorf("%w: VM %q is already %s at %q", hypervisor.ErrExists, p.VM, t.State, p.To)
		} else if err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
			return fmt.Errorf("look up VM %q at %q: %w", p.VM, p.To, err)
		}
		r.srcSpec, err = specFor(p.VM, vm, p.SourcePort, "SourcePort", p.Addrs)
		return err
	})
	if err != nil {
		return err
	}

	// 315: target the different environment: the incoming instance,
	// fenced before it can ever run; the secure link pre-staged (keys,
	// both ends configured, not carrying traffic); the subnet decision and
	// the redirect tunnel pre-staged too, so the switchover hook is short.
	var to hypervisor.Endpoint
	err = r.step(ctx, BlockTarget, map[string]string{"link": r.linkID, "redirect": r.redirID}, func() error {
		var err error
		if to, err = r.dst.Hypervisor.PrepareIncoming(ctx, vm); err != nil {
			return err
		}
		// The target's instance and port exist now (QEMU), or only once
		// the migration has begun (libvirt creates the domain as part of
		// it): then its fence waits for the switchover hook, and the
		// source's description gives the MAC and (unless TargetPort is
		// set) the port name, which libvirt keeps.
		tvm, err := r.dst.Hypervisor.Lookup(ctx, p.VM)
		switch {
		case errors.Is(err, hypervisor.ErrNotFound):
			tvm, r.fenceInHook = vm, true
		case err != nil:
			return fmt.Errorf("look up incoming VM at %q: %w", p.To, err)
		}
		if r.dstSpec, err = specFor(p.VM, tvm, p.TargetPort, "TargetPort", p.Addrs); err != nil {
			return err
		}
		if r.subnetMoved, err = r.decideSubnet(ctx); err != nil {
			return err
		}
		if r.link, err = r.linker.Prepare(ctx, r.linkSpec()); err != nil {
			return err
		}
		r.rep.Link = r.link
		if r.plan.Batch != "" && r.redirect == nil {
			return fmt.Errorf("batch %q: its redirect tunnel %s is not there", r.plan.Batch, r.redirID)
		}
		if r.subnetMoved && r.plan.Batch == "" {
			red, err := r.linker.Prepare(ctx, r.redirectSpec())
			if err != nil {
				return fmt.Errorf("redirect tunnel: %w", err)
			}
			r.redirect = &red
			r.rep.Redirect = r.redirect
			if err := r.linker.Activate(ctx, r.redirID); err != nil {
				return fmt.Errorf("redirect tunnel: %w", err)
			}
		}
		// The incoming VM is fenced before it can ever run: it may talk
		// only through the link's devices, which encrypt everything and
		// carry nothing until the hook activates the link (XFRM links have
		// no device: a full block until block 370). Either way the host
		// sends nothing to the peers but through those devices.
		if r.fenceInHook {
			return nil
		}
		return r.fenceTarget(ctx)
	})
	if err != nil {
		return err
	}

	// 320 (before-copy mode): block the VM's communications now.
	if p.FenceMode == FenceBeforeCopy {
		if err := r.step(ctx, BlockFence, nil, func() error { return r.src.Fencer.Fence(ctx, r.sourceSpec()) }); err != nil {
			return err
		}
	}

	// 330: migrate. The hook runs while the source is paused (325).
	hook := func(hctx context.Context) error { return r.switchover(hctx) }
	err = r.step(ctx, BlockMigrate, map[string]string{"uri": to.URI}, func() error {
		st, err := r.src.Hypervisor.Migrate(ctx, p.VM, to, hypervisor.MigrateOptions{
			AtSwitchover: hook,
			MaxBandwidth: p.MaxBandwidth,
			MaxDowntime:  p.MaxDowntime,
			OnProgress: func(pr hypervisor.Progress) {
				r.m.bus.emit(MigrationProgress{ID: p.ID, Progress: pr})
			},
		})
		r.rep.Migration = st
		return err
	})
	if err != nil {
		return err
	}
	r.migrated = true
	return nil
}

// switchover runs in the hypervisor's hook: the source is paused, the
// target not yet resumed. Everything here adds to the VM's downtime, so
// it only flips what was pre-staged, and its steps are journaled in one
// write (one fsync) at the end; if that write fails, so does the hook.
func (r *run) switchover(ctx context.Context) (err error) {
	p := r.plan
	entries := make([]Entry, 0, 8)
	r.hookEntries = &entries
	defer func() {
		r.hookEntries = nil
		if jerr := r.j.Append(ctx, p.ID, entries...); jerr != nil && err == nil {
			err = fmt.Errorf("journal the switchover (%d entries): %w", len(entries), jerr)
		}
	}()
	if err := r.step(ctx, BlockPause, nil, func() error {
		if r.fenceInHook { // its instance exists now, and cannot run yet
			return r.fenceTarget(ctx)
		}
		return nil
	}); err != nil {
		return err
	}
	// The target is fenced: the link may carry traffic from here on. Its
	// activation depends neither on the source's fence nor on the
	// redirect, so it runs beside them and the hook lasts the longest of
	// them, not their sum (behind agents, each is a round trip to another
	// host). The VM is paused: nothing of it can pass meanwhile.
	activated := goWait(func() error { return r.linker.Activate(ctx, r.linkID) })
	err = r.switchoverSteps(ctx)
	if aerr := activated(); aerr != nil {
		if err != nil {
			return errors.Join(err, fmt.Errorf("activate the link: %w", aerr))
		}
		return aerr
	}
	return err
}

// switchoverSteps are the hook's blocks after 325: the source's fence
// (at-switchover mode), 335 and the redirect (340).
func (r *run) switchoverSteps(ctx context.Context) error {
	p := r.plan
	if p.FenceMode == FenceAtSwitchover {
		if err := r.step(ctx, BlockFence, nil, func() error { return r.src.Fencer.Fence(ctx, r.sourceSpec()) }); err != nil {
			return err
		}
	}
	moved := map[string]string{"moved": fmt.Sprint(r.subnetMoved)}
	if err := r.step(ctx, BlockSubnetMoved, moved, func() error { return nil }); err != nil {
		return err
	}
	r.rep.SubnetMoved = r.subnetMoved
	if r.subnetMoved {
		return r.step(ctx, BlockRedirect, nil, func() error { return r.addRedirects(ctx) })
	}
	return nil
}

// redirectPrefixes are what the routing core sends into the redirect
// tunnel: the subnet's prefixes for a lone migration; for a batch, each
// member's own addresses (a member's, or all of them for the batch's
// record), as it leaves: a prefix route would take the members still at
// the source away from them.
func (r *run) redirectPrefixes() []netip.Prefix {
	if r.plan.Batch == "" {
		return r.plan.Subnet.subnetPrefixes()
	}
	ps := make([]netip.Prefix, 0, len(r.plan.Addrs))
	for _, a := range r.plan.Addrs {
		ps = append(ps, a.Masked())
	}
	return ps
}

// addRedirects routes redirectPrefixes into the redirect tunnel.
func (r *run) addRedirects(ctx context.Context) error {
	for _, pfx := range r.redirectPrefixes() {
		if err := r.src.Core.Routing.AddRedirect(ctx, routing.Redirect{
			Prefix: pfx, Device: r.redirect.SecureDevice, Via: redirectVia(r),
		}); err != nil {
			return err
		}
	}
	return nil
}

// removeRedirects removes the routes of redirectPrefixes (those not
// there count as removed).
func (r *run) removeRedirects(ctx context.Context) error {
	var errs []error
	for _, pfx := range r.redirectPrefixes() {
		if err := r.src.Core.Routing.RemoveRedirect(ctx, pfx); err != nil && !errors.Is(err, routing.ErrNoRedirect) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func redirectVia(r *run) netip.Addr {
	if r.redirect.SecureDevice == "" { // policy-based link: route toward the target
		return r.dst.Underlay
	}
	return netip.Addr{}
}

// afterMigrate resumes the VM at the target and finishes. From the resume
// on, a failure never rolls back: the VM stays fenced at the target.
//
// The VM is complete only at the target: there is no way back, and
// stopping here would leave it paused, or fenced, there. So the caller's
// cancellation no longer stops the migration: its blocks run on cleanup
// contexts (see cleanupCtx), except the wait for the routing core, which
// the caller's context ends (the redirect tunnel then stays).
func (r *run) afterMigrate(callerCtx context.Context) error {
	p := r.plan
	ctx, cancel := r.cleanupCtx(callerCtx)
	defer cancel()
	// The VM has left the source, whose only route to its address is now
	// the (active, encrypting) link: lift the source's fence while the
	// target resumes; block 370 waits for it. (A same-subnet peer's
	// packets to the VM enter the source host through its bridge, which
	// the fence closes.)
	r.liftSource(ctx)
	// 345: restart at the target, then prove the secure link.
	err := r.step(ctx, BlockRestart, map[string]string{"link": r.linkID}, func() error {
		if !r.dstFenced {
			// E.g. the hook failed after the hypervisor had finished: the
			// VM runs nowhere until it is fenced here.
			if err := r.fenceTarget(ctx); err != nil {
				return err
			}
		}
		if err := r.dst.Hypervisor.Resume(ctx, p.VM); err != nil {
			return err
		}
		r.resumed = true
		if r.link.RemoteDevice != "" {
			// The VM resumed with its peers' old MACs cached: announce the
			// proxied addresses now. ARP carries no data, and the target's
			// fence lets the VM talk through the link's devices only.
			if err := r.linker.Activate(ctx, r.linkID); err != nil {
				return err
			}
		}
		var err error
		r.rep.Proof, err = r.linker.Verify(ctx, r.linkID)
		return err
	})
	if err != nil {
		if !r.resumed {
			return r.stayFenced(ctx, fmt.Errorf("VM is paused at %q, resume failed: %w", p.To, err))
		}
		return r.stayFenced(ctx, fmt.Errorf("secure link not proven: %w", err))
	}
	return r.finishForward(callerCtx)
}

// finishForward runs blocks 355-395 (also used by Recover).
//
// Before-copy mode keeps FIG. 3's order: audit (355), keep (360), reset
// (365), then enable (370). The VM's RSTs cannot reach it through the
// full fence then; its stale sockets end when they next send (the peer,
// reset already, answers with RST).
//
// At-switchover mode, the short-blackout mode, enables first: the link is
// proven (345), so the VM talks only through it, encrypted; the audit and
// the reset follow while traffic flows, and the RSTs reach both ends.
//
// ctx is the caller's: it ends the wait for the routing core only (see
// afterMigrate); the other blocks run on cleanup contexts.
func (r *run) finishForward(callerCtx context.Context) error {
	if err := r.enableAndAudit(callerCtx); err != nil {
		return err
	}

	// 375-390: if the subnet moved, wait for the routing core, then
	// remove the redirect tunnel (make-before-break: only after the real
	// route is there).
	dctx, release := r.detached(callerCtx)
	_ = r.step(dctx, BlockSubnetMovedAfterEnable, map[string]string{"moved": fmt.Sprint(r.subnetMoved)}, func() error { return nil })
	release()
	if r.subnetMoved && r.plan.Batch == "" { // a batch waits for all its members
		r.converge(callerCtx)
	}
	// 395: the VM must still run at the target. A hypervisor can report
	// a migration done while the guest dies right after (a corrupt stream
	// under QEMU's TCG has been seen to panic the guest kernel): say so.
	ctx, cancel := r.cleanupCtx(callerCtx)
	defer cancel()
	var gone error
	_ = r.step(ctx, BlockEnd, nil, func() error {
		vm, err := r.dst.Hypervisor.Lookup(ctx, r.plan.VM)
		switch {
		case err != nil:
			gone = fmt.Errorf("VM %q no longer found at %q after the migration: %w", r.plan.VM, r.plan.To, err)
		case vm.State != hypervisor.Running:
			gone = fmt.Errorf("VM %q is %s at %q after the migration, want running", r.plan.VM, vm.State, r.plan.To)
		}
		return gone
	})
	if gone != nil {
		return r.abandon(ctx, ErrVMLost, gone.Error())
	}
	return r.finish(ctx, Completed, "")
}

// enableAndAudit runs blocks 355-370 in the fence mode's order, on a
// cleanup context.
func (r *run) enableAndAudit(callerCtx context.Context) error {
	ctx, cancel := r.cleanupCtx(callerCtx)
	defer cancel()
	if r.plan.FenceMode == FenceAtSwitchover {
		if err := r.enableStep(ctx); err != nil {
			return err
		}
		if err := r.audit(ctx); err != nil {
			return err
		}
	} else {
		if err := r.audit(ctx); err != nil {
			return err
		}
		if err := r.enableStep(ctx); err != nil {
			return err
		}
	}
	return nil
}

// fenceTarget installs the target's fence (targetSpec).
func (r *run) fenceTarget(ctx context.Context) error {
	if err := r.dst.Fencer.Fence(ctx, r.targetSpec()); err != nil {
		return fmt.Errorf("fence incoming VM at %q: %w", r.plan.To, err)
	}
	r.dstFenced = true
	return nil
}

// enableStep is block 370: communications over the secure link only.
func (r *run) enableStep(ctx context.Context) error {
	if err := r.step(ctx, BlockEnable, nil, func() error { return r.enable(ctx) }); err != nil {
		return r.stayFenced(ctx, fmt.Errorf("enable over the secure link: %w", err))
	}
	return nil
}

// audit is blocks 355-365: list the VM's non-managed connections, keep
// the secure ones, reset the rest in one batch.
func (r *run) audit(ctx context.Context) error {
	sel := conn.Selector{Host: r.dst.Host, Addrs: r.plan.Addrs}
	var conns []conn.Conn
	if err := r.step(ctx, BlockAudit, nil, func() error {
		var err error
		conns, err = r.listConns(ctx, sel)
		return err
	}); err != nil {
		return r.stayFenced(ctx, fmt.Errorf("connection audit: %w", err))
	}
	cls := conn.Classify(conns, r.plan.Audit)
	r.rep.Audit.After = r.securePolicy()
	_ = r.step(ctx, BlockKeep, map[string]string{"kept": fmt.Sprint(len(cls.Keep))}, func() error { return nil })
	r.rep.Audit.Kept, r.rep.Audit.Reset = cls.Keep, cls.Reset
	if len(cls.Reset) == 0 {
		return nil
	}
	bad := make([]conn.Conn, len(cls.Reset))
	for i, v := range cls.Reset {
		bad[i] = v.Conn
	}
	if err := r.step(ctx, BlockReset, map[string]string{"reset": fmt.Sprint(len(bad))}, func() error {
		var err error
		r.rep.Audit.Result, err = r.dst.Auditor.Reset(ctx, sel, bad)
		return err
	}); err != nil {
		return r.stayFenced(ctx, fmt.Errorf("reset unsecured connections: %w", err))
	}
	return nil
}

// listConns lists the VM's connections at the target and, when the
// source has an auditor, there too: a flow that persisted through the
// move may not have crossed the target yet (its endpoints in TCP
// backoff), but the source saw it. The lists are merged by 5-tuple; the
// source's is best effort (a failure there is a warning).
func (r *run) listConns(ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
	var srcConns []conn.Conn
	var srcErr error
	var wg sync.WaitGroup
	if r.src.Auditor != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srcConns, srcErr = r.src.Auditor.List(ctx, conn.Selector{Host: r.src.Host, Addrs: sel.Addrs})
		}()
	}
	conns, err := r.dst.Auditor.List(ctx, sel)
	wg.Wait()
	if err != nil {
		return nil, err
	}
	if srcErr != nil {
		r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("list connections at the source: %v", srcErr))
	}
	type key struct {
		proto         conn.Proto
		local, remote netip.AddrPort
	}
	seen := make(map[key]bool, len(conns))
	for _, c := range conns {
		seen[key{c.Proto, c.Local, c.Remote}] = true
	}
	for _, c := range srcConns {
		if k := (key{c.Proto, c.Local, c.Remote}); !seen[k] {
			seen[k] = true
			c.ID = 0 // the source's entry ID means nothing at the target
			conns = append(conns, c)
		}
	}
	return conns, nil
}

// enable is the work of block 370: the target keeps only the secure
// link open (enabledSpec: a device link's fence, already so since block
// 315, is re-asserted; an XFRM link's full block becomes "IPsec-protected
// traffic only", and the link is activated again to announce, now that
// the fence lets ARP reach the VM), and the source's fence, lifted in the
// background since the VM left, is joined.
func (r *run) enable(ctx context.Context) error {
	// With a device link the target's fence has let the link's traffic
	// through since block 315, and the proxied addresses were announced
	// at the resume (345).
	devLink := r.link.RemoteDevice != ""
	r.liftSource(ctx) // (started already, unless Recover found the VM running at the target)
	dstErr := r.dst.Fencer.Fence(ctx, r.enabledSpec())
	if err := errors.Join(dstErr, r.joinSourceLift()); err != nil {
		return err
	}
	if !devLink {
		return r.linker.Activate(ctx, r.linkID) // announce: the full block dropped the announcements at 345
	}
	return nil
}

// liftSource starts lifting the source's fence in the background, once:
// the VM has left the source.
func (r *run) liftSource(ctx context.Context) {
	if r.srcLift != nil || r.lostOwnership() {
		return
	}
	lifted := make(chan error, 1)
	r.srcLift = lifted
	go func() {
		// What the fence held goes first, through the link (its device
		// is the fence's AllowVia), to wait in the VM's port at the
		// target. A failure costs only those packets: a warning.
		if h, ok := r.src.Fencer.(fence.Holder); ok && r.sourceSpec().Hold {
			n, err := h.Release(ctx, r.plan.VM)
			r.released, r.releaseErr = n, err
		}
		lifted <- ignoreNotFenced(r.src.Fencer.Lift(ctx, r.plan.VM))
	}()
}

// joinSourceLift waits for the source's lift, if one was started, and
// returns its error (the same error every time it is called).
func (r *run) joinSourceLift() error {
	if r.srcLift != nil && !r.srcJoined {
		r.srcLiftErr, r.srcJoined = <-r.srcLift, true
		r.rep.Released = r.released
		if r.releaseErr != nil {
			r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("held packets at %q: %v", r.plan.From, r.releaseErr))
			r.log.Warn("release held packets", "host", r.plan.From, "err", r.releaseErr)
		}
	}
	return r.srcLiftErr
}

// targetSpec is the target's fence from block 315 on: only the secure
// link's devices (its own, a redirect tunnel's, the environment's site
// VPN) may carry the VM's traffic, and nothing addressed to the peers
// leaves the target host another way (its own ICMP errors included);
// with a device-less (XFRM) link, a full block (with the same guard)
// until block 370 (enabledSpec).
func (r *run) targetSpec() fence.Spec {
	spec := r.blockSpec()
	if r.link.RemoteDevice == "" {
		return spec
	}
	spec.AllowVia = r.secureDevices()
	return spec
}

// secureDevices are the target's devices that may carry the VM's
// traffic: the link's (if it has one), the environment's site VPN, a
// redirect tunnel's.
func (r *run) secureDevices() []string {
	var devs []string
	if r.link.RemoteDevice != "" {
		devs = append(devs, r.link.RemoteDevice)
	}
	devs = append(devs, r.dst.SecureDevices...)
	if r.redirect != nil && r.redirect.RemoteDevice != "" {
		devs = append(devs, r.redirect.RemoteDevice)
	}
	return devs
}

// enabledSpec is the target's fence from block 370 on: a device link's
// targetSpec; for a device-less (XFRM) link, the VM may talk only by
// traffic the kernel's IPsec policies protect (fence.Spec.AllowIPsec:
// encrypted on its way out, or decrypted on its way in; its traffic
// with addresses outside Plan.Peers, which no policy covers, stays
// blocked) and through the environment's secure devices, and the peers
// guard lets a packet to a peer leave if IPsec will transform it (the
// host's own ICMP errors to a peer, which no policy covers, stay
// dropped).
func (r *run) enabledSpec() fence.Spec {
	if r.link.RemoteDevice != "" {
		return r.targetSpec()
	}
	spec := r.blockSpec()
	spec.AllowVia = r.secureDevices()
	spec.AllowIPsec = true
	return spec
}

// blockSpec is the target's full block. It also guards the peers
// (fence.Spec.Peers): the host sends nothing to them but through an
// allowed device of some fence (or, with an XFRM link after block 370,
// by IPsec), and with none, nothing. Before block 370 this cannot hurt
// an XFRM link: its ESP packets and Verify's probes (block 345) are
// addressed to the hosts' underlay addresses, not to the peers, and the
// VM's own traffic is blocked anyway.
func (r *run) blockSpec() fence.Spec {
	spec := r.dstSpec
	for _, p := range r.plan.Peers {
		spec.Peers = append(spec.Peers, p.Masked())
	}
	return spec
}

// sourceSpec is the source's fence (block 320): the VM's port and
// addresses are blocked there, except through the link's secure-end
// device, over which its address is reached once the link is active.
//
// In at-switchover mode, with a link device and a source Fencer that can
// hold (fence.Holder), the fence also holds what it drops on its way to
// the VM (fence.Spec.Hold): the hook's fence comes a few milliseconds
// before its link's routes, and packets that reach the source in between
// are sent on through the link afterwards (liftSource) instead of lost.
// (Before-copy mode would hold for the whole copy: packets seconds late
// help nobody. A device-less XFRM link's source fence blocks everything
// to the VM, the released packets too.)
func (r *run) sourceSpec() fence.Spec {
	spec := r.srcSpec
	if r.link.SecureDevice != "" {
		spec.AllowVia = []string{r.link.SecureDevice}
		_, holds := r.src.Fencer.(fence.Holder)
		spec.Hold = holds && r.plan.FenceMode == FenceAtSwitchover && len(spec.Addrs) > 0
	}
	return spec
}

// redirectDrain is how long the redirect tunnel stays up after its
// routes are gone, for what it still carries (block 390).
const redirectDrain = 250 * time.Millisecond

// converge is blocks 380-390. ctx is the caller's: it ends the wait for
// the routing core (as the plan's ConvergeTimeout does), after which the
// redirect tunnel stays; the rest runs on cleanup contexts.
func (r *run) converge(ctx context.Context) {
	s := r.plan.Subnet
	var conv routing.Converged
	dctx, release := r.detached(ctx)
	defer release()
	err := r.step(dctx, BlockInspect, nil, func() error {
		wctx, cancel := context.WithTimeout(ctx, s.ConvergeTimeout)
		defer cancel()
		// Every prefix of the subnet (a dual-stack one has two) must have
		// its real route; the report keeps the last to converge, and the
		// whole wait.
		start := time.Now()
		defer func() { conv.After = time.Since(start) }()
		for _, want := range s.expects() {
			if r.redirect != nil {
				want.NotDevice = r.redirect.SecureDevice
			}
			c, err := r.src.Core.Routing.Wait(wctx, want)
			if err != nil {
				return err
			}
			conv = c
		}
		return nil
	})
	if err != nil {
		r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("routing core did not converge, redirect tunnel kept: %v", err))
		return
	}
	r.rep.Converged = &conv
	cctx, cancel := r.cleanupCtx(ctx)
	defer cancel()
	err = r.step(cctx, BlockRemoveTunnel, nil, func() error {
		if err := r.removeRedirects(cctx); err != nil {
			return err
		}
		// Make before break, to the last packet: what the core routed into
		// the tunnel before its routes went is still in its ends' queues
		// (a userspace WireGuard on a busy host holds it for milliseconds)
		// or on the wire; closing the ends now would drop it.
		select {
		case <-time.After(redirectDrain):
		case <-cctx.Done():
		}
		return r.linker.Close(cctx, r.redirID)
	})
	if err != nil {
		r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("remove redirect tunnel: %v", err))
	}
}

// stayFenced ends a migration that failed after the target resumed (or
// after the VM became complete only at the target): the target's full
// fence is (re)asserted, the journal keeps the reason.
func (r *run) stayFenced(ctx context.Context, cause error) error {
	if r.lostOwnership() {
		return cause // the migration is another controller's: touch nothing
	}
	cctx, cancel := r.cleanupCtx(ctx)
	defer cancel()
	// The source's lift (if started) ends before the migration does: no
	// call outlives Run, and the report says if the fence stayed there.
	if joined := r.srcJoined; r.joinSourceLift() != nil && !joined {
		cause = errors.Join(cause, fmt.Errorf("lift the source's fence: %w", r.srcLiftErr))
	}
	if err := r.dst.Fencer.Fence(cctx, r.blockSpec()); err != nil {
		cause = errors.Join(cause, fmt.Errorf("re-fence at target: %w", err))
	}
	reason := cause.Error()
	if err := r.finish(cctx, StayedFenced, reason); err != nil {
		cause = errors.Join(cause, err)
	}
	return fmt.Errorf("%w: %w", ErrStayedFenced, cause)
}

// rollback undoes a migration that failed before the target resumed.
func (r *run) rollback(ctx context.Context, cause error) error {
	if r.lostOwnership() {
		return cause // the migration is another controller's: touch nothing
	}
	cctx, cancel := r.cleanupCtx(ctx)
	defer cancel()
	// Where is the VM really? A failed Migrate may still have completed.
	if !r.migrated {
		onlyTarget, err := r.atTargetOnly(cctx)
		if err != nil {
			// A hypervisor does not answer: resuming the target could run
			// the VM twice, aborting it could lose the only complete copy.
			// Touch nothing; the record stays unfinished for Recover.
			return r.abandonUnfinished(fmt.Errorf("cannot tell where the VM is: %w", err), cause)
		}
		r.migrated = onlyTarget
	}
	if r.migrated {
		r.log.Warn("migration failed after the VM reached the target: rolling forward", "err", cause)
		r.rep.Warnings = append(r.rep.Warnings, fmt.Sprintf("rolled forward: the VM reached %q although the migration failed: %v", r.plan.To, cause))
		return r.afterMigrate(ctx)
	}
	undone := false
	err := r.step(cctx, blockRollback, map[string]string{"cause": cause.Error()}, func() error {
		undone = true
		return joinErrs(r.undo(cctx))
	})
	if !undone {
		// The journal refused the step: undo all the same (every action
		// is idempotent); the record stays unfinished for Recover.
		err = errors.Join(err, joinErrs(r.undo(cctx)))
	}
	if err == nil {
		err = r.finish(cctx, RolledBack, cause.Error())
		if err == nil {
			return fmt.Errorf("%w: %w", ErrRolledBack, cause)
		}
	}
	return r.abandonUnfinished(err, cause)
}

// abandonUnfinished ends a rollback that could not complete: the journal
// keeps the migration unfinished, for Recover; the report and the events
// say a human must look, and what is left.
func (r *run) abandonUnfinished(err, cause error) error {
	r.rep.Outcome, r.rep.Reason = Abandoned, fmt.Sprintf("rollback incomplete: %v (after: %v)", err, cause)
	r.log.Error("rollback incomplete", "err", err, "cause", cause)
	return fmt.Errorf("%w: %w (after: %w)", ErrRollbackFailed, err, cause)
}

// undo brings everything back to before the migration. Each action is
// idempotent, so Recover can call it with no knowledge of what was done.
func (r *run) undo(ctx context.Context) []error {
	p := r.plan
	var errs []error
	errs = append(errs, r.src.Hypervisor.Abort(ctx, p.VM), r.dst.Hypervisor.Abort(ctx, p.VM))
	if p.Subnet != nil && r.src.Core != nil && r.src.Core.Routing != nil {
		errs = append(errs, r.removeRedirects(ctx))
		if p.Batch == "" { // a batch's tunnel is the batch's to close
			errs = append(errs, r.linker.Close(ctx, r.redirID))
		}
	}
	errs = append(errs, r.linker.Close(ctx, r.linkID))
	errs = append(errs, ignoreNotFenced(r.dst.Fencer.Lift(ctx, p.VM)), ignoreNotFenced(r.src.Fencer.Lift(ctx, p.VM)))
	// The VM must run at the source now.
	vm, err := r.src.Hypervisor.Lookup(ctx, p.VM)
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("VM %q not found at %q after rollback: %w", p.VM, p.From, err))
	case vm.State != hypervisor.Running:
		errs = append(errs, fmt.Errorf("VM %q is %s at %q after rollback, want running", p.VM, vm.State, p.From))
	}
	// ... and nowhere else: a target that kept its copy despite Abort
	// would hold a second VM (never resumed by sealift, but there).
	if t, err := r.dst.Hypervisor.Lookup(ctx, p.VM); err == nil && t.State.Active() {
		errs = append(errs, fmt.Errorf("VM %q is still %s at %q after rollback", p.VM, t.State, p.To))
	}
	return errs
}

// atTargetOnly reports whether the VM is gone from the source and
// complete (paused or running) at the target.
// It returns an error when a hypervisor cannot tell (other than "not
// found").
func (r *run) atTargetOnly(ctx context.Context) (bool, error) {
	vm, err := r.src.Hypervisor.Lookup(ctx, r.plan.VM)
	switch {
	case err == nil && vm.State.Active():
		return false, nil
	case err != nil && !errors.Is(err, hypervisor.ErrNotFound):
		return false, fmt.Errorf("look up VM %q at %q: %w", r.plan.VM, r.plan.From, err)
	}
	t, err := r.dst.Hypervisor.Lookup(ctx, r.plan.VM)
	if err != nil && !errors.Is(err, hypervisor.ErrNotFound) {
		return false, fmt.Errorf("look up VM %q at %q: %w", r.plan.VM, r.plan.To, err)
	}
	return err == nil && t.State.Active(), nil
}

// ignoreNotFenced treats lifting a fence that is not there as done
// (lifts are idempotent).
func ignoreNotFenced(err error) error {
	if errors.Is(err, fence.ErrNotFenced) {
		return nil
	}
	return err
}

func (r *run) decideSubnet(ctx context.Context) (bool, error) {
	s := r.plan.Subnet
	if s == nil {
		return false, nil
	}
	switch s.Moved {
	case SubnetYes:
		return true, nil
	case SubnetNo:
		return false, nil
	}
	for _, m := range s.Members {
		if m == r.plan.VM {
			continue
		}
		vm, err := r.dst.Hypervisor.Lookup(ctx, m)
		if errors.Is(err, hypervisor.ErrNotFound) || err == nil && !vm.State.Active() {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("subnet member %q at %q: %w", m, r.plan.To, err)
		}
	}
	return true, nil
}

func (r *run) linkSpec() tunnel.Spec {
	p := r.plan
	return tunnel.Spec{
		ID: r.linkID, Kind: p.Link, ProxyARP: true,
		Secure: tunnel.End{Host: r.src.Host, Underlay: r.src.Underlay, Protected: p.Peers},
		// The VM's MAC lets the target deliver to it from the hook on,
		// while it is still paused (see tunnel.End.MAC).
		Remote: tunnel.End{Host: r.dst.Host, Underlay: r.dst.Underlay, Protected: p.Addrs, MAC: r.dstSpec.MAC},
	}
}

// redirectSpec: the tunnel from the routing core to the target for the
// moved subnet; the core's route into it is the redirect itself.
func (r *run) redirectSpec() tunnel.Spec {
	p := r.plan
	c := r.src.Core
	return tunnel.Spec{
		ID: r.redirID, Kind: p.Link, NoSecureRoutes: true,
		Secure: tunnel.End{Host: c.Host, Underlay: c.Underlay, Protected: p.Peers},
		Remote: tunnel.End{Host: r.dst.Host, Underlay: r.dst.Underlay, Protected: p.Subnet.subnetPrefixes()},
	}
}

// securePolicy: what counts as secure at the target once the link is up:
// the plan's audit policy plus the migration's own links. It judges the
// connections that come back after the reset.
func (r *run) securePolicy() conn.Policy {
	pol := r.plan.Audit
	pol.IPsec = slices.Clone(pol.IPsec)
	pol.WireGuardDevices = slices.Clone(pol.WireGuardDevices)
	pol.WireGuardPeers = slices.Clone(pol.WireGuardPeers)
	links := []tunnel.Link{r.link}
	if r.redirect != nil {
		links = append(links, *r.redirect)
	}
	for _, l := range links {
		switch l.Kind {
		case tunnel.WireGuard:
			if l.RemoteDevice != "" {
				pol.WireGuardDevices = append(pol.WireGuardDevices, l.RemoteDevice)
			}
			pol.WireGuardPeers = append(pol.WireGuardPeers, l.Secure.Protected...)
		case tunnel.IPsec:
			for _, a := range l.Remote.Protected {
				for _, q := range l.Secure.Protected {
					pol.IPsec = append(pol.IPsec, conn.IPsecCover{Src: a, Dst: q})
				}
			}
		}
	}
	return pol
}

func specFor(name string, vm hypervisor.VM, port, field string, addrs []netip.Prefix) (fence.Spec, error) {
	s := fence.Spec{VM: name, Port: port}
	if len(vm.NICs) > 0 {
		if s.Port == "" {
			s.Port = vm.NICs[0].Port
		}
		s.MAC = vm.NICs[0].MAC
	}
	if s.Port == "" {
		return s, fmt.Errorf("%w: %s is empty and the hypervisor reports no port for VM %q", ErrInvalidPlan, field, name)
	}
	for _, a := range addrs {
		s.Addrs = append(s.Addrs, a.Addr())
	}
	return s, s.Validate()
}

// goWait runs f in a goroutine of its own and returns the function that
// waits for its error. f's goroutine behaves as the caller's would: a
// panic becomes an error (as hypervisor.RunHook makes of the hook's),
// and if f ended its goroutine (runtime.Goexit: t.FailNow, or a test's
// simulated crash), the waiting goroutine ends too.
func goWait(f func() error) (wait func() error) {
	type result struct {
		err    error
		exited bool
	}
	ch := make(chan result, 1)
	go func() {
		res := result{exited: true}
		defer func() {
			if p := recover(); p != nil {
				res = result{err: fmt.Errorf("panicked: %v", p)}
			}
			ch <- res
		}()
		res = result{err: f()}
	}()
	return func() error {
		r := <-ch
		if r.exited {
			runtime.Goexit()
		}
		return r.err
	}
}
