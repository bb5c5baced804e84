// Package conntrack is a conn.ConnAuditor over the conntrack table of a
// host that routes a VM's traffic (FIG. 3 blocks 355-365): the case of a
// QEMU guest whose sockets the host cannot reach, with the guest's flows
// routed through the host's namespace (e.g. between its bridge and the
// secure-link device).
//
// List dumps the table once per call and keeps the live TCP and UDP flows
// with an end in the selector (TCP entries in TIME_WAIT or CLOSE are left
// out). A flow's Device is the interface the host forwards the VM's
// packets to the remote end through: a FIB lookup "to remote from VM iif
// <device towards the VM>", so source policy routing (a secure link's
// table) counts; one lookup per (VM address, remote address, mark).
//
// Reset has to make both endpoints drop each connection, not just forget
// the entry. Conntrack does not export TCP sequence numbers (CTA_PROTOINFO_TCP
// carries only state, window scales and flags), so a host cannot forge an
// acceptable RST by itself. Reset therefore installs, in ONE nftables batch,
// its own table: sets of the flows' directional 5-tuples (concatenated
// keys, one per direction, each element with a counter) and a forward rule
// answering any matching packet with "reject with tcp reset" (ICMP port
// unreachable for UDP). The kernel builds each RST from the packet it
// rejects, so the sequence number is exactly what that endpoint expects.
// To not wait for idle flows to speak, Reset then "tickles" both endpoints
// of every TCP flow with one out-of-window ACK each (raw, marked and
// untracked), which each endpoint answers with a duplicate ACK
// (RFC 793/5961); that answer crosses the host, is rejected, and the
// endpoint gets its RST. Tickles and RSTs carry fence.ResetMark, which a
// fence with AllowVia lets reach the VM (payload-free ACK/RST only), so a
// fenced target VM's side is reset too. Reset waits until every
// direction's counter has moved (or WithResetTimeout, or ctx; silent
// directions are tickled again every 600ms), deletes the conntrack
// entries pipelined over one netlink socket (256 requests per sendmsg,
// each with the entry id so a replaced entry is left alone), and removes
// its table.
//
// The reject rule hooks the inet forward path: flows the host routes. A VM
// bridged to its peers without routing is only seen there with
// br_netfilter; an endpoint in a local namespace is better served by
// conn/sockdiag. The host must be tracking connections (some rule in its
// namespace uses conntrack), or there is nothing to list.
package conntrack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"github.com/ti-mo/netfilter"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/host"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/nsutil"
)

var _ conn.ConnAuditor = (*Auditor)(nil)

// Auditor lists and resets a VM's flows in one host's conntrack table.
type Auditor struct {
	host    string
	log     *slog.Logger
	timeout time.Duration
	tickle  bool
	mark    uint32
}

// Option configures an Auditor.
type Option func(*Auditor)

// WithHost sets the namespace whose conntrack table is audited when the
// Selector names none ("" = the current one).
func WithHost(ns string) Option { return func(a *Auditor) { a.host = ns } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(a *Auditor) { a.log = l } }

// WithResetTimeout bounds how long Reset waits for the flows' next
// packets to be rejected before it removes its rules (default 3s).
func WithResetTimeout(d time.Duration) Option { return func(a *Auditor) { a.timeout = d } }

// WithTickle turns the tickle ACKs on (default) or off. Off, Reset only
// rejects packets the endpoints send by themselves within the timeout.
func WithTickle(on bool) Option { return func(a *Auditor) { a.tickle = on } }

// WithTickleMark sets the mark of tickle packets, which the reset table
// exempts from conntrack, and of the RSTs it answers with (default
// fence.ResetMark). Fences (fence/nft) let reset packets reach a fenced
// VM only with fence.ResetMark: another mark resets the peer side alone.
func WithTickleMark(m uint32) Option { return func(a *Auditor) { a.mark = m } }

// New returns an Auditor.
func New(opts ...Option) *Auditor {
	a := &Auditor{log: slog.New(slog.NewTextHandler(io.Discard, nil)), timeout: 3 * time.Second,
		tickle: true, mark: fence.ResetMark}
	for _, o := range opts {
		o(a)
	}
	return a
}

// selected is a flow with its Conn view.
type selected struct {
	flow *ct.Flow // into the dump's slice
	conn conn.Conn
}

// List returns the live TCP and UDP flows with an end in sel.Addrs.
func (a *Auditor) List(ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	ns, err := a.open(sel)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	flows, err := dump(ctx, ns, sel)
	if err != nil {
		return nil, err
	}
	h, err := nsutil.HandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("conntrack: route handle in %q: %w", a.hostOf(sel), err)
	}
	defer h.Close()
	devs := newDevices(h)
	out := make([]conn.Conn, len(flows))
	for i := range flows {
		c := flows[i].conn
		c.Device = devs.of(c.Local.Addr(), c.Remote.Addr(), c.Mark)
		out[i] = c
	}
	a.log.Debug("conntrack list", "host", a.hostOf(sel), "flows", len(out))
	return out, nil
}

func (a *Auditor) hostOf(sel conn.Selector) string { return host.Of(sel, a.host) }

func (a *Auditor) open(sel conn.Selector) (netns.NsHandle, error) { return host.Open(sel, a.host) }

