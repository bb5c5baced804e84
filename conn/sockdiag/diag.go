package sockdiag

import (
	"encoding/binary"
	"net/netip"

	"golang.org/x/sys/unix"
)

// sock_diag numbers (linux/sock_diag.h, linux/inet_diag.h).
const (
	sockDiagByFamily = 20
	sockDestroy      = 21

	inetDiagInfo    = 2
	inetDiagMark    = 15
	inetDiagULPInfo = 19
	ulpInfoName     = 1

	nlaTypeMask = 0x3fff // ^(NLA_F_NESTED | NLA_F_NET_BYTEORDER)

	reqLen = 56 // struct inet_diag_req_v2
	msgLen = 72 // struct inet_diag_msg
	idLen  = 48 // struct inet_diag_sockid
)

// TCP states (include/net/tcp_states.h) and the ones listed: those that
// can still carry data. LISTEN, TIME_WAIT and CLOSE are left out.
const (
	tcpEstablished = 1
	tcpStatesLive  = 1<<1 | 1<<2 | 1<<3 | 1<<4 | 1<<5 | 1<<8 | 1<<9 | 1<<11
	udpConnected   = 1 << tcpEstablished
)

var tcpStateNames = [...]string{"", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1", "FIN_WAIT2",
	"TIME_WAIT", "CLOSE", "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"}

func stateName(s uint8) string {
	if int(s) < len(tcpStateNames) {
		return tcpStateNames[s]
	}
	return "UNKNOWN"
}

// sock is one socket from a dump.
type sock struct {
	family, proto, state uint8
	id                   [idLen]byte // as the kernel sent it, for SOCK_DESTROY
	local, remote        netip.AddrPort
	ifindex              uint32
	cookie               uint64
	mark                 uint32
	ulp                  string
}

// request is an inet_diag_req_v2.
func request(family, proto uint8, ext uint8, states uint32, id *[idLen]byte) []byte {
	b := make([]byte, reqLen)
	b[0], b[1], b[2] = family, proto, ext
	binary.NativeEndian.PutUint32(b[4:], states)
	if id != nil {
		copy(b[8:], id[:])
	}
	return b
}

// parse decodes an inet_diag_msg and the attributes the auditor uses.
func parse(data []byte, proto uint8) (sock, bool) {
	if len(data) < msgLen {
		return sock{}, false
	}
	s := sock{family: data[0], state: data[1], proto: proto}
	copy(s.id[:], data[4:4+idLen])
	id := data[4 : 4+idLen]
	sport, dport := binary.BigEndian.Uint16(id[0:]), binary.BigEndian.Uint16(id[2:])
	var src, dst netip.Addr
	switch s.family {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(id[4:8]))
		dst = netip.AddrFrom4([4]byte(id[20:24]))
	case unix.AF_INET6:
		src = netip.AddrFrom16([16]byte(id[4:20])).Unmap()
		dst = netip.AddrFrom16([16]byte(id[20:36])).Unmap()
	default:
		return sock{}, false
	}
	s.local, s.remote = netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	s.ifindex = binary.NativeEndian.Uint32(id[36:])
	s.cookie = uint64(binary.NativeEndian.Uint32(id[40:])) | uint64(binary.NativeEndian.Uint32(id[44:]))<<32
	for a := data[msgLen:]; len(a) >= 4; {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		typ := binary.NativeEndian.Uint16(a[2:]) & nlaTypeMask
		if l < 4 || l > len(a) {
			break
		}
		v := a[4:l]
		switch typ {
		case inetDiagMark:
			if len(v) >= 4 {
				s.mark = binary.NativeEndian.Uint32(v)
			}
		case inetDiagULPInfo:
			s.ulp = ulpName(v)
		}
		a = a[min(len(a), (l+3)&^3):]
	}
	return s, true
}

// ulpName finds INET_DIAG_ULP_INFO_NAME in a nested ULP attribute.
func ulpName(a []byte) string {
	for len(a) >= 4 {
		l := int(binary.NativeEndian.Uint16(a[0:]))
		typ := binary.NativeEndian.Uint16(a[2:]) & nlaTypeMask
		if l < 4 || l > len(a) {
			return ""
		}
		if typ == ulpInfoName {
			v := a[4:l]
			for i, c := range v {
				if c == 0 {
					v = v[:i]
					break
				}
			}
			return string(v)
		}
		a = a[min(len(a), (l+3)&^3):]
	}
	return ""
}
