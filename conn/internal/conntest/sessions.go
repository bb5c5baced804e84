package conntest

import (
	"crypto/tls"
	"net"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/internal/lab"
)

// Sessions are the VM's sessions of the claim-10 scenario, each to an
// echo server in peer2 and each echoed once: Plain is plaintext TCP to
// 10.2.0.20:8080, TLS is TLS to 10.2.0.20:443, Secure is plaintext TCP to
// 10.2.1.20:9000 (the world routes 10.2.1.0/24 over its secure link) and
// UDP is connected UDP to 10.2.0.20:5353.
type Sessions struct {
	// PlainSrv is the server end of Plain.
	PlainSrv *Server
	Plain    net.Conn
	TLS      net.Conn
	Secure   net.Conn
	UDP      net.Conn
}

// StartSessions starts peer2's servers and the VM's sessions of l; all
// are closed in t's cleanup.
func StartSessions(t testing.TB, l *lab.Lab) *Sessions {
	t.Helper()
	srvTLS, cliTLS := SelfSigned(t, "10.2.0.20")
	s := &Sessions{PlainSrv: ListenIn(t, l.Peer2, "tcp4", "10.2.0.20:8080", nil)}
	ListenIn(t, l.Peer2, "tcp4", "10.2.0.20:443", srvTLS)
	ListenIn(t, l.Peer2, "tcp4", "10.2.1.20:9000", nil)
	udpStop, err := lab.ServeUDPEcho(l.Peer2, "10.2.0.20:5353")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(udpStop)

	s.Plain = DialIn(t, l.VM, "tcp4", "10.2.0.20:8080")
	s.TLS = tls.Client(DialIn(t, l.VM, "tcp4", "10.2.0.20:443"), cliTLS)
	s.Secure = DialIn(t, l.VM, "tcp4", "10.2.1.20:9000")
	s.UDP = DialIn(t, l.VM, "udp4", "10.2.0.20:5353")
	for name, c := range map[string]net.Conn{"plain": s.Plain, "tls": s.TLS, "secure": s.Secure, "udp": s.UDP} {
		if err := Echo(c, "hello "+name); err != nil {
			t.Fatalf("%s echo: %v", name, err)
		}
	}
	return s
}

// CheckReasons fails t unless cl judged the sessions as claim 10 wants:
// TLS kept for its port, Secure kept for the WireGuard link, Plain and
// UDP reset as unsecured.
func CheckReasons(t testing.TB, cl conn.Classification) {
	t.Helper()
	reasons := map[string]conn.Reason{}
	for _, v := range append(cl.Keep, cl.Reset...) {
		reasons[v.Conn.Remote.String()] = v.Reason
	}
	if reasons["10.2.0.20:443"] != conn.ReasonTLSPort || reasons["10.2.1.20:9000"] != conn.ReasonWireGuard ||
		reasons["10.2.0.20:8080"] != conn.ReasonUnsecured || reasons["10.2.0.20:5353"] != conn.ReasonUnsecured {
		t.Fatalf("classification: %v", reasons)
	}
}