// dump reads the table once and keeps the live flows sel selects.
func dump(ctx context.Context, ns netns.NsHandle, sel conn.Selector) ([]selected, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := ct.Dial(&netlink.Config{NetNS: int(ns)})
	if err != nil {
		return nil, fmt.Errorf("conntrack: dial: %w", err)
	}
	defer c.Close()
	// One request; restrict it to one family when the selector allows.
	var v4, v6 bool
	for _, p := range sel.Addrs {
		if p.Addr().Unmap().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	var flows []ct.Flow
	switch {
	case v4 && !v6:
		flows, err = c.DumpFilter(ct.NewFilter().Family(netfilter.ProtoIPv4), nil)
	case v6 && !v4:
		flows, err = c.DumpFilter(ct.NewFilter().Family(netfilter.ProtoIPv6), nil)
	default:
		flows, err = c.Dump(nil)
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack: dump: %w", err)
	}
	s := selector{addrs: make([]netip.Prefix, len(sel.Addrs))}
	for i, p := range sel.Addrs {
		s.addrs[i] = p
		if p.Addr().Is4In6() && p.Bits() >= 96 { // ::ffff:a.b.c.d/n matches a.b.c.d
			s.addrs[i] = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
	}
	out := make([]selected, 0, len(flows))
	for i := range flows {
		f := &flows[i]
		if !live(f) {
			continue
		}
		if c, ok := toConn(f, s); ok {
			out = append(out, selected{flow: f, conn: c})
		}
	}
	return out, ctx.Err()
}

// Reset makes both endpoints of every TCP flow in conns drop it (RST),
// rejects UDP flows' next packets while it runs, and deletes all their
// conntrack entries, in one batch (see the package doc). Conns are found
// in the table by ID, else by 5-tuple (a list taken on another host, e.g.
// the migration's source). A conn not in the table is still reset by its
// 5-tuple (a moved VM's flow that has sent nothing through this host
// yet): it counts as Reset when a packet of one of its directions was
// rejected (an endpoint's RST answering a probe counts too: the endpoint
// no longer has the connection), else as Missed.
func (a *Auditor) Reset(ctx context.Context, sel conn.Selector, conns []conn.Conn) (conn.ResetResult, error) {
	if err := sel.Validate(); err != nil {
		return conn.ResetResult{}, err
	}
	if err := conn.ValidateConns(conns); err != nil {
		return conn.ResetResult{}, err
	}
	if len(conns) == 0 {
		return conn.ResetResult{}, nil
	}
	ns, err := a.open(sel)
	if err != nil {
		return conn.ResetResult{}, err
	}
	defer ns.Close()
	cur, err := dump(ctx, ns, sel)
	if err != nil {
		return conn.ResetResult{}, err
	}
	byID := make(map[uint64]int, len(cur))
	byTuple := make(map[tupleKey]int, len(cur))
	for i, s := range cur {
		byID[s.conn.ID] = i
		byTuple[keyOf(s.conn)] = i
	}
	var res conn.ResetResult
	flows := make([]ct.Flow, 0, len(conns))
	var absent []conn.Conn // not (yet) in this table: reset by 5-tuple alone
	seen := make(map[int]bool, len(conns))
	for _, c := range conns {
		i, ok := byID[c.ID]
		if !ok || !same(cur[i].conn, c) {
			i, ok = byTuple[keyOf(c)] // listed on another host (the source)
		}
		switch {
		case !ok:
			absent = append(absent, c)
		case seen[i]:
			res.Missed++
		default:
			seen[i] = true
			flows = append(flows, *cur[i].flow)
		}
	}
	if len(flows) == 0 && len(absent) == 0 {
		return res, nil
	}
	p := newPlan(flows)
	p.addConns(absent)
	rj, err := installReject(ns, p, a.mark)
	if err != nil {
		return res, err
	}
	var errs []error
	left, err := a.provoke(ctx, ns, rj, p)
	if err != nil {
		errs = append(errs, err)
	}
	// An absent connection counts as reset when a packet of one of its
	// directions was rejected; otherwise it was already gone.
	for _, c := range absent {
		if left != nil && left.hasBoth(c) {
			res.Missed++
		} else {
			res.Reset++
		}
	}
	gone, err := deleteFlows(ns, flows)
	if err != nil {
		errs = append(errs, err)
	}
	if err := rj.remove(); err != nil {
		errs = append(errs, err)
	}
	res.Reset += len(flows)
	a.log.Info("conntrack reset", "host", a.hostOf(sel), "reset", res.Reset, "missed", res.Missed,
		"entries_already_gone", gone)
	return res, errors.Join(errs...)
}

// provoke tickles the TCP endpoints and waits until every TCP direction
// was rejected once, the timeout passes, or ctx ends. Directions still
// silent are tickled again after retickle (an endpoint answers at most one
// out-of-window segment per net.ipv4.tcp_invalid_ratelimit, 500ms).
func (a *Auditor) provoke(ctx context.Context, ns netns.NsHandle, rj *rejecter, p *plan) (left *plan, err error) {
	if p.tcpKeys() == 0 {
		return p, nil
	}
	const retickle = 600 * time.Millisecond
	var last time.Time
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()
	left = p
	wait := 2 * time.Millisecond
	for {
		if a.tickle && time.Since(last) >= retickle {
			if err := tickle(ns, left, a.mark); err != nil {
				a.log.Warn("conntrack reset: tickles", "err", err)
			}
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			a.log.Warn("conntrack reset: directions not confirmed by a rejected packet",
				"unconfirmed", left.tcpKeys(), "of", p.tcpKeys())
			return left, nil
		case <-time.After(wait):
		}
		wait = min(wait*2, 50*time.Millisecond)
		if left, err = rj.unhit(); err != nil {
			return nil, err
		}
		if left.tcpKeys() == 0 {
			return left, nil
		}
	}
}

// same reports whether two views are of the same flow.
func same(a, b conn.Conn) bool {
	return a.Proto == b.Proto && a.Local == b.Local && a.Remote == b.Remote
}
