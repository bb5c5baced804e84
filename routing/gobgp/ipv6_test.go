package gobgp

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
)

// TestIPv6OverIPv4Session: B announces the subnet's IPv6 prefix with an
// IPv6 next hop over the IPv4 BGP session; the core's speaker sees it
// (a dual-stack subnet's two prefixes move over one session), as it sees
// the IPv4 one.
func TestIPv6OverIPv4Session(t *testing.T) {
	l, _ := movedSubnetLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	core, target := pairSpeakers(ctx, t, l)
	via6 := netip.MustParseAddr("fd00:64::2")
	if err := target.Announce(ctx, lab.VMSubnet6, via6); err != nil {
		t.Fatal(err)
	}
	if err := target.Announce(ctx, lab.VMSubnet, bSite); err != nil {
		t.Fatal(err)
	}
	for _, e := range []routing.Expect{{Prefix: lab.VMSubnet6, Via: via6}, {Prefix: lab.VMSubnet, Via: bSite}} {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := core.Wait(wctx, e)
		wcancel()
		if err != nil {
			t.Fatalf("the core never learnt %s via %s: %v", e.Prefix, e.Via, err)
		}
		if c.Route.Prefix != e.Prefix || c.Route.Via != e.Via {
			t.Fatalf("converged on %+v, want %s via %s", c.Route, e.Prefix, e.Via)
		}
	}
}
