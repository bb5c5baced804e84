package ipsec

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/tunnel"
)

// netlinkBlock and netlinkAllow are the policy actions.
const (
	netlinkBlock = netlink.XFRM_POLICY_BLOCK
	netlinkAllow = netlink.XFRM_POLICY_ALLOW
)

// outPolicies are this end's out policies: local Protected → peer
// Protected, encrypted toward the peer's underlay with SA spi.
func (e *end) outPolicies(l *link, action netlink.PolicyAction, spi uint32) []netlink.XfrmPolicy {
	var ps []netlink.XfrmPolicy
	for _, p := range pairs(e.local.Protected, e.peer.Protected) {
		ps = append(ps, netlink.XfrmPolicy{
			Src: ipNet(p.src), Dst: ipNet(p.dst), Dir: netlink.XFRM_DIR_OUT, Action: action,
			Tmpls: []netlink.XfrmPolicyTmpl{{
				Src: ipOf(e.local.Underlay), Dst: ipOf(e.peer.Underlay),
				Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL,
				Reqid: int(l.reqid), Spi: int(spi),
			}},
		})
	}
	return ps
}

// inPolicies are this end's in and fwd policies: peer Protected → local
// Protected, admitted only when decrypted by an SA with the link's reqid
// (any SPI, so old and new SAs both count during a rekey).
func (e *end) inPolicies(l *link, action netlink.PolicyAction) []netlink.XfrmPolicy {
	var ps []netlink.XfrmPolicy
	for _, p := range pairs(e.peer.Protected, e.local.Protected) {
		for _, dir := range []netlink.Dir{netlink.XFRM_DIR_IN, netlink.XFRM_DIR_FWD} {
			ps = append(ps, netlink.XfrmPolicy{
				Src: ipNet(p.src), Dst: ipNet(p.dst), Dir: dir, Action: action,
				Tmpls: []netlink.XfrmPolicyTmpl{{
					Src: ipOf(e.peer.Underlay), Dst: ipOf(e.local.Underlay),
					Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL,
					Reqid: int(l.reqid),
				}},
			})
		}
	}
	return ps
}

// addPolicies installs all policies at both ends with action (block
// during Prepare). The out templates name the SPIs in l.spi.
func (es ends) addPolicies(l *link, action netlink.PolicyAction) error {
	for _, e := range es {
		if err := e.addPolicies(l, action, l.spi[e.out]); err != nil {
			return err
		}
	}
	return nil
}

// addPolicies installs this end's policies with action, the out
// templates naming spi.
func (e *end) addPolicies(l *link, action netlink.PolicyAction, spi uint32) error {
	ps := append(e.outPolicies(l, action, spi), e.inPolicies(l, action)...)
	for i := range ps {
		if err := e.h.XfrmPolicyAdd(&ps[i]); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("%w: host %q already has an XFRM policy for %s", tunnel.ErrExists, e.host, selector(ps[i]))
			}
			return fmt.Errorf("ipsec: host %q: add policy %s: %w", e.host, selector(ps[i]), err)
		}
	}
	return nil
}

// updatePolicies replaces policies in place (same selector and direction).
func (e *end) updatePolicies(ps []netlink.XfrmPolicy) error {
	for i := range ps {
		if err := e.h.XfrmPolicyUpdate(&ps[i]); err != nil {
			return fmt.Errorf("ipsec: host %q: update policy %s: %w", e.host, selector(ps[i]), err)
		}
	}
	return nil
}

// policies dumps this end's policies whose template carries reqid.
func (e *end) policies(reqid uint32) ([]netlink.XfrmPolicy, error) {
	all, err := retryDump(func() ([]netlink.XfrmPolicy, error) { return e.h.XfrmPolicyList(netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("ipsec: host %q: list policies: %w", e.host, err)
	}
	var ps []netlink.XfrmPolicy
	for _, p := range all {
		if policyReqid(p) == int(reqid) {
			ps = append(ps, p)
		}
	}
	return ps, nil
}

// policyReqid is the reqid of p's first template (0 without template).
func policyReqid(p netlink.XfrmPolicy) int {
	if len(p.Tmpls) == 0 {
		return 0
	}
	return p.Tmpls[0].Reqid
}

// selector formats a policy's selector and direction.
func selector(p netlink.XfrmPolicy) string {
	s, _ := prefixOf(p.Src)
	d, _ := prefixOf(p.Dst)
	return fmt.Sprintf("%s src %s dst %s", p.Dir, s, d)
}

// policyLine is one readable line of an installed policy (no keys exist
// in policies; SPIs and reqids are not secret).
func policyLine(host string, p netlink.XfrmPolicy) string {
	s := fmt.Sprintf("host %q: policy %s action %s", host, selector(p), p.Action)
	for _, t := range p.Tmpls {
		s += fmt.Sprintf(" tmpl %s %s %s -> %s reqid 0x%08x", t.Proto, t.Mode, addrOf(t.Src), addrOf(t.Dst), uint32(t.Reqid))
		if t.Spi != 0 {
			s += fmt.Sprintf(" spi 0x%08x", uint32(t.Spi))
		}
	}
	return s
}
