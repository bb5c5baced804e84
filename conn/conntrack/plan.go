package conntrack

import (
	"net/netip"

	"github.com/sealift/sealift/conn"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"
)

// tuple is an address/port 4-tuple of one packet.
type tuple struct {
	src, dst     netip.Addr
	sport, dport uint16
}

// dir is one direction of a flow: match is its packets as the host's
// forward hook sees them (after DNAT, before SNAT); tickle is a packet
// to the endpoint that sends them, addressed as that endpoint knows its
// peer, so that it answers.
type dir struct {
	match, tickle tuple
}

// key is the set element for d: saddr . daddr . sport . dport, each field
// padded to 4 bytes the way nftables lays out concatenations.
func (d tuple) key() []byte {
	b := make([]byte, 0, 40)
	b = append(b, d.src.AsSlice()...)
	b = append(b, d.dst.AsSlice()...)
	b = append(b, byte(d.sport>>8), byte(d.sport), 0, 0)
	b = append(b, byte(d.dport>>8), byte(d.dport), 0, 0)
	return b
}

// plan is what Reset installs: the directions of every flow, by set.
type plan struct {
	// tcp4, tcp6, udp4, udp6 hold the directions per set.
	tcp4, tcp6, udp4, udp6 []dir
}

func newPlan(flows []ct.Flow) *plan {
	p := &plan{}
	for i := range flows {
		o, r := flows[i].TupleOrig, flows[i].TupleReply
		// Original direction: source as sent, destination after DNAT.
		od := dir{
			match:  tuple{o.IP.SourceAddress, r.IP.SourceAddress, o.Proto.SourcePort, r.Proto.SourcePort},
			tickle: tuple{o.IP.DestinationAddress, o.IP.SourceAddress, o.Proto.DestinationPort, o.Proto.SourcePort},
		}
		// Reply direction: source as sent, destination after un-SNAT.
		rd := dir{
			match:  tuple{r.IP.SourceAddress, o.IP.SourceAddress, r.Proto.SourcePort, o.Proto.SourcePort},
			tickle: tuple{r.IP.DestinationAddress, r.IP.SourceAddress, r.Proto.DestinationPort, r.Proto.SourcePort},
		}
		v6 := o.IP.SourceAddress.Is6()
		switch {
		case o.Proto.Protocol == unix.IPPROTO_TCP && !v6:
			p.tcp4 = append(p.tcp4, od, rd)
		case o.Proto.Protocol == unix.IPPROTO_TCP:
			p.tcp6 = append(p.tcp6, od, rd)
		case !v6:
			p.udp4 = append(p.udp4, od, rd)
		default:
			p.udp6 = append(p.udp6, od, rd)
		}
	}
	return p
}

func (p *plan) tcpKeys() int { return len(p.tcp4) + len(p.tcp6) }

// tupleKey identifies a connection by protocol and addresses.
type tupleKey struct {
	proto         conn.Proto
	local, remote netip.AddrPort
}

func keyOf(c conn.Conn) tupleKey { return tupleKey{c.Proto, c.Local, c.Remote} }

// addConns adds connections known only by their 5-tuple (no NAT known):
// Local->Remote packets come from the local endpoint, which a tickle from
// Remote reaches, and the other way round.
func (p *plan) addConns(cs []conn.Conn) {
	for _, c := range cs {
		l, r := c.Local, c.Remote
		out := dir{match: tuple{l.Addr(), r.Addr(), l.Port(), r.Port()}, tickle: tuple{r.Addr(), l.Addr(), r.Port(), l.Port()}}
		in := dir{match: tuple{r.Addr(), l.Addr(), r.Port(), l.Port()}, tickle: tuple{l.Addr(), r.Addr(), l.Port(), r.Port()}}
		v6 := l.Addr().Is6()
		switch {
		case c.Proto == conn.TCP && !v6:
			p.tcp4 = append(p.tcp4, out, in)
		case c.Proto == conn.TCP:
			p.tcp6 = append(p.tcp6, out, in)
		case !v6:
			p.udp4 = append(p.udp4, out, in)
		default:
			p.udp6 = append(p.udp6, out, in)
		}
	}
}

// hasBoth reports whether both directions of c are still in p (neither
// was rejected).
func (p *plan) hasBoth(c conn.Conn) bool {
	l, r := c.Local, c.Remote
	out := tuple{l.Addr(), r.Addr(), l.Port(), r.Port()}
	in := tuple{r.Addr(), l.Addr(), r.Port(), l.Port()}
	var gotOut, gotIn bool
	for _, ds := range [][]dir{p.tcp4, p.tcp6} {
		for _, d := range ds {
			gotOut = gotOut || d.match == out
			gotIn = gotIn || d.match == in
		}
	}
	return gotOut && gotIn
}
