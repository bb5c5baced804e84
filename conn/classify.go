package conn

import (
	"net/netip"
	"slices"
)

// Reason says why a connection was judged secure or not.
type Reason string

const (
	ReasonIPsec     Reason = "ipsec"     // covered by an IPsec policy with an ESP template
	ReasonWireGuard Reason = "wireguard" // carried by the WireGuard link
	ReasonTLSPort   Reason = "tls-port"  // to or from an always-TLS port
	ReasonKTLS      Reason = "ktls"      // the socket uses kernel TLS
	ReasonUnsecured Reason = "unsecured"
)

// DefaultTLSPorts are ports whose protocols are TLS from the first byte.
var DefaultTLSPorts = []uint16{
	443,  // https
	465,  // smtps
	636,  // ldaps
	853,  // dns over tls
	989,  // ftps-data
	990,  // ftps
	992,  // telnets
	993,  // imaps
	995,  // pop3s
	2376, // docker tls
	5061, // sips
	5671, // amqps
	6443, // kubernetes api
	8443, // https-alt
	8883, // mqtts
}

// IPsecCover is one IPsec policy with an ESP template: traffic between
// Src and Dst (either direction) is encrypted.
type IPsecCover struct {
	Src, Dst netip.Prefix
}

// Policy configures Classify.
type Policy struct {
	// TLSPorts; nil means DefaultTLSPorts, an empty non-nil slice none.
	TLSPorts []uint16
	// IPsec lists the ESP-protected selectors.
	IPsec []IPsecCover
	// WireGuardDevices are WireGuard interfaces; a flow on one is secure.
	WireGuardDevices []string
	// WireGuardPeers are the allowed IPs routed through the WireGuard
	// link: a flow whose remote end is in one is secure.
	WireGuardPeers []netip.Prefix
}

// Verdict is the classification of one connection.
type Verdict struct {
	Conn   Conn
	Secure bool
	Reason Reason
}

// Classification splits connections into those to keep and those to reset.
type Classification struct {
	Keep  []Verdict
	Reset []Verdict
}

// Classify judges every connection with p. It is pure: the same inputs
// always give the same output. The order of checks is IPsec, WireGuard,
// kernel TLS, TLS port; the first that matches gives the reason.
func Classify(conns []Conn, p Policy) Classification {
	ports := p.TLSPorts
	if ports == nil {
		ports = DefaultTLSPorts
	}
	var tls [65536 / 64]uint64
	for _, port := range ports {
		tls[port/64] |= 1 << (port % 64)
	}
	var out Classification
	for _, c := range conns {
		v := Verdict{Conn: c, Reason: judge(c, &p, &tls)}
		v.Secure = v.Reason != ReasonUnsecured
		if v.Secure {
			out.Keep = append(out.Keep, v)
		} else {
			out.Reset = append(out.Reset, v)
		}
	}
	return out
}

func judge(c Conn, p *Policy, tls *[1024]uint64) Reason {
	l, r := c.Local.Addr(), c.Remote.Addr()
	for _, s := range p.IPsec {
		if s.Src.Contains(l) && s.Dst.Contains(r) || s.Src.Contains(r) && s.Dst.Contains(l) {
			return ReasonIPsec
		}
	}
	if c.Device != "" && slices.Contains(p.WireGuardDevices, c.Device) {
		return ReasonWireGuard
	}
	for _, pr := range p.WireGuardPeers {
		if pr.Contains(r) {
			return ReasonWireGuard
		}
	}
	if c.ULP == "tls" {
		return ReasonKTLS
	}
	for _, port := range []uint16{c.Local.Port(), c.Remote.Port()} {
		if port != 0 && tls[port/64]&(1<<(port%64)) != 0 {
			return ReasonTLSPort
		}
	}
	return ReasonUnsecured
}
