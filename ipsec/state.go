package ipsec

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/tunnel"
)

// underlays returns the sender and receiver underlay of direction d.
func underlays(spec tunnel.Spec, d int) (src, dst tunnel.End) {
	if d == secureToRemote {
		return spec.Secure, spec.Remote
	}
	return spec.Remote, spec.Secure
}

// stateFor is the SA of direction d with spi and keys k.
func stateFor(l *link, d int, spi uint32, k dirKeys) *netlink.XfrmState {
	src, dst := underlays(l.spec, d)
	st := &netlink.XfrmState{
		Src: ipOf(src.Underlay), Dst: ipOf(dst.Underlay),
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TUNNEL,
		Spi: int(spi), Reqid: int(l.reqid), ReplayWindow: 32,
	}
	l.alg.apply(st, k)
	return st
}

// stateID is what identifies an SA for get and delete.
func stateID(l *link, d int, spi uint32) *netlink.XfrmState {
	src, dst := underlays(l.spec, d)
	return &netlink.XfrmState{Src: ipOf(src.Underlay), Dst: ipOf(dst.Underlay), Proto: netlink.XFRM_PROTO_ESP, Spi: int(spi)}
}

// newSPIs draws one SPI per direction, distinct from each other and from
// the link's current ones.
func newSPIs(l *link) ([2]uint32, error) {
	var s [2]uint32
	for d := range s {
		for {
			v, err := newSPI()
			if err != nil {
				return s, err
			}
			if v != l.spi[0] && v != l.spi[1] && (d == 0 || v != s[0]) {
				s[d] = v
				break
			}
		}
	}
	return s, nil
}

// addStates installs the SAs of both directions with spis at both ends
// (the sender encrypts with it, the receiver decrypts): first the
// receiving SA at each end, then the sending ones, so no end ever holds
// an SA to send with before the other end can decrypt what it sends. On
// error the states added so far are removed again.
func (es ends) addStates(l *link, spis [2]uint32, keys keySet) error {
	var added []struct {
		e *end
		d int
	}
	for _, sending := range []bool{false, true} {
		for _, e := range es {
			d := e.in
			if sending {
				d = e.out
			}
			if err := e.addState(l, d, spis[d], keys[d]); err != nil {
				for _, a := range added {
					_ = a.e.h.XfrmStateDel(stateID(l, a.d, spis[a.d]))
				}
				return err
			}
			added = append(added, struct {
				e *end
				d int
			}{e, d})
		}
	}
	return nil
}

// addStates installs this end's two SAs: the receiving one first, then
// the sending one. If the second fails, the first is removed again.
func (e *end) addStates(l *link, spis [2]uint32, keys keySet) error {
	if err := e.addState(l, e.in, spis[e.in], keys[e.in]); err != nil {
		return err
	}
	if err := e.addState(l, e.out, spis[e.out], keys[e.out]); err != nil {
		return errors.Join(err, ignoreGone(e.h.XfrmStateDel(stateID(l, e.in, spis[e.in]))))
	}
	return nil
}

// addState installs the SA of direction d with spi and key k at this end.
func (e *end) addState(l *link, d int, spi uint32, k dirKeys) error {
	if err := e.h.XfrmStateAdd(stateFor(l, d, spi, k)); err != nil {
		return stateAddErr(e.host, l.alg, err)
	}
	return nil
}

// stateAddErr explains a failed SA add. A kernel without ESP answers
// ENOENT ("Requested type not found"/"No such file or directory"), one
// without the algorithm ENOSYS or ENOENT, one without the protocol
// EPROTONOSUPPORT.
func stateAddErr(host string, alg Algorithm, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EPROTONOSUPPORT), errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EAFNOSUPPORT):
		return fmt.Errorf("%w: host %q: adding the ESP SA failed (%v): the kernel needs CONFIG_INET_ESP (module esp4, esp6 for IPv6) and the crypto for %s (CONFIG_CRYPTO_GCM, CONFIG_CRYPTO_SEQIV or CONFIG_CRYPTO_CBC and CONFIG_CRYPTO_SHA256, and CONFIG_CRYPTO_DRBG)",
			tunnel.ErrKernelUnsupported, host, err, alg)
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%w: host %q: an SA with the same SPI exists", tunnel.ErrExists, host)
	}
	return fmt.Errorf("ipsec: host %q: add SA: %w", host, err)
}

// states dumps this end's SAs with reqid.
func (e *end) states(reqid uint32) ([]netlink.XfrmState, error) {
	all, err := retryDump(func() ([]netlink.XfrmState, error) { return e.h.XfrmStateList(netlink.FAMILY_ALL) })
	if err != nil {
		return nil, fmt.Errorf("ipsec: host %q: list SAs: %w", e.host, err)
	}
	var ss []netlink.XfrmState
	for _, s := range all {
		if s.Reqid == int(reqid) {
			ss = append(ss, s)
		}
	}
	return ss, nil
}

// stateLine describes an SA without its keys. (XfrmState.String can
// panic in netlink v1.3.1; it is never called.)
func stateLine(host string, s netlink.XfrmState) string {
	alg := ""
	switch {
	case s.Aead != nil:
		alg = fmt.Sprintf("aead %s icv %d", s.Aead.Name, s.Aead.ICVLen)
	case s.Crypt != nil && s.Auth != nil:
		alg = fmt.Sprintf("enc %s auth %s trunc %d", s.Crypt.Name, s.Auth.Name, s.Auth.TruncateLen)
	}
	return fmt.Sprintf("host %q: sa %s %s %s -> %s spi 0x%08x reqid 0x%08x %s", host, s.Proto, s.Mode, addrOf(s.Src), addrOf(s.Dst), uint32(s.Spi), uint32(s.Reqid), alg)
}
