package sockdiag_test

import (
	"net/netip"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/conn/sockdiag"
	"github.com/sealift/sealift/internal/lab"
)

// benchWorld is the lab with an echo helper in peer2 on 8080 and 443.
func benchWorld(b *testing.B) (*lab.Lab, conn.Selector) {
	b.Helper()
	lab.RequireRoot(b)
	l := lab.New(b)
	conntest.StartEchoHelper(b, l.Peer2, "10.2.0.20:8080", "10.2.0.20:443")
	return l, conn.Selector{Host: l.VM, Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}
}

// BenchmarkListClassify10000 lists and classifies 10,000 live sockets.
func BenchmarkListClassify10000(b *testing.B) {
	const n = 10000
	l, sel := benchWorld(b)
	conntest.DialMany(b, l.VM, "10.2.0.20:8080", n/2)
	conntest.DialMany(b, l.VM, "10.2.0.20:443", n/2)
	a := sockdiag.New()
	for b.Loop() {
		conns, err := a.List(b.Context(), sel)
		if err != nil {
			b.Fatal(err)
		}
		if cl := conn.Classify(conns, conn.Policy{}); len(cl.Reset) != n/2 {
			b.Fatalf("listed %d, reset %d", len(conns), len(cl.Reset))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/flow")
}

// BenchmarkReset10000 destroys 10,000 live TCP sockets (SOCK_DESTROY,
// pipelined); each iteration dials them anew with the timer stopped.
func BenchmarkReset10000(b *testing.B) {
	const n = 10000
	l, sel := benchWorld(b)
	a := sockdiag.New()
	for b.Loop() {
		b.StopTimer()
		cs := conntest.DialMany(b, l.VM, "10.2.0.20:8080", n)
		conns, err := a.List(b.Context(), sel)
		if err != nil || len(conns) != n {
			b.Fatalf("listed %d: %v", len(conns), err)
		}
		b.StartTimer()
		res, err := a.Reset(b.Context(), sel, conns)
		if err != nil || res.Reset != n {
			b.Fatalf("Reset = %+v, %v", res, err)
		}
		b.StopTimer()
		for _, c := range cs {
			c.Close()
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/flow")
}
