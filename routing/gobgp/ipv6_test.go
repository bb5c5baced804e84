package gobgp

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
)

// TestIPv6PathAcrossSession: B announces a moved IPv6 subnet to the core
// over their (IPv4) BGP session, as it announces the IPv4 one: the core's
// Wait for the real IPv6 route (next hop B's IPv6 site address, not the
// redirect tunnel) returns with it, through the site link's device. The
// sessions must negotiate IPv6 unicast beside IPv4 unicast (GoBGP gives
// a neighbour without configured families only its address's family).
// SyncFIB installs both into the core's kernel table.
func TestIPv6PathAcrossSession(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	if err := lab.Veth(l.Core, "s0", "100.64.0.1/30", l.B, "s0", "100.64.0.2/30"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []struct{ ns, addr string }{{l.Core, "fd00:ff::1/64"}, {l.B, "fd00:ff::2/64"}} {
		if err := lab.AddAddr(a.ns, "s0", a.addr); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	core, target := pairSpeakers(ctx, t, l)
	subnet6 := netip.MustParsePrefix("fd00:1::/64")
	bSite6 := netip.MustParseAddr("fd00:ff::2")
	stop, err := core.SyncFIB(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	// The v4 subnet alongside, as a dual-stack move announces both.
	if err := target.Announce(ctx, subnet, bSite); err != nil {
		t.Fatal(err)
	}
	if err := target.Announce(ctx, subnet6, bSite6); err != nil {
		t.Fatal(err)
	}
	for _, e := range []routing.Expect{
		{Prefix: subnet, Via: bSite, NotDevice: "rt0"},
		{Prefix: subnet6, Via: bSite6, NotDevice: "rt0"},
	} {
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := core.Wait(wctx, e)
		wcancel()
		if err != nil {
			t.Errorf("the core's Wait for %s via %s: %v", e.Prefix, e.Via, err)
			continue
		}
		if c.Route.Prefix != e.Prefix || c.Route.Via != e.Via || c.Route.Device != "s0" {
			t.Errorf("the core's route to %s: %+v, want via %s dev s0", e.Prefix, c.Route, e.Via)
		}
		// SyncFIB puts the best path into the core's kernel table.
		kctx, kcancel := context.WithTimeout(ctx, 10*time.Second)
		k, err := netlinkroute.New(netlinkroute.WithHost(l.Core)).Wait(kctx, routing.Expect{Prefix: e.Prefix, Via: e.Via, Device: "s0"})
		kcancel()
		if err != nil || k.Route.Protocol != "bgp" {
			t.Errorf("the core's kernel route to %s: %+v, %v; want one by SyncFIB (proto bgp)", e.Prefix, k.Route, err)
		}
	}
}
