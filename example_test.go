package sealift_test

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// The whole flow on the in-memory fakes. With real backends only the
// Config changes: e.g. qemu.New(...), nft.New(...), wireguard.New(...),
// conntrack.New(...), netlinkroute.New(...).
func Example() {
	world := migrationtest.NewSetup() // "secure" (host a + routing core) and "cloud" (host b)
	world.Cloud.Auditor.SetConns(conn.Conn{Proto: conn.TCP,
		Local: netip.MustParseAddrPort("10.1.0.10:7777"), Remote: netip.MustParseAddrPort("10.2.0.20:40000")})

	m, err := migration.New(world.Config)
	if err != nil {
		panic(err)
	}
	rep, err := m.Run(context.Background(), migration.Plan{
		VM: "vm1", From: "secure", To: "cloud",
		Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")},
		Peers: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")},
	})
	if err != nil {
		panic(err)
	}
	fmt.Println(rep.Outcome, "- VM now at", world.Where("vm1"))
	var blocks []int
	for _, s := range rep.Steps {
		blocks = append(blocks, int(s.Block))
	}
	fmt.Println(blocks)
	fmt.Println("reset:", len(rep.Audit.Reset), "kept:", len(rep.Audit.Kept))
	// Output:
	// completed - VM now at [b]
	// [310 315 325 320 335 330 345 370 355 360 365 375 395]
	// reset: 1 kept: 0
}
