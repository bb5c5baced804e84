package ipsec

import (
	"fmt"
	"net/netip"
	"sort"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/tunnel"
)

// found is a link seen in the kernel at one or more hosts.
type found struct {
	reqid  uint32
	active bool
	lines  []string
	ends   []foundEnd
	alg    Algorithm
	states int // SAs found with the reqid
}

// foundEnd is what one host's out policies say about its end.
type foundEnd struct {
	host               string
	underlay, peerUnd  netip.Addr
	protected, peerPro []netip.Prefix
	outSPI             uint32
}

// scan dumps the policies and SAs at hosts and groups sealift's by reqid.
func scan(hosts []string) ([]*found, error) {
	byReqid := map[uint32]*found{}
	var order []uint32
	for _, host := range hosts {
		h, err := openHandle(host)
		if err != nil {
			if hostGone(err) {
				continue // namespace gone
			}
			return nil, err
		}
		e := &end{host: host, h: h}
		all, err := retryDump(func() ([]netlink.XfrmPolicy, error) { return h.XfrmPolicyList(netlink.FAMILY_ALL) })
		if err != nil {
			h.Close()
			return nil, fmt.Errorf("ipsec: host %q: list policies: %w", host, err)
		}
		ends := map[uint32]*foundEnd{}
		for _, p := range all {
			r := policyReqid(p)
			if !isOurs(r) {
				continue
			}
			f := byReqid[uint32(r)]
			if f == nil {
				f = &found{reqid: uint32(r), active: true}
				byReqid[uint32(r)] = f
				order = append(order, uint32(r))
			}
			f.active = f.active && p.Action == netlinkAllow
			f.lines = append(f.lines, policyLine(host, p))
			if p.Dir != netlink.XFRM_DIR_OUT {
				continue
			}
			fe := ends[uint32(r)]
			if fe == nil {
				fe = &foundEnd{host: host}
				ends[uint32(r)] = fe
			}
			t := p.Tmpls[0]
			fe.underlay, fe.peerUnd, fe.outSPI = addrOf(t.Src), addrOf(t.Dst), uint32(t.Spi)
			if s, ok := prefixOf(p.Src); ok && !containsPrefix(fe.protected, s) {
				fe.protected = append(fe.protected, s)
			}
			if d, ok := prefixOf(p.Dst); ok && !containsPrefix(fe.peerPro, d) {
				fe.peerPro = append(fe.peerPro, d)
			}
		}
		for r, fe := range ends {
			byReqid[r].ends = append(byReqid[r].ends, *fe)
			ss, err := e.states(r)
			if err != nil {
				h.Close()
				return nil, err
			}
			for _, s := range ss {
				byReqid[r].lines = append(byReqid[r].lines, stateLine(host, s))
				byReqid[r].states++
				if s.Crypt != nil {
					byReqid[r].alg = AESCBCHMACSHA256
				}
			}
		}
		h.Close()
	}
	sort.Slice(order, func(i, j int) bool { return order[i] < order[j] })
	out := make([]*found, 0, len(order))
	for _, r := range order {
		out = append(out, byReqid[r])
	}
	return out, nil
}

// recover rebuilds a link from what scan found: ID "r" + the reqid's low
// 24 bits in hex, Secure = the first host scanned.
func (f *found) recover() *link {
	l := &link{reqid: f.reqid, alg: f.alg, active: f.active, recovered: true}
	l.spec = tunnel.Spec{ID: fmt.Sprintf("r%06x", f.reqid&0xffffff), Kind: tunnel.IPsec}
	if len(f.ends) == 0 {
		return l
	}
	s := f.ends[0]
	l.spec.Secure = tunnel.End{Host: s.host, Underlay: s.underlay, Protected: s.protected}
	l.spec.Remote = tunnel.End{Underlay: s.peerUnd, Protected: s.peerPro}
	l.spi[secureToRemote] = s.outSPI
	l.hosts = []string{s.host}
	if len(f.ends) > 1 {
		r := f.ends[1]
		l.spec.Remote.Host = r.host
		l.spi[remoteToSecure] = r.outSPI
		l.hosts = append(l.hosts, r.host)
	}
	return l
}
