package ipsec

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/tunnel"
)

// checkFree fails with tunnel.ErrExists if the link's reqid is in use at
// either end (the link exists, or another ID hashes to the same reqid) or
// if a policy with one of the link's selectors exists.
func (es ends) checkFree(l *link) error {
	for _, e := range es {
		if err := e.checkFree(l); err != nil {
			return err
		}
	}
	return nil
}

// checkFree is checkFree at this end.
func (e *end) checkFree(l *link) error {
	all, err := retryDump(func() ([]netlink.XfrmPolicy, error) { return e.h.XfrmPolicyList(netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("ipsec: host %q: list policies: %w", e.host, err)
	}
	want := map[string]bool{}
	for _, p := range append(e.outPolicies(l, netlinkBlock, 0), e.inPolicies(l, netlinkBlock)...) {
		want[selector(p)] = true
	}
	for _, p := range all {
		if policyReqid(p) == int(l.reqid) {
			return fmt.Errorf("%w: ID %q: reqid 0x%08x is in use at host %q", tunnel.ErrExists, l.spec.ID, l.reqid, e.host)
		}
		if want[selector(p)] && p.Mark == nil && p.Ifid == 0 {
			return fmt.Errorf("%w: host %q already has an XFRM policy %s", tunnel.ErrExists, e.host, selector(p))
		}
	}
	ss, err := e.states(l.reqid)
	if err != nil {
		return err
	}
	if len(ss) > 0 {
		return fmt.Errorf("%w: ID %q: reqid 0x%08x is in use by an SA at host %q", tunnel.ErrExists, l.spec.ID, l.reqid, e.host)
	}
	return nil
}

// activate opens the link: in/fwd policies at both ends, then out
// policies, then routes and proxy entries.
func (es ends) activate(ctx context.Context, l *link) error {
	for _, e := range es {
		if err := e.allowIn(l); err != nil {
			return err
		}
	}
	for _, e := range es {
		if err := e.allowOut(l); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(l.routes[0])+len(l.routes[1]) > 0 {
		return nil // already routed (Activate called twice)
	}
	return es.addRoutes(l)
}

// allowIn switches this end's in and fwd policies to allow: decrypted
// traffic of the link is admitted.
func (e *end) allowIn(l *link) error { return e.updatePolicies(e.inPolicies(l, netlinkAllow)) }

// allowOut switches this end's out policies to allow, encrypting with
// the current SA of its direction.
func (e *end) allowOut(l *link) error {
	return e.updatePolicies(e.outPolicies(l, netlinkAllow, l.spi[e.out]))
}

// remove deletes, at this end, the routes and proxy entries for the
// link's out-policy destinations and for dsts (what the link routes to
// when known, in case its policies are gone already), then the link's
// policies, then its SAs. Routes and proxy entries that another sealift
// link's out policy at this end still needs stay (links share them).
func (e *end) remove(reqid uint32, dsts []netip.Prefix) error {
	all, err := retryDump(func() ([]netlink.XfrmPolicy, error) { return e.h.XfrmPolicyList(netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("ipsec: host %q: list policies: %w", e.host, err)
	}
	var ps []netlink.XfrmPolicy
	var inUse []netip.Prefix
	dsts = append([]netip.Prefix(nil), dsts...)
	for _, p := range all {
		r := policyReqid(p)
		d, ok := prefixOf(p.Dst)
		switch {
		case r == int(reqid):
			ps = append(ps, p)
			if ok && p.Dir == netlink.XFRM_DIR_OUT && !containsPrefix(dsts, d) {
				dsts = append(dsts, d)
			}
		case isOurs(r) && ok && p.Dir == netlink.XFRM_DIR_OUT:
			inUse = append(inUse, d)
		}
	}
	var free []netip.Prefix
	for _, d := range dsts {
		if !containsPrefix(inUse, d) {
			free = append(free, d)
		}
	}
	var errs []error
	if len(free) > 0 {
		errs = append(errs, e.removeRoutes(free))
	}
	for i := range ps {
		if err := ignoreGone(e.h.XfrmPolicyDel(&ps[i])); err != nil {
			errs = append(errs, fmt.Errorf("ipsec: host %q: delete policy %s: %w", e.host, selector(ps[i]), err))
		}
	}
	ss, err := e.states(reqid)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for i := range ss {
		id := &netlink.XfrmState{Src: ss[i].Src, Dst: ss[i].Dst, Proto: ss[i].Proto, Spi: ss[i].Spi, Mark: ss[i].Mark}
		if err := ignoreGone(e.h.XfrmStateDel(id)); err != nil {
			errs = append(errs, fmt.Errorf("ipsec: host %q: delete SA spi 0x%08x: %w", e.host, uint32(ss[i].Spi), err))
		}
	}
	return errors.Join(errs...)
}

// routedAt returns the prefixes l routes toward the underlay at host:
// the other end's Protected (nil for a link known only by its reqid).
func (l *link) routedAt(host string) []netip.Prefix {
	var ps []netip.Prefix
	if host == l.spec.Secure.Host {
		ps = append(ps, l.spec.Remote.Protected...)
	}
	if host == l.spec.Remote.Host {
		ps = append(ps, l.spec.Secure.Protected...)
	}
	for i := range ps {
		ps[i] = ps[i].Masked()
	}
	return ps
}

// removeAll removes the link at both ends (rollback of Prepare, which
// installs no route).
func (es ends) removeAll(l *link) error {
	var errs []error
	for _, e := range es {
		errs = append(errs, e.remove(l.reqid, nil))
	}
	return errors.Join(errs...)
}

// closeLink removes everything with l's reqid at hosts (each once). A
// host that no longer exists has nothing left to remove.
func closeLink(hosts []string, l *link) error {
	var errs []error
	seen := map[string]bool{}
	for _, h := range hosts {
		if seen[h] {
			continue
		}
		seen[h] = true
		nh, err := openHandle(h)
		if err != nil {
			if hostGone(err) {
				continue // namespace gone
			}
			errs = append(errs, err)
			continue
		}
		errs = append(errs, (&end{host: h, h: nh}).remove(l.reqid, l.routedAt(h)))
		nh.Close()
	}
	return errors.Join(errs...)
}

// describe returns the tunnel.Link of l with the installed policies and
// SAs as text.
func (es ends) describe(l *link) (tunnel.Link, error) {
	lk := tunnel.Link{Spec: l.spec, Backend: Backend, Active: l.active}
	for _, e := range es {
		ps, err := e.policies(l.reqid)
		if err != nil {
			return lk, err
		}
		for _, p := range ps {
			lk.Policy = append(lk.Policy, policyLine(e.host, p))
		}
		ss, err := e.states(l.reqid)
		if err != nil {
			return lk, err
		}
		for _, s := range ss {
			lk.Policy = append(lk.Policy, stateLine(e.host, s))
		}
	}
	return lk, nil
}

// verify checks the policies at both ends (all of the link's, allowed,
// with the ESP template; out with the current SPI), then proves both SAs
// with a probe each way (see probe) and returns the SA counters.
func (es ends) verify(ctx context.Context, l *link, timeout time.Duration) (tunnel.Proof, error) {
	var pr tunnel.Proof
	for _, e := range es {
		if err := e.checkPolicies(l); err != nil {
			return pr, err
		}
	}
	before, after, sent, err := es.probe(ctx, l, timeout)
	head := fmt.Sprintf("esp tunnel %s <-> %s reqid 0x%08x %s", l.spec.Secure.Underlay, l.spec.Remote.Underlay, l.reqid, l.alg)
	if err != nil {
		return pr, err
	}
	for i, e := range es {
		pr.TxPackets += after[i][e.out].packets
		pr.TxBytes += after[i][e.out].bytes
		pr.RxPackets += after[i][e.in].packets
		pr.RxBytes += after[i][e.in].bytes
	}
	pr.Detail = fmt.Sprintf("%s: probes sent %d secure->remote, %d remote->secure; SA counters %s; sent %d packets, decrypted %d",
		head, sent[secureToRemote], sent[remoteToSecure], es.describeCounts(l, before, after), pr.TxPackets, pr.RxPackets)
	for d, name := range []string{"secure->remote", "remote->secure"} {
		if !carried(before, after, d) {
			return pr, fmt.Errorf("%w: the %s SA did not carry the probe: %s", tunnel.ErrNotProven, name, pr.Detail)
		}
	}
	return pr, nil
}

// checkPolicies requires all of the link's policies at this end,
// allowed, with the ESP tunnel template and, out, the current SPI
// (tunnel.ErrNotProven otherwise).
func (e *end) checkPolicies(l *link) error {
	ps, err := e.policies(l.reqid)
	if err != nil {
		return err
	}
	want := len(e.outPolicies(l, netlinkAllow, 0)) + len(e.inPolicies(l, netlinkAllow))
	allow := 0
	for _, p := range ps {
		t := p.Tmpls[0]
		if p.Action == netlinkAllow && t.Proto == netlink.XFRM_PROTO_ESP && t.Mode == netlink.XFRM_MODE_TUNNEL &&
			(p.Dir != netlink.XFRM_DIR_OUT || uint32(t.Spi) == l.spi[e.out]) {
			allow++
		}
	}
	if allow != want || len(ps) != want {
		return fmt.Errorf("%w: host %q has %d of %d ESP policies of link %q in place", tunnel.ErrNotProven, e.host, allow, want, l.spec.ID)
	}
	return nil
}
