package sockdiag

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/conn"
)

// nla appends a netlink attribute.
func nla(b []byte, typ uint16, v []byte) []byte {
	var h [4]byte
	binary.NativeEndian.PutUint16(h[0:], uint16(4+len(v)))
	binary.NativeEndian.PutUint16(h[2:], typ)
	b = append(append(b, h[:]...), v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// TestParseULP decodes an inet_diag_msg as the kernel lays it out for a
// kernel-TLS IPv6 (v4-mapped) socket with a mark, which this machine's
// kernel (no CONFIG_TLS) cannot produce, and classifies it.
func TestParseULP(t *testing.T) {
	msg := make([]byte, msgLen)
	msg[0], msg[1] = unix.AF_INET6, tcpEstablished
	id := msg[4:]
	binary.BigEndian.PutUint16(id[0:], 40000)
	binary.BigEndian.PutUint16(id[2:], 8080)
	src := netip.MustParseAddr("::ffff:10.1.0.10").As16()
	dst := netip.MustParseAddr("2001:db8::20").As16()
	copy(id[4:], src[:])
	copy(id[20:], dst[:])
	binary.NativeEndian.PutUint32(id[36:], 0)
	binary.NativeEndian.PutUint32(id[40:], 0x89abcdef)
	binary.NativeEndian.PutUint32(id[44:], 0x01234567)
	msg = nla(msg, inetDiagInfo, make([]byte, 232)) // tcp_info, skipped
	msg = nla(msg, inetDiagMark, binary.NativeEndian.AppendUint32(nil, 0x42))
	ulp := nla(nil, ulpInfoName, []byte("tls\x00"))
	ulp = nla(ulp, 2, []byte{0, 0, 0, 0}) // INET_DIAG_ULP_INFO_TLS (nested), skipped
	msg = nla(msg, inetDiagULPInfo|unix.NLA_F_NESTED, ulp)

	s, ok := parse(msg, unix.IPPROTO_TCP)
	if !ok {
		t.Fatal("parse failed")
	}
	want := sock{family: unix.AF_INET6, proto: unix.IPPROTO_TCP, state: tcpEstablished,
		local: netip.MustParseAddrPort("10.1.0.10:40000"), remote: netip.MustParseAddrPort("[2001:db8::20]:8080"),
		cookie: 0x0123456789abcdef, mark: 0x42, ulp: "tls"}
	copy(want.id[:], msg[4:4+idLen])
	if s != want {
		t.Fatalf("parse = %+v\nwant    %+v", s, want)
	}
	c := toConn(&s, &devices{names: map[int]string{}, cache: map[devKey]string{{s.local.Addr(), s.remote.Addr(), s.mark}: "eth0"}})
	cl := conn.Classify([]conn.Conn{c}, conn.Policy{})
	if len(cl.Keep) != 1 || cl.Keep[0].Reason != conn.ReasonKTLS {
		t.Fatalf("Classify(%+v) = %+v, want kept for ktls", c, cl)
	}
	// Truncated input is rejected, a truncated attribute ignored.
	if _, ok := parse(msg[:msgLen-1], unix.IPPROTO_TCP); ok {
		t.Error("parse accepted a short message")
	}
	if s, ok := parse(append(msg[:msgLen:msgLen], 0xff, 0x00, 0x13, 0x00), unix.IPPROTO_TCP); !ok || s.ulp != "" {
		t.Errorf("bad attribute: %+v %v", s, ok)
	}
}

// TestRequest checks the inet_diag_req_v2 layout SOCK_DESTROY sends.
func TestRequest(t *testing.T) {
	var id [idLen]byte
	for i := range id {
		id[i] = byte(i)
	}
	b := request(unix.AF_INET, unix.IPPROTO_UDP, 2, 0xffffffff, &id)
	if len(b) != reqLen || b[0] != unix.AF_INET || b[1] != unix.IPPROTO_UDP || b[2] != 2 ||
		binary.NativeEndian.Uint32(b[4:]) != 0xffffffff || [idLen]byte(b[8:]) != id {
		t.Fatalf("request = %x", b)
	}
}
