package ipsec

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	sealhost "github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// errInvalid is tunnel.ErrInvalid, shortened.
var errInvalid = tunnel.ErrInvalid

// end is one end of a link with a netlink handle in its namespace.
type end struct {
	host        string
	h           *netlink.Handle
	local, peer tunnel.End
	// out is the direction this end sends (secureToRemote at the Secure end).
	out, in int
}

// ends are the Secure (0) and Remote (1) end of a link.
type ends [2]*end

// openHandle opens a ROUTE+XFRM netlink handle in host's namespace. A
// missing host wraps tunnel.ErrInvalid and host.ErrNotFound, naming it.
func openHandle(host string) (*netlink.Handle, error) {
	h, err := nsutil.Handle(host, unix.NETLINK_ROUTE, unix.NETLINK_XFRM)
	switch {
	case err == nil:
		return h, nil
	case hostGone(err):
		return nil, fmt.Errorf("%w: %w", errInvalid, err)
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return nil, fmt.Errorf("%w: host %q: no NETLINK_XFRM socket (CONFIG_XFRM_USER, module xfrm_user): %v", tunnel.ErrKernelUnsupported, host, err)
	default:
		return nil, fmt.Errorf("ipsec: %w", err)
	}
}

// hostGone reports whether err says a host (netns) does not exist.
func hostGone(err error) bool { return errors.Is(err, sealhost.ErrNotFound) }

// openEnds opens handles at both ends of spec.
func openEnds(spec tunnel.Spec) (ends, error) {
	var es ends
	for i, e := range []struct {
		local, peer tunnel.End
		out, in     int
	}{
		{spec.Secure, spec.Remote, secureToRemote, remoteToSecure},
		{spec.Remote, spec.Secure, remoteToSecure, secureToRemote},
	} {
		h, err := openHandle(e.local.Host)
		if err != nil {
			es.close()
			return es, err
		}
		es[i] = &end{host: e.local.Host, h: h, local: e.local, peer: e.peer, out: e.out, in: e.in}
	}
	return es, nil
}

func (es ends) close() {
	for _, e := range es {
		if e != nil {
			e.h.Close()
		}
	}
}

// pair is one selector: src prefix → dst prefix.
type pair struct{ src, dst netip.Prefix }

// pairs returns every (src, dst) combination of the same family.
func pairs(srcs, dsts []netip.Prefix) []pair {
	var ps []pair
	for _, s := range srcs {
		for _, d := range dsts {
			if s.Addr().Is4() == d.Addr().Is4() {
				ps = append(ps, pair{s.Masked(), d.Masked()})
			}
		}
	}
	return ps
}

// ipNet converts a prefix for netlink.
func ipNet(p netip.Prefix) *net.IPNet {
	p = p.Masked()
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// prefixOf converts back; ok is false for nil.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// ipOf converts an address for netlink.
func ipOf(a netip.Addr) net.IP { return net.IP(a.Unmap().AsSlice()) }

// addrOf converts a netlink address.
func addrOf(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}

// retryDump runs a netlink dump, retrying when the kernel reports the
// dump was interrupted by a concurrent change (at most 5 attempts; then
// the error is returned).
func retryDump[T any](f func() ([]T, error)) ([]T, error) {
	var err error
	for i := 0; i < 5; i++ {
		var v []T
		v, err = f()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, err
		}
	}
	return nil, err
}

// ignoreGone drops "no such object" errors of deletes.
func ignoreGone(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}
