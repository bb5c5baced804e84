package ipsec

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// Verify's probe. A link is proven when each of its two SAs has carried
// one probe: encrypted by the sender (its SA counter rose) and decrypted
// by the receiver (the receiver's copy of the SA counted it; a wrong key
// counts an integrity failure instead, a missing SA nothing). So a quiet
// link, one whose VM sends nothing right after the migration, is proven
// as well as a busy one.
//
// The probe of direction Secure → Remote is an IP packet from a host
// address in a Secure.Protected prefix to one in a Remote.Protected prefix
// of the same family (Remote → Secure: the reverse; the first such
// addresses, IPv4 first, that are not the end hosts' own), protocol
// probeProto, sent at the sending end from a raw socket:
//
//   - with IP_TRANSPARENT, so the kernel sends it from the protected
//     address without owning it (no temporary address is added);
//   - carrying its own XFRM socket policy: out, allow, ESP tunnel template
//     with the link's underlays, reqid and current SPI. A socket policy
//     takes precedence over the global ones, so the probe is encrypted with
//     the link's SA or, if that SA is missing, dropped by the kernel: it
//     can never leave in clear, whatever the global policies say. (They
//     are checked separately: Verify requires all of the link's policies,
//     allowed, with the ESP template and, out, the current SPI.)
//
// At the receiving end a temporary rule (priority probeRulePriority,
// protocol RouteProtocol) blackholes the decrypted probe before it is
// routed: it never reaches the VM or a peer, and no ICMP error is sent
// for it. Verify removes the rules again, also when the proof fails; a
// rule left by a crash is removed by Close.
const (
	// probeProto is the probe's IP protocol: 253, reserved for
	// experimentation (RFC 3692), so the blackhole rule matches no real
	// traffic between the protected addresses.
	probeProto = 253
	// probeRulePriority is the priority of the receiving end's blackhole
	// rule: after the local table (0), before the main table and any
	// source rule a link backend installs.
	probeRulePriority = 10
	// defaultProbeTimeout bounds Verify's wait for the probes.
	defaultProbeTimeout = 3 * time.Second
)

// probeDir is the probe of one direction of a link.
type probeDir struct {
	d        int  // secureToRemote or remoteToSecure
	from, to *end // sending and receiving end
	src, dst netip.Addr
}

// saCount is one SA's counters at one end.
type saCount struct {
	packets, bytes uint64
	failed         uint32 // integrity failures (wrong key)
}

// saCounts are the counters of a link's current SAs: [end][direction].
type saCounts [2][2]saCount

// probeAddr is the probe's address in one of ps (of the family want4) at
// host e: a host address (p's own if p names one other than the network
// address, else the following ones) that is not one of e's own addresses,
// since a probe to a local address would be delivered there, not dropped.
func (e *end) probeAddr(ps []netip.Prefix, want4 bool) (netip.Addr, error) {
	as, err := e.h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("ipsec: host %q: list addresses: %w", e.host, err)
	}
	local := map[netip.Addr]bool{}
	for _, a := range as {
		local[addrOf(a.IP)] = true
	}
	for _, p := range ps {
		a := p.Addr().Unmap()
		if a.Is4() != want4 {
			continue
		}
		if p.Bits() < a.BitLen()-1 && a == p.Masked().Addr() {
			a = a.Next() // not the network address
		}
		for i := 0; i < 16 && p.Contains(a); i, a = i+1, a.Next() {
			if !local[a] {
				return a, nil
			}
		}
	}
	return netip.Addr{}, nil
}

// probeDirs returns the link's two probes: between addresses of a
// Secure.Protected and a Remote.Protected prefix of the same family (IPv4
// preferred), neither of them an address of its own end's host.
func (es ends) probeDirs(l *link) ([2]probeDir, error) {
	var ps [2]probeDir
	for _, want4 := range []bool{true, false} {
		src, err := es[0].probeAddr(l.spec.Secure.Protected, want4)
		if err != nil {
			return ps, err
		}
		dst, err := es[1].probeAddr(l.spec.Remote.Protected, want4)
		if err != nil {
			return ps, err
		}
		if src.IsValid() && dst.IsValid() {
			ps[secureToRemote] = probeDir{d: secureToRemote, from: es[0], to: es[1], src: src, dst: dst}
			ps[remoteToSecure] = probeDir{d: remoteToSecure, from: es[1], to: es[0], src: dst, dst: src}
			return ps, nil
		}
	}
	return ps, fmt.Errorf("%w: link %q: no pair of Secure and Remote Protected addresses of one family that are not the hosts' own to probe between", tunnel.ErrNotProven, l.spec.ID)
}

// counts reads the packet counters of the link's current SAs at both ends.
func (es ends) counts(l *link) (saCounts, error) {
	var c saCounts
	for i, e := range es {
		for d := range l.spi {
			st, err := e.h.XfrmStateGet(stateID(l, d, l.spi[d]))
			if err != nil {
				return c, fmt.Errorf("%w: host %q: SA spi 0x%08x: %v", tunnel.ErrNotProven, e.host, l.spi[d], err)
			}
			c[i][d] = saCount{packets: st.Statistics.Packets, bytes: st.Statistics.Bytes, failed: st.Statistics.Failed}
		}
	}
	return c, nil
}

