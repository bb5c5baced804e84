package conn

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

func c(proto Proto, local, remote, dev, ulp string) Conn {
	return Conn{Proto: proto, Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote), Device: dev, ULP: ulp}
}

func TestClassify(t *testing.T) {
	vmNet, peerNet := netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")
	ipsec := []IPsecCover{{Src: vmNet, Dst: peerNet}}
	wg := Policy{WireGuardDevices: []string{"wg0"}, WireGuardPeers: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("fd00::/64")}}
	for _, tc := range []struct {
		name string
		conn Conn
		p    Policy
		want Reason
	}{
		{"plain tcp", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "eth0", ""), Policy{}, ReasonUnsecured},
		{"plain udp", c(UDP, "10.1.0.10:40000", "10.2.0.20:53", "eth0", ""), Policy{}, ReasonUnsecured},
		{"ipsec forward", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "", ""), Policy{IPsec: ipsec}, ReasonIPsec},
		{"ipsec reverse selector", c(TCP, "10.2.0.20:8080", "10.1.0.10:40000", "", ""), Policy{IPsec: ipsec}, ReasonIPsec},
		{"ipsec other subnet", c(TCP, "10.1.0.10:40000", "10.3.0.20:8080", "", ""), Policy{IPsec: ipsec}, ReasonUnsecured},
		{"ipsec zero cover", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "", ""), Policy{IPsec: []IPsecCover{{}}}, ReasonUnsecured},
		{"ipsec before wireguard and port", c(TCP, "10.1.0.10:40000", "10.2.0.20:443", "wg0", "tls"),
			Policy{IPsec: ipsec, WireGuardDevices: []string{"wg0"}}, ReasonIPsec},
		{"wireguard device", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "wg0", ""), wg, ReasonWireGuard},
		{"other device", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "wg1", ""), wg, ReasonUnsecured},
		{"unknown device never matches", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "", ""),
			Policy{WireGuardDevices: []string{""}}, ReasonUnsecured},
		{"wireguard peer", c(UDP, "10.1.0.10:40000", "10.9.3.4:5353", "", ""), wg, ReasonWireGuard},
		{"wireguard peer v6", c(TCP, "[fd00::10]:40000", "[fd00::20]:80", "", ""), wg, ReasonWireGuard},
		{"wireguard peer is the remote end only", c(TCP, "10.9.3.4:40000", "10.2.0.20:8080", "", ""), wg, ReasonUnsecured},
		{"wireguard before ktls", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "wg0", "tls"), wg, ReasonWireGuard},
		{"ktls", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "eth0", "tls"), Policy{}, ReasonKTLS},
		{"ktls before port", c(TCP, "10.1.0.10:40000", "10.2.0.20:443", "eth0", "tls"), Policy{}, ReasonKTLS},
		{"other ulp", c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "eth0", "mptcp"), Policy{}, ReasonUnsecured},
		{"tls port remote", c(TCP, "10.1.0.10:40000", "10.2.0.20:443", "", ""), Policy{}, ReasonTLSPort},
		{"tls port local (VM serves)", c(TCP, "10.1.0.10:8443", "10.2.0.20:51000", "", ""), Policy{}, ReasonTLSPort},
		{"every default tls port", c(TCP, "10.1.0.10:40000", "10.2.0.20:8883", "", ""), Policy{}, ReasonTLSPort},
		{"tls port on udp (dtls/quic-like)", c(UDP, "10.1.0.10:40000", "10.2.0.20:853", "", ""), Policy{}, ReasonTLSPort},
		{"no default ports when empty", c(TCP, "10.1.0.10:40000", "10.2.0.20:443", "", ""), Policy{TLSPorts: []uint16{}}, ReasonUnsecured},
		{"custom port", c(TCP, "10.1.0.10:40000", "10.2.0.20:9443", "", ""), Policy{TLSPorts: []uint16{9443}}, ReasonTLSPort},
		{"custom list replaces defaults", c(TCP, "10.1.0.10:40000", "10.2.0.20:443", "", ""), Policy{TLSPorts: []uint16{9443}}, ReasonUnsecured},
		{"port 0 never secure", c(UDP, "10.1.0.10:0", "10.2.0.20:0", "", ""), Policy{TLSPorts: []uint16{0}}, ReasonUnsecured},
		{"highest port", c(TCP, "10.1.0.10:40000", "10.2.0.20:65535", "", ""), Policy{TLSPorts: []uint16{65535}}, ReasonTLSPort},
		{"neighbour port", c(TCP, "10.1.0.10:40000", "10.2.0.20:444", "", ""), Policy{}, ReasonUnsecured},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Classify([]Conn{tc.conn}, tc.p)
			all := append(slices.Clone(got.Keep), got.Reset...)
			if len(all) != 1 {
				t.Fatalf("Classify returned %d verdicts", len(all))
			}
			v := all[0]
			if v.Reason != tc.want || v.Secure != (tc.want != ReasonUnsecured) || v.Conn != tc.conn {
				t.Fatalf("verdict %+v, want reason %s", v, tc.want)
			}
			if v.Secure != (len(got.Keep) == 1) {
				t.Fatalf("secure verdict in the wrong list: %+v", got)
			}
		})
	}
}

// TestClassifySplitKeepsOrderAndIsPure: many conns keep their relative
// order in each list, the input is untouched, and a second call agrees.
func TestClassifySplitKeepsOrderAndIsPure(t *testing.T) {
	var in []Conn
	for i := range 100 {
		port := uint16(8000 + i)
		if i%3 == 0 {
			port = 443
		}
		in = append(in, Conn{Proto: TCP, Local: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.10"), uint16(40000+i)),
			Remote: netip.AddrPortFrom(netip.MustParseAddr("10.2.0.20"), port)})
	}
	orig := slices.Clone(in)
	p := Policy{}
	a, b := Classify(in, p), Classify(in, p)
	if !reflect.DeepEqual(a, b) {
		t.Fatal("Classify is not deterministic")
	}
	if !slices.Equal(in, orig) || p.TLSPorts != nil {
		t.Fatal("Classify changed its input")
	}
	if len(a.Keep) != 34 || len(a.Reset) != 66 {
		t.Fatalf("keep %d reset %d, want 34/66", len(a.Keep), len(a.Reset))
	}
	for _, l := range [][]Verdict{a.Keep, a.Reset} {
		for i := 1; i < len(l); i++ {
			if l[i-1].Conn.Local.Port() >= l[i].Conn.Local.Port() {
				t.Fatalf("order lost at %d", i)
			}
		}
	}
	if got := Classify(nil, p); got.Keep != nil || got.Reset != nil {
		t.Fatalf("Classify(nil) = %+v", got)
	}
}

func BenchmarkClassify(b *testing.B) {
	conns := make([]Conn, 100000)
	for i := range conns {
		conns[i] = Conn{Proto: TCP, Local: netip.AddrPortFrom(netip.MustParseAddr("10.1.0.10"), uint16(i)),
			Remote: netip.AddrPortFrom(netip.MustParseAddr("10.2.0.20"), uint16(400+i%100)), Device: "eth0"}
	}
	p := Policy{WireGuardDevices: []string{"wg0"}}
	for b.Loop() {
		Classify(conns, p)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(conns)), "ns/conn")
}
