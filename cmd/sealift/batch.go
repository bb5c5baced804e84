package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// batchOf builds the batch of `sealift batch`'s flags; errors name the
// flag and its value.
func batchOf(f *flags) (migration.Batch, error) {
	b := migration.Batch{From: f.from, To: f.to, Parallel: f.parallel}
	if f.subnet == "" {
		return b, errors.New("-subnet is required (the members' subnet)")
	}
	sn, err := subnetFlags(f.subnet, "", f.via, f.converge)
	if err != nil {
		return b, err
	}
	b.Subnet = *sn
	peers, err := prefixes("-peer", f.peers)
	if err != nil {
		return b, err
	}
	if len(f.vms) == 0 {
		return b, errors.New("-vm NAME=PREFIXES is required (once per member)")
	}
	for _, v := range f.vms {
		name, addrs, ok := strings.Cut(v, "=")
		if !ok || name == "" {
			return b, fmt.Errorf("-vm %q: want NAME=PREFIXES", v)
		}
		p := migration.Plan{VM: name, Peers: peers, Link: tunnel.Kind(f.link), FenceMode: migration.FenceMode(f.fence), MaxDowntime: f.maxDowntime}
		if p.Addrs, err = prefixes("-vm "+name, addrs); err != nil {
			return b, err
		}
		b.Plans = append(b.Plans, p)
	}
	return b, nil
}

// runBatch is `sealift batch`: the members' reports, then the batch's;
// the exit code is the worst member's (0 when every member completed).
func runBatch(ctx context.Context, m *migration.Migrator, f *flags, stdout, stderr io.Writer, asJSON bool) int {
	b, err := batchOf(f)
	if err != nil {
		fmt.Fprintf(stderr, "sealift: %v\n", err)
		return exitUsage
	}
	if err := m.ValidateBatch(b); err != nil {
		fmt.Fprintf(stderr, "sealift: batch refused: %v\n", err)
		return exitRefused
	}
	events, unsub := m.Subscribe(256)
	done := make(chan struct{})
	go func() { // members run at once: a plain line per event, led by its run's ID
		defer close(done)
		for ev := range events {
			var line strings.Builder
			if printEvent(&line, ev); line.Len() > 0 {
				fmt.Fprintf(stderr, "%s: %s", ev.MigrationID(), line.String())
			}
		}
	}()
	rep, err := m.RunBatch(ctx, b)
	unsub()
	<-done
	if rep == nil {
		fmt.Fprintf(stderr, "sealift: %v\n", err)
		if errors.Is(err, migration.ErrInvalidPlan) || errors.Is(err, migration.ErrBusy) {
			return exitRefused
		}
		return exitError
	}
	if asJSON {
		out, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Fprintln(stdout, string(out))
	} else {
		for _, r := range rep.Reports {
			if r != nil {
				printReport(stdout, r, false)
			}
		}
		fmt.Fprintf(stdout, "batch %s: %s", rep.ID, rep.Outcome)
		if rep.Reason != "" {
			fmt.Fprintf(stdout, " (%s)", rep.Reason)
		}
		fmt.Fprintf(stdout, " in %v\n", rep.Duration.Round(1e6))
		for _, w := range rep.Warnings {
			fmt.Fprintf(stdout, "  warning: %s\n", w)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "sealift: %v\n", err)
	}
	code := outcomeCode(rep.Outcome)
	if rep.Outcome == migration.Partial {
		code = exitOK
	}
	for i, r := range rep.Reports {
		if r == nil {
			code = max(code, exitRolledBack) // never started: still at the source
			fmt.Fprintf(stderr, "sealift: member %d (%s) never started\n", i+1, b.Plans[i].VM)
			continue
		}
		code = max(code, outcomeCode(r.Outcome))
	}
	return code
}