// carried reports whether direction d's SA counted more packets in after
// than in before at both ends (its sender and its receiver).
func carried(before, after saCounts, d int) bool {
	return after[0][d].packets > before[0][d].packets && after[1][d].packets > before[1][d].packets
}

// probe sends the link's probes and waits, at most timeout and while ctx
// lasts, until both directions' SAs counted one at both ends; it resends a
// probe not yet decrypted after a third of the timeout. It returns the
// counters before and after and how many probes it sent per direction.
// The receiving ends' blackhole rules are removed before it returns.
func (es ends) probe(ctx context.Context, l *link, timeout time.Duration) (before, after saCounts, sent [2]int, err error) {
	dirs, err := es.probeDirs(l)
	if err != nil {
		return before, after, sent, err
	}
	if before, err = es.counts(l); err != nil {
		return before, after, sent, err
	}
	var added []probeDir
	defer func() {
		var errs []error
		for _, p := range added {
			if rerr := ignoreGone(p.to.h.RuleDel(probeRule(p))); rerr != nil {
				errs = append(errs, fmt.Errorf("ipsec: host %q: remove the probe's rule: %w", p.to.host, rerr))
			}
		}
		err = errors.Join(append([]error{err}, errs...)...)
	}()
	for _, p := range dirs {
		if rerr := p.to.h.RuleAdd(probeRule(p)); rerr != nil && !errors.Is(rerr, unix.EEXIST) {
			return before, after, sent, fmt.Errorf("%w: host %q: add the rule that drops the decrypted probe: %v", tunnel.ErrNotProven, p.to.host, rerr)
		}
		added = append(added, p)
	}
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		return before, after, sent, fmt.Errorf("ipsec: probe: %w", err)
	}
	send := func(p probeDir) error {
		sent[p.d]++
		payload := fmt.Appendf(nil, "sealift-probe %s %s %d", hex.EncodeToString(nonce), l.spec.ID, sent[p.d])
		tmpl := p.from.outPolicies(l, netlinkAllow, l.spi[p.d])[0].Tmpls[0]
		if err := sendProbe(p, tmpl, payload); err != nil {
			return fmt.Errorf("%w: host %q: send the probe %s -> %s: %v", tunnel.ErrNotProven, p.from.host, p.src, p.dst, err)
		}
		return nil
	}
	for _, p := range dirs {
		if err := send(p); err != nil {
			return before, after, sent, err
		}
	}
	start := time.Now()
	deadline := start.Add(timeout)
	resend := timeout / 3
	tk := time.NewTicker(5 * time.Millisecond) // the kernel emits no event for SA use
	defer tk.Stop()
	for {
		if after, err = es.counts(l); err != nil {
			return before, after, sent, err
		}
		if carried(before, after, secureToRemote) && carried(before, after, remoteToSecure) {
			return before, after, sent, nil
		}
		now := time.Now()
		if now.After(deadline) {
			return before, after, sent, nil // the caller judges the counters
		}
		for _, p := range dirs {
			if !carried(before, after, p.d) && now.Sub(start) >= time.Duration(sent[p.d])*resend {
				if err := send(p); err != nil {
					return before, after, sent, err
				}
			}
		}
		select {
		case <-ctx.Done():
			return before, after, sent, fmt.Errorf("%w: waiting for the probe: %w", tunnel.ErrNotProven, ctx.Err())
		case <-tk.C:
		}
	}
}

// probeRule is the receiving end's rule that blackholes p's decrypted
// probe (by its addresses and protocol) before it is routed.
func probeRule(p probeDir) *netlink.Rule {
	r := netlink.NewRule()
	r.Family = netlink.FAMILY_V4
	if p.src.Is6() {
		r.Family = netlink.FAMILY_V6
	}
	r.Src = ipNet(netip.PrefixFrom(p.src, p.src.BitLen()))
	r.Dst = ipNet(netip.PrefixFrom(p.dst, p.dst.BitLen()))
	r.IPProto = probeProto
	r.Priority = probeRulePriority
	r.Protocol = uint8(RouteProtocol)
	r.Type = unix.RTN_BLACKHOLE
	return r
}

// sendProbe sends payload from p.src to p.dst at p.from's host, through a
// raw socket whose own XFRM policy requires the ESP SA of tmpl.
func sendProbe(p probeDir, tmpl netlink.XfrmPolicyTmpl, payload []byte) error {
	return nsutil.Do(p.from.host, func() error {
		fam, level, transparent, policy := unix.AF_INET, unix.IPPROTO_IP, unix.IP_TRANSPARENT, unix.IP_XFRM_POLICY
		if p.src.Is6() {
			fam, level, transparent, policy = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, unix.IPV6_XFRM_POLICY
		}
		fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, probeProto)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptString(fd, level, policy, string(socketPolicy(p, tmpl))); err != nil {
			return fmt.Errorf("socket XFRM policy: %w", err)
		}
		if err := unix.SetsockoptInt(fd, level, transparent, 1); err != nil {
			return fmt.Errorf("transparent socket: %w", err)
		}
		var oob []byte
		var to unix.Sockaddr
		if p.src.Is6() {
			oob = unix.PktInfo6(&unix.Inet6Pktinfo{Addr: p.src.As16()})
			to = &unix.SockaddrInet6{Addr: p.dst.As16()}
		} else {
			oob = unix.PktInfo4(&unix.Inet4Pktinfo{Spec_dst: p.src.As4()})
			to = &unix.SockaddrInet4{Addr: p.dst.As4()}
		}
		return unix.Sendmsg(fd, payload, oob, to, 0)
	})
}

