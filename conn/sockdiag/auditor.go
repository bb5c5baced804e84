// Package sockdiag is a conn.ConnAuditor over sock_diag (NETLINK_SOCK_DIAG)
// for the sockets inside one namespace, e.g. an endpoint's netns or a VM
// whose sockets the host can reach (FIG. 3 blocks 355-365).
//
// List dumps TCP and UDP sockets, IPv4 and IPv6, once per family and
// protocol, and keeps those with an end in the selector: TCP sockets in a
// state that can carry data (not LISTEN, TIME_WAIT or CLOSE) and connected
// UDP sockets. Each Conn carries the socket cookie as ID, the socket mark,
// the upper layer protocol (INET_DIAG_ULP_INFO: "tls" for kernel TLS,
// "mptcp" for MPTCP subflows) and the device: the bound one, else the one
// the namespace routes the remote address through.
//
// Reset destroys the sockets with SOCK_DESTROY (CONFIG_INET_DIAG_DESTROY),
// all requests pipelined over one netlink socket; each names the socket's
// 4-tuple and cookie, so a socket that was replaced is left alone. A
// destroyed TCP socket sends a RST to its peer and its owner sees
// ECONNABORTED; a UDP socket's owner sees ECONNABORTED.
package sockdiag

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/host"
	"github.com/sealift/sealift/internal/nlsock"
	"github.com/sealift/sealift/internal/nsutil"
)

var _ conn.ConnAuditor = (*Auditor)(nil)

// Auditor lists and destroys a VM's sockets in one namespace.
type Auditor struct {
	host string
	log  *slog.Logger
}

// Option configures an Auditor.
type Option func(*Auditor)

// WithHost sets the namespace whose sockets are audited when the Selector
// names none ("" = the current one).
func WithHost(ns string) Option { return func(a *Auditor) { a.host = ns } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(a *Auditor) { a.log = l } }

// New returns an Auditor.
func New(opts ...Option) *Auditor {
	a := &Auditor{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(a)
	}
	return a
}

func (a *Auditor) hostOf(sel conn.Selector) string { return host.Of(sel, a.host) }

func (a *Auditor) open(sel conn.Selector) (netns.NsHandle, error) { return host.Open(sel, a.host) }

// List returns the live TCP and connected UDP sockets with an end in
// sel.Addrs.
func (a *Auditor) List(ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	ns, err := a.open(sel)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	socks, err := a.dump(ctx, ns, sel)
	if err != nil {
		return nil, err
	}
	h, err := nsutil.HandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("sockdiag: route handle in %q: %w", a.hostOf(sel), err)
	}
	defer h.Close()
	devs := newDevices(h)
	out := make([]conn.Conn, len(socks))
	for i := range socks {
		out[i] = toConn(&socks[i], devs)
	}
	a.log.Debug("sockdiag list", "host", a.hostOf(sel), "sockets", len(out))
	return out, nil
}

func toConn(s *sock, devs *devices) conn.Conn {
	c := conn.Conn{Proto: conn.TCP, Local: s.local, Remote: s.remote, State: stateName(s.state),
		ULP: s.ulp, Mark: s.mark, ID: s.cookie}
	if s.proto == unix.IPPROTO_UDP {
		c.Proto = conn.UDP
	}
	if s.ifindex != 0 {
		c.Device = devs.name(int(s.ifindex))
	}
	if c.Device == "" {
		c.Device = devs.of(s.local.Addr(), s.remote.Addr(), s.mark)
	}
	return c
}

// dump reads TCP and UDP sockets of the selector's families.
func (a *Auditor) dump(ctx context.Context, ns netns.NsHandle, sel conn.Selector) ([]sock, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var fams []uint8
	for _, p := range sel.Addrs {
		// v4 addresses also appear on dual-stack (AF_INET6) sockets.
		if p.Addr().Unmap().Is4() && !slices.Contains(fams, unix.AF_INET) {
			fams = append(fams, unix.AF_INET)
		}
		if !slices.Contains(fams, unix.AF_INET6) {
			fams = append(fams, unix.AF_INET6)
		}
	}
	addrs := make([]netip.Prefix, len(sel.Addrs))
	for i, p := range sel.Addrs {
		addrs[i] = p
		if p.Addr().Is4In6() && p.Bits() >= 96 {
			addrs[i] = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
	}
	has := func(a netip.Addr) bool {
		return slices.ContainsFunc(addrs, func(p netip.Prefix) bool { return p.Contains(a) })
	}
	var out []sock
	err := nsutil.DoHandle(ns, func() error {
		s, err := nlsock.Open(unix.NETLINK_SOCK_DIAG)
		if err != nil {
			return err
		}
		defer s.Close()
		for _, fam := range fams {
			for _, q := range []struct {
				proto  uint8
				states uint32
				ext    uint8
			}{{unix.IPPROTO_TCP, tcpStatesLive, 1 << (inetDiagInfo - 1)}, {unix.IPPROTO_UDP, udpConnected, 0}} {
				err := s.Dump(sockDiagByFamily, request(fam, q.proto, q.ext, q.states, nil), func(data []byte) error {
					if k, ok := parse(data, q.proto); ok && (has(k.local.Addr()) || has(k.remote.Addr())) {
						out = append(out, k)
					}
					return nil
				})
				if err != nil {
					return fmt.Errorf("sockdiag: dump family %d proto %d: %w", fam, q.proto, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, ctx.Err()
}

// Reset destroys the sockets of conns (matched by cookie and 4-tuple) in
// one pipelined batch. Sockets that are gone are counted as Missed.
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
	cur, err := a.dump(ctx, ns, sel)
	if err != nil {
		return conn.ResetResult{}, err
	}
	type key struct {
		proto  uint8
		cookie uint64
	}
	byCookie := make(map[key]int, len(cur))
	for i, s := range cur {
		byCookie[key{s.proto, s.cookie}] = i
	}
	var res conn.ResetResult
	var reqs []nlsock.Request
	var which []int
	done := make(map[int]bool, len(conns))
	for _, c := range conns {
		proto := uint8(unix.IPPROTO_TCP)
		if c.Proto == conn.UDP {
			proto = unix.IPPROTO_UDP
		}
		i, ok := byCookie[key{proto, c.ID}]
		if !ok || done[i] || cur[i].local != c.Local || cur[i].remote != c.Remote {
			res.Missed++
			continue
		}
		done[i] = true
		s := &cur[i]
		reqs = append(reqs, nlsock.Request{Type: sockDestroy, Body: request(s.family, s.proto, 0, 0xffffffff, &s.id)})
		which = append(which, i)
	}
	if len(reqs) == 0 {
		return res, nil
	}
	errnos, err := nlsock.PipelineAt(ns, unix.NETLINK_SOCK_DIAG, reqs)
	if err != nil {
		return res, fmt.Errorf("sockdiag: destroy: %w", err)
	}
	var errs []error
	for j, e := range errnos {
		switch e {
		case 0:
			res.Reset++
		case unix.ENOENT, unix.ESTALE:
			res.Missed++
		default:
			s := &cur[which[j]]
			errs = append(errs, fmt.Errorf("sockdiag: destroy %s %s->%s (cookie %d): %w",
				protoName(s.proto), s.local, s.remote, s.cookie, e))
		}
	}
	a.log.Info("sockdiag reset", "host", a.hostOf(sel), "reset", res.Reset, "missed", res.Missed)
	return res, errors.Join(errs...)
}

func protoName(p uint8) string {
	if p == unix.IPPROTO_UDP {
		return "udp"
	}
	return "tcp"
}
