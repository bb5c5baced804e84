package conntrack

import (
	"net/netip"
	"slices"

	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/conn"
)

// tcpStates are the names of the kernel's TCP_CONNTRACK_* states.
var tcpStates = [...]string{
	"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT",
	"CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2",
}

const (
	tcpTimeWait = 7
	tcpClose    = 8
)

func tcpState(s uint8) string {
	if int(s) < len(tcpStates) {
		return tcpStates[s]
	}
	return "UNKNOWN"
}

// udpState names a UDP entry the way conntrack(8) flags it.
func udpState(st ct.Status) string {
	switch {
	case st&ct.StatusAssured != 0:
		return "ASSURED"
	case st&ct.StatusSeenReply != 0:
		return "REPLIED"
	default:
		return "UNREPLIED"
	}
}

// selector is a Selector prepared for matching many flows.
type selector struct {
	addrs []netip.Prefix
}

func (s selector) has(a netip.Addr) bool {
	a = a.Unmap()
	return slices.ContainsFunc(s.addrs, func(p netip.Prefix) bool { return p.Contains(a) })
}

// live reports whether a flow can still carry data: TCP entries that
// never saw a reply (a SYN nobody answered: no connection) or in
// TIME_WAIT or CLOSE are left out, as are protocols other than TCP and UDP.
func live(f *ct.Flow) bool {
	switch f.TupleOrig.Proto.Protocol {
	case unix.IPPROTO_TCP:
		if f.Status&ct.StatusSeenReply == 0 {
			return false
		}
		if f.ProtoInfo.TCP == nil {
			return true
		}
		s := f.ProtoInfo.TCP.State
		return s != tcpTimeWait && s != tcpClose
	case unix.IPPROTO_UDP:
		return true
	}
	return false
}

// toConn maps a flow to a Conn seen from the VM's side: Local is the end
// in the selector. The second result is false if neither end is selected.
func toConn(f *ct.Flow, sel selector) (conn.Conn, bool) {
	o, r := f.TupleOrig, f.TupleReply
	c := conn.Conn{Mark: f.Mark, ID: uint64(f.ID)}
	switch o.Proto.Protocol {
	case unix.IPPROTO_TCP:
		c.Proto = conn.TCP
		if f.ProtoInfo.TCP != nil {
			c.State = tcpState(f.ProtoInfo.TCP.State)
		}
	case unix.IPPROTO_UDP:
		c.Proto = conn.UDP
		c.State = udpState(f.Status)
	default:
		return conn.Conn{}, false
	}
	ap := func(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a.Unmap(), p) }
	switch {
	case sel.has(o.IP.SourceAddress): // the VM originated the flow
		c.Local, c.Remote = ap(o.IP.SourceAddress, o.Proto.SourcePort), ap(o.IP.DestinationAddress, o.Proto.DestinationPort)
	case sel.has(o.IP.DestinationAddress): // the VM accepted it
		c.Local, c.Remote = ap(o.IP.DestinationAddress, o.Proto.DestinationPort), ap(o.IP.SourceAddress, o.Proto.SourcePort)
	case r.IP.SourceAddress.IsValid() && sel.has(r.IP.SourceAddress): // DNAT to the VM
		c.Local, c.Remote = ap(r.IP.SourceAddress, r.Proto.SourcePort), ap(r.IP.DestinationAddress, r.Proto.DestinationPort)
	case r.IP.DestinationAddress.IsValid() && sel.has(r.IP.DestinationAddress):
		c.Local, c.Remote = ap(r.IP.DestinationAddress, r.Proto.DestinationPort), ap(r.IP.SourceAddress, r.Proto.SourcePort)
	default:
		return conn.Conn{}, false
	}
	return c, true
}
