package gobgp

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/sealift/sealift/routing"
)

// benchPrefix returns the i-th /24 under 10.128.0.0/9.
func benchPrefix(i int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(128 + (i/256)%128), byte(i % 256), 0}), 24)
}

// BenchmarkWaitFiresAfterPathAppears measures the time from a path's
// arrival in the speaker's RIB (AddPath) to Wait returning; metric
// fire-ns/op.
func BenchmarkWaitFiresAfterPathAppears(b *testing.B) {
	ctx := context.Background()
	w := localSpeaker(ctx, b)
	var total time.Duration
	for i := 0; i < b.N; i++ {
		p := benchPrefix(i)
		res := startWait(ctx, b, w, routing.Expect{Prefix: p, Via: siteVia})
		t0 := time.Now()
		if err := w.Announce(ctx, p, siteVia); err != nil {
			b.Fatal(err)
		}
		r := <-res
		total += time.Since(t0)
		if r.err != nil {
			b.Fatal(r.err)
		}
		if err := w.Withdraw(ctx, p, siteVia); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "fire-ns/op")
}

// BenchmarkSessionConvergence measures, in the lab, the time from B's
// speaker announcing a prefix to the core's Wait returning (one eBGP hop
// across the site link); metric converge-ns/op.
func BenchmarkSessionConvergence(b *testing.B) {
	l, _ := movedSubnetLab(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	core, target := pairSpeakers(ctx, b, l)
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		p := benchPrefix(i)
		res := startWait(ctx, b, core, routing.Expect{Prefix: p, Via: bSite})
		t0 := time.Now()
		if err := target.Announce(ctx, p, bSite); err != nil {
			b.Fatal(err)
		}
		r := <-res
		total += time.Since(t0)
		if r.err != nil {
			b.Fatal(r.err)
		}
		if err := target.Withdraw(ctx, p, bSite); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(total.Nanoseconds())/float64(b.N), "converge-ns/op")
}
