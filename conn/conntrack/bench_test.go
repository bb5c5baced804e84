package conntrack_test

import (
	"net/netip"
	"testing"

	"github.com/mdlayher/netlink"
	ct "github.com/ti-mo/conntrack"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// benchHost is a namespace with a route to the remote addresses (through
// a veth) so devices resolve and tickles leave the host.
func benchHost(b *testing.B) string {
	b.Helper()
	lab.RequireRoot(b)
	ns := lab.NewPrefix() + "-ct"
	if err := lab.AddNS(ns); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = lab.Exec("", "ip", "netns", "del", ns) })
	for _, args := range [][]string{
		{"link", "add", "wg0", "type", "veth", "peer", "name", "wgp"},
		{"link", "set", "wg0", "up"}, {"link", "set", "wgp", "up"},
		{"addr", "add", "10.254.0.1/16", "dev", "wg0"},
		{"neigh", "add", "10.254.0.2", "lladdr", "02:00:00:00:00:01", "dev", "wg0", "nud", "permanent"},
		{"route", "add", "10.0.0.0/8", "via", "10.254.0.2", "dev", "wg0"},
	} {
		if out, err := lab.Exec(ns, "ip", args...); err != nil {
			b.Fatalf("%v: %s", err, out)
		}
	}
	return ns
}

// inject creates n established TCP entries from 4 VM addresses 10.1.0.x
// to 251 remotes 10.2.0.y, half of them to port 443, with conntrack Create
// (no sockets). Entry k (from base) has a unique 4-tuple.
func inject(b *testing.B, ns string, n, base int) {
	b.Helper()
	h, err := nsutil.Open(ns)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	c, err := ct.Dial(&netlink.Config{NetNS: int(h)})
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for i := base; i < base+n; i++ {
		src := netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + i%4)})
		dst := netip.AddrFrom4([4]byte{10, 2, 0, byte(1 + i/4%251)})
		sport := uint16(1024 + i/1004)
		dport := uint16(8080)
		if i%8 < 4 {
			dport = 443
		}
		f := ct.NewFlow(unix.IPPROTO_TCP, ct.StatusAssured|ct.StatusSeenReply|ct.StatusConfirmed, src, dst,
			sport, dport, 600, 0)
		f.ProtoInfo.TCP = &ct.ProtoInfoTCP{State: 3}
		if err := c.Create(f); err != nil {
			b.Fatalf("create entry %d: %v", i, err)
		}
	}
}

var benchSel = conn.Selector{Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/16")}}

// BenchmarkListClassify100000 lists and classifies 100,000 conntrack
// entries (one dump, one FIB lookup per remote address).
func BenchmarkListClassify100000(b *testing.B) {
	const n = 100000
	ns := benchHost(b)
	inject(b, ns, n, 0)
	a := conntrack.New(conntrack.WithHost(ns))
	pol := conn.Policy{WireGuardDevices: []string{"wg1"}}
	b.ResetTimer()
	for b.Loop() {
		conns, err := a.List(b.Context(), benchSel)
		if err != nil {
			b.Fatal(err)
		}
		cl := conn.Classify(conns, pol)
		if len(conns) != n || len(cl.Keep) != n/2 {
			b.Fatalf("listed %d, kept %d", len(conns), len(cl.Keep))
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/flow")
}

// BenchmarkReset10000 resets 10,000 injected flows: one nftables batch of
// 20,000 set elements, 20,000 tickles (no endpoint answers: the wait is
// cut to zero), one pipelined delete of the entries, table removal.
func BenchmarkReset10000(b *testing.B) {
	const n = 10000
	ns := benchHost(b)
	a := conntrack.New(conntrack.WithHost(ns), conntrack.WithResetTimeout(0))
	base := 0
	for b.Loop() {
		b.StopTimer()
		inject(b, ns, n, base)
		base += n
		conns, err := a.List(b.Context(), benchSel)
		if err != nil || len(conns) != n {
			b.Fatalf("listed %d: %v", len(conns), err)
		}
		b.StartTimer()
		res, err := a.Reset(b.Context(), benchSel, conns)
		if err != nil || res.Reset != n {
			b.Fatalf("Reset = %+v, %v", res, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/flow")
}
