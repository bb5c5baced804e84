package ipsec

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
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
// The probe of direction Secure → Remote is an IP packet (protocol
// probeProto) from the Secure end host to the Remote's Underlay address
// (Remote → Secure: the reverse), sent from a raw socket that carries its
// own XFRM policy: out, any source and destination, allow, with the
// link's ESP tunnel template (underlays, reqid, current SPI) required. A
// socket policy takes precedence over the global ones, so the kernel
// encrypts the probe with that SA or, if the SA is missing, refuses or
// drops it: the probe can never leave in clear, whatever the global
// policies say. (Those are checked separately: Verify requires all of the
// link's policies, allowed, with the ESP template and, out, the current
// SPI.)
//
// The receiver decrypts the probe (its SA counts it), then drops it: its
// inner addresses (the hosts' own) match none of the link's in policies,
// and the kernel drops a packet that came out of an ESP tunnel without a
// policy admitting it (XfrmInNoPols), before any socket or ICMP error.
//
// Why not between Protected addresses: those are the VM's (and its
// peers'). At block 345, when the Migrator verifies, an XFRM link's VM is
// still behind the target's fence, a full block of its addresses in the
// host's input, forward and output hooks until block 370, and a probe
// from or to its address would be dropped there, so the quiet VM could
// still not be verified. A probe to the VM's address would also reach the
// VM (and one from it, a peer) unless the receiver added a rule to drop
// it. Carried by the link's SAs, the probe proves what the counters prove
// for the VM's traffic: both ends hold matching keys and SPIs and the ESP
// packets cross the underlay both ways. It adds nothing to either host
// (no address, route or rule; the socket and its policy go with the
// call).
const (
	// probeProto is the probe's IP protocol: 253, reserved for
	// experimentation (RFC 3692).
	probeProto = 253
	// defaultProbeTimeout bounds Verify's wait for the probes.
	defaultProbeTimeout = 3 * time.Second
)

// probeDir is the probe of one direction of a link.
type probeDir struct {
	d        int  // secureToRemote or remoteToSecure
	from, to *end // sending and receiving end
}

// saCount is one SA's counters at one end.
type saCount struct {
	packets, bytes uint64
	failed         uint32 // integrity failures (wrong key)
}

// saCounts are the counters of a link's current SAs: [end][direction].
type saCounts [2][2]saCount

// probeDirs returns the link's two probes.
func (es ends) probeDirs() [2]probeDir {
	return [2]probeDir{
		secureToRemote: {d: secureToRemote, from: es[0], to: es[1]},
		remoteToSecure: {d: remoteToSecure, from: es[1], to: es[0]},
	}
}

// counts reads the packet counters of the link's current SAs at both ends.
func (es ends) counts(l *link) (saCounts, error) {
	var c saCounts
	for i, e := range es {
		var err error
		if c[i], err = e.counts(l); err != nil {
			return c, err
		}
	}
	return c, nil
}

