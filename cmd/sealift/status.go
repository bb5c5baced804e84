package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sealift/sealift/migration"
)

// MigrationStatus is one line of `sealift status`.
type MigrationStatus struct {
	ID string `json:"id"`
	// VM: the VM moved; for a batch's own record, its members' VMs
	// (comma-separated).
	VM string `json:"vm"`
	// Batch: the batch a member belongs to, or a batch record's own ID.
	Batch string `json:"batch,omitempty"`
	From  string `json:"from"`
	To    string `json:"to"`
	// State: the outcome, or, unfinished: "running" (a shared journal:
	// its owner's lease lives), "orphaned" (a shared journal: its owner
	// is gone; a standby claims it) or "unfinished" (a journal of one
	// controller: running now, or left for recover).
	State    string    `json:"state"`
	Reason   string    `json:"reason,omitempty"`
	Owner    string    `json:"owner,omitempty"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished,omitzero"`
	// Last is the last journal entry of an unfinished migration (block,
	// phase).
	Last string `json:"last,omitempty"`
}

// ownerAliver is a shared journal that tells whether a migration's owner
// lives (etcdjournal, migrationtest.SharedStore).
type ownerAliver interface {
	OwnerAlive(ctx context.Context, id string) (bool, error)
}

// status lists the journal's migrations, oldest first.
func status(ctx context.Context, j migration.Journal) ([]MigrationStatus, error) {
	l, ok := j.(migration.Lister)
	if !ok {
		return nil, fmt.Errorf("the journal (%T) cannot list its records", j)
	}
	recs, err := l.List(ctx)
	if err != nil {
		return nil, err
	}
	out := []MigrationStatus{}
	for _, r := range recs {
		st := MigrationStatus{ID: r.ID, VM: r.Plan.VM, Batch: r.Plan.Batch, From: r.Plan.From, To: r.Plan.To, State: "unfinished",
			Reason: r.Reason, Owner: r.Owner, Started: r.Started, Finished: r.Finished}
		if r.Plan.Batch == r.ID && r.Plan.Subnet != nil {
			st.VM = strings.Join(r.Plan.Subnet.Members, ",")
		}
		if r.Done() {
			st.State = string(r.Outcome)
			out = append(out, st)
			continue
		}
		if oa, ok := j.(ownerAliver); ok {
			alive, err := oa.OwnerAlive(ctx, r.ID)
			if err != nil {
				return nil, err
			}
			st.State = map[bool]string{true: "running", false: "orphaned"}[alive]
		}
		if _, es, err := j.Load(ctx, r.ID); err == nil && len(es) > 0 {
			e := es[len(es)-1]
			st.Last = fmt.Sprintf("%d %s %s", int(e.Block), e.Block, e.Phase)
		}
		out = append(out, st)
	}
	return out, nil
}

func printStatus(w io.Writer, sts []MigrationStatus, asJSON bool) {
	if asJSON {
		b, _ := json.MarshalIndent(sts, "", "  ")
		fmt.Fprintln(w, string(b))
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID\tVM\tFROM -> TO\tSTARTED\tSTATE\tOWNER\tLAST STEP / REASON\n")
	for _, s := range sts {
		detail := s.Last
		if s.Reason != "" {
			detail = s.Reason
		}
		fmt.Fprintf(tw, "%s\t%s\t%s -> %s\t%s\t%s\t%s\t%s\n", s.ID, s.VM, s.From, s.To,
			s.Started.Local().Format(time.DateTime), s.State, s.Owner, detail)
	}
	tw.Flush()
}
