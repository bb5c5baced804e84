// Command quickstart runs one secure live migration on sealift's in-memory
// fakes and prints the report: the flow of FIG. 3 with no root, no
// kernel features and no QEMU.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

func main() {
	subnet := flag.Bool("subnet", false, "move the whole subnet (redirect tunnel, routing-core watch)")
	asJSON := flag.Bool("json", false, "print the report as JSON")
	verbose := flag.Bool("v", false, "log every step")
	flag.Parse()

	w := migrationtest.NewSetup()
	w.Cloud.Auditor.SetConns(
		conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:7777"), Remote: netip.MustParseAddrPort("10.2.0.20:40000"), State: "ESTABLISHED"},
		conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:443"), Remote: netip.MustParseAddrPort("10.2.0.20:40001"), State: "ESTABLISHED"},
	)
	if *verbose {
		w.Config.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	m, err := migration.New(w.Config)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	p := w.Plan()
	if *subnet {
		p = w.SubnetPlan()
	}
	rep, err := m.Run(context.Background(), p)
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(rep)
	} else if rep != nil {
		fmt.Printf("migration %s of %s: %s\n", rep.ID, rep.VM, rep.Outcome)
		for _, s := range rep.Steps {
			fmt.Printf("  block %d %-22s %8.3f ms %s\n", s.Block, s.Name, float64(s.Duration)/1e6, s.Err)
		}
		fmt.Printf("  link %s (%s), kept %d connection(s), reset %d\n", rep.Link.ID, rep.Link.Backend, len(rep.Audit.Kept), len(rep.Audit.Reset))
		fmt.Printf("  VM now active at host %v\n", w.Where("vm1"))
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