// counts reads the counters of the link's current SAs at this end, by
// direction.
func (e *end) counts(l *link) ([2]saCount, error) {
	var c [2]saCount
	for d := range l.spi {
		st, err := e.h.XfrmStateGet(stateID(l, d, l.spi[d]))
		if err != nil {
			return c, fmt.Errorf("%w: host %q: SA spi 0x%08x: %v", tunnel.ErrNotProven, e.host, l.spi[d], err)
		}
		c[d] = saCount{packets: st.Statistics.Packets, bytes: st.Statistics.Bytes, failed: st.Statistics.Failed}
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
func (es ends) probe(ctx context.Context, l *link, timeout time.Duration) (before, after saCounts, sent [2]int, err error) {
	dirs := es.probeDirs()
	if before, err = es.counts(l); err != nil {
		return before, after, sent, err
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
			return fmt.Errorf("%w: host %q: send the probe to %s: %v", tunnel.ErrNotProven, p.from.host, p.from.peer.Underlay, err)
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

// sendProbe sends payload from p.from's host to the other end's Underlay
// through a raw socket whose own XFRM policy requires the ESP SA of tmpl
// for everything it sends.
func sendProbe(p probeDir, tmpl netlink.XfrmPolicyTmpl, payload []byte) error {
	return p.from.sendProbe(tmpl, payload)
}

// sendProbe sends payload from this end's host to the other end's
// Underlay, carried by the SA of tmpl (see sendProbe).
func (e *end) sendProbe(tmpl netlink.XfrmPolicyTmpl, payload []byte) error {
	dst := e.peer.Underlay
	return nsutil.Do(e.host, func() error {
		fam, level, policy := unix.AF_INET, unix.IPPROTO_IP, unix.IP_XFRM_POLICY
		if dst.Is6() {
			fam, level, policy = unix.AF_INET6, unix.IPPROTO_IPV6, unix.IPV6_XFRM_POLICY
		}
		fd, err := unix.Socket(fam, unix.SOCK_RAW|unix.SOCK_CLOEXEC, probeProto)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptString(fd, level, policy, string(socketPolicy(dst.Is6(), tmpl))); err != nil {
			return fmt.Errorf("socket XFRM policy: %w", err)
		}
		var to unix.Sockaddr = &unix.SockaddrInet4{Addr: dst.As4()}
		if dst.Is6() {
			to = &unix.SockaddrInet6{Addr: dst.As16()}
		}
		return unix.Sendto(fd, payload, 0, to)
	})
}

// socketPolicy is the probe socket's XFRM policy (struct
// xfrm_userpolicy_info and one xfrm_user_tmpl, as setsockopt
// IP_XFRM_POLICY takes them): out, any source, destination and protocol
// of the family, allow, with tmpl (the link's out template: ESP tunnel,
// reqid and SPI) required.
func socketPolicy(v6 bool, tmpl netlink.XfrmPolicyTmpl) []byte {
	family := uint16(unix.AF_INET)
	if v6 {
		family = unix.AF_INET6
	}
	var info nl.XfrmUserpolicyInfo
	info.Sel.Family = family // prefix lengths 0, protocol 0: every packet
	info.Lft.SoftByteLimit, info.Lft.HardByteLimit = nl.XFRM_INF, nl.XFRM_INF
	info.Lft.SoftPacketLimit, info.Lft.HardPacketLimit = nl.XFRM_INF, nl.XFRM_INF
	info.Dir = uint8(netlink.XFRM_DIR_OUT)
	info.Action = uint8(netlinkAllow)
	var t nl.XfrmUserTmpl
	t.XfrmId.Daddr.FromIP(tmpl.Dst)
	t.XfrmId.Proto = uint8(tmpl.Proto)
	t.XfrmId.Spi = nl.Swap32(uint32(tmpl.Spi))
	t.Family = family
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

// probePayload is a probe's payload (it starts with "sealift-probe ").
func probePayload(id, what string) []byte {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	return fmt.Appendf(nil, "sealift-probe %s %s %s", hex.EncodeToString(nonce), id, what)
}

// prove is Verify's proof at one end (End.Verify): it sends a probe
// through this end's sending SA, resent after a third of timeout while
// that SA has not counted it, and waits, at most timeout and while ctx
// lasts, until the sending SA counted it and the receiving SA has
// decrypted at least one packet (the other end's probe or traffic: only
// the other end's keys make a packet this SA decrypts). The proof is the
// two SAs' counters at this end.
func (e *end) prove(ctx context.Context, l *link, timeout time.Duration) (tunnel.Proof, error) {
	before, err := e.counts(l)
	if err != nil {
		return tunnel.Proof{}, err
	}
	sent := 0
	send := func() error {
		sent++
		tmpl := e.outPolicies(l, netlinkAllow, l.spi[e.out])[0].Tmpls[0]
		if err := e.sendProbe(tmpl, probePayload(l.spec.ID, fmt.Sprintf("verify %d", sent))); err != nil {
			return fmt.Errorf("%w: host %q: send the probe to %s: %v", tunnel.ErrNotProven, e.host, e.peer.Underlay, err)
		}
		return nil
	}
	if err := send(); err != nil {
		return tunnel.Proof{}, err
	}
	after := before
	proven := func() bool { return after[e.out].packets > before[e.out].packets && after[e.in].packets > 0 }
	start := time.Now()
	deadline, resend := start.Add(timeout), timeout/3
	tk := time.NewTicker(5 * time.Millisecond) // the kernel emits no event for SA use
	defer tk.Stop()
	var waitErr error
	for {
		if after, err = e.counts(l); err != nil {
			return tunnel.Proof{}, err
		}
		now := time.Now()
		if proven() || now.After(deadline) {
			break
		}
		if after[e.out].packets == before[e.out].packets && now.Sub(start) >= time.Duration(sent)*resend {
			if err := send(); err != nil {
				return tunnel.Proof{}, err
			}
		}
		select {
		case <-ctx.Done():
			waitErr = ctx.Err()
		case <-tk.C:
		}
		if waitErr != nil {
			break
		}
	}
	pr := tunnel.Proof{TxPackets: after[e.out].packets, TxBytes: after[e.out].bytes, RxPackets: after[e.in].packets, RxBytes: after[e.in].bytes}
	in := fmt.Sprintf("in spi 0x%08x packets %d->%d", l.spi[e.in], before[e.in].packets, after[e.in].packets)
	if f := after[e.in].failed; f > 0 {
		in += fmt.Sprintf(" (%d failed integrity check)", f)
	}
	pr.Detail = fmt.Sprintf("host %q: esp tunnel %s -> %s reqid 0x%08x %s: probes sent %d; out spi 0x%08x packets %d->%d, %s",
		e.host, e.local.Underlay, e.peer.Underlay, l.reqid, l.alg, sent, l.spi[e.out], before[e.out].packets, after[e.out].packets, in)
	switch {
	case after[e.out].packets <= before[e.out].packets:
		err = fmt.Errorf("%w: the sending SA did not carry the probe: %s", tunnel.ErrNotProven, pr.Detail)
	case after[e.in].packets == 0:
		err = fmt.Errorf("%w: the receiving SA has decrypted nothing from the other end (it sends a probe at its Connect and its Verify): %s", tunnel.ErrNotProven, pr.Detail)
	}
	if err != nil && waitErr != nil {
		err = fmt.Errorf("%w (waiting: %w)", err, waitErr)
	}
	return pr, err
}