// socketPolicy is the probe socket's XFRM policy (struct
// xfrm_userpolicy_info and one xfrm_user_tmpl, as setsockopt
// IP_XFRM_POLICY takes them): out, src/dst and protocol of p, allow, with
// tmpl (the link's out template: ESP tunnel, reqid and SPI) required.
func socketPolicy(p probeDir, tmpl netlink.XfrmPolicyTmpl) []byte {
	family := uint16(unix.AF_INET)
	if p.src.Is6() {
		family = unix.AF_INET6
	}
	var info nl.XfrmUserpolicyInfo
	info.Sel.Family = family
	info.Sel.Saddr.FromIP(ipOf(p.src))
	info.Sel.Daddr.FromIP(ipOf(p.dst))
	info.Sel.PrefixlenS = uint8(p.src.BitLen())
	info.Sel.PrefixlenD = uint8(p.dst.BitLen())
	info.Sel.Proto = probeProto
	info.Lft.SoftByteLimit, info.Lft.HardByteLimit = nl.XFRM_INF, nl.XFRM_INF
	info.Lft.SoftPacketLimit, info.Lft.HardPacketLimit = nl.XFRM_INF, nl.XFRM_INF
	info.Dir = uint8(netlink.XFRM_DIR_OUT)
	info.Action = uint8(netlinkAllow)
	var t nl.XfrmUserTmpl
	t.XfrmId.Daddr.FromIP(tmpl.Dst)
	t.XfrmId.Proto = uint8(tmpl.Proto)
	t.XfrmId.Spi = nl.Swap32(uint32(tmpl.Spi))
	if addrOf(tmpl.Dst).Is4() {
		t.Family = unix.AF_INET
	} else {
		t.Family = unix.AF_INET6
	}
	t.Saddr.FromIP(tmpl.Src)
	t.Reqid = uint32(tmpl.Reqid)
	t.Mode = uint8(tmpl.Mode)
	t.Aalgos, t.Ealgos, t.Calgos = ^uint32(0), ^uint32(0), ^uint32(0)
	b := append([]byte(nil), info.Serialize()...)
	return append(b, t.Serialize()...)
}

// describeCounts formats the counters of the link's SAs before and after
// the probe, per end.
func (es ends) describeCounts(l *link, before, after saCounts) string {
	var parts []string
	for i, e := range es {
		var ds []string
		for _, d := range []int{e.out, e.in} {
			dir := "out"
			if d == e.in {
				dir = "in"
			}
			s := fmt.Sprintf("%s spi 0x%08x packets %d->%d", dir, l.spi[d], before[i][d].packets, after[i][d].packets)
			if after[i][d].failed > before[i][d].failed {
				s += fmt.Sprintf(" (%d failed integrity check)", after[i][d].failed-before[i][d].failed)
			}
			ds = append(ds, s)
		}
		parts = append(parts, fmt.Sprintf("host %q: %s", e.host, strings.Join(ds, ", ")))
	}
	return strings.Join(parts, "; ")
}

// removeProbeRules deletes, at this end, the probe rules (RouteProtocol,
// probeProto) whose addresses the in policies ps cover: what a Verify
// interrupted by a crash left.
func (e *end) removeProbeRules(ps []netlink.XfrmPolicy) error {
	rs, err := retryDump(func() ([]netlink.Rule, error) { return e.h.RuleList(netlink.FAMILY_ALL) })
	if err != nil {
		return fmt.Errorf("ipsec: host %q: list rules: %w", e.host, err)
	}
	var errs []error
	for _, r := range rs {
		if r.Protocol != uint8(RouteProtocol) || r.IPProto != probeProto {
			continue
		}
		src, ok1 := prefixOf(r.Src)
		dst, ok2 := prefixOf(r.Dst)
		if !ok1 || !ok2 {
			continue
		}
		for _, p := range ps {
			ps, _ := prefixOf(p.Src)
			pd, _ := prefixOf(p.Dst)
			if p.Dir == netlink.XFRM_DIR_IN && ps.Contains(src.Addr()) && pd.Contains(dst.Addr()) {
				r := r
				r.Type = unix.RTN_BLACKHOLE
				if err := ignoreGone(e.h.RuleDel(&r)); err != nil {
					errs = append(errs, fmt.Errorf("ipsec: host %q: delete probe rule %s -> %s: %w", e.host, src, dst, err))
				}
				break
			}
		}
	}
	return errors.Join(errs...)
}
