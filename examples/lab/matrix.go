package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/sealift/sealift/migration"
)

// CrashRow is one point of the crash matrix (-crash): a whole remote lab
// run whose controller was killed there.
type CrashRow struct {
	Point   string `json:"point"`
	Journal string `json:"journal"`
	// Outcome: what the recovering controller reported.
	Outcome       string   `json:"outcome"`
	VMRunningAt   []string `json:"vm_running_at"`
	VMActiveCount int      `json:"vm_active_count"`
	MaxRunning    int      `json:"max_running_at_once"`
	Leftovers     []string `json:"leftovers"`
	// PlaintextFramesOnWAN: frames with a guest's or peer's address in
	// clear, on every wan interface, over the whole run.
	PlaintextFramesOnWAN int      `json:"plaintext_frames_on_wan"`
	BlackoutMS           float64  `json:"blackout_ms"`
	BlackoutFromKillMS   float64  `json:"blackout_from_kill_ms"`
	TakeoverMS           float64  `json:"takeover_ms"`
	RecoveredMS          float64  `json:"recovered_ms"`
	LastLine             string   `json:"last_line"`
	Pass                 bool     `json:"pass"`
	Failed               []string `json:"failed,omitempty"`
	Error                string   `json:"error,omitempty"`
}

// CrashMatrix is -crash's report.
type CrashMatrix struct {
	Crash []CrashRow `json:"crash"`
	Pass  bool       `json:"pass"`
}

// parsePoints turns -crash's value (all, or names separated by commas)
// into points.
func parsePoints(s string) ([]crashPoint, error) {
	if s == "all" {
		return crashPoints, nil
	}
	var out []crashPoint
	for _, n := range strings.Split(s, ",") {
		p, ok := findPoint(strings.TrimSpace(n))
		if !ok {
			return nil, fmt.Errorf("-crash %q: no point %q (want all, or some of %s)", s, n, strings.Join(pointNames(), ", "))
		}
		out = append(out, p)
	}
	return out, nil
}

// runMatrix runs the remote lab once per point, killing the controller
// there, and sums up the runs.
func runMatrix(ctx context.Context, base Options, points []crashPoint, log *slog.Logger) *CrashMatrix {
	m := &CrashMatrix{Crash: []CrashRow{}, Pass: true}
	for _, p := range points {
		o := base
		o.Remote, o.Kill, o.KillAt = true, "controller", p.name
		o.Subnet = p.subnet
		fmt.Printf("== crash point %s\n", p.name)
		res, err := runProgram(ctx, o, log)
		row := CrashRow{Point: p.name, Leftovers: []string{}}
		if res != nil {
			fmt.Print(res.Text())
			row.PlaintextFramesOnWAN = res.WAN.PlaintextByAddress
			if k := res.Kill; k != nil {
				row.Journal, row.Outcome, row.VMRunningAt, row.VMActiveCount = k.Journal, k.Outcome, k.VMRunningAt, k.VMActiveCount
				row.MaxRunning, row.BlackoutMS, row.TakeoverMS, row.LastLine = k.MaxRunning, k.BlackoutMS, k.TakeoverMS, k.LastLine
				row.RecoveredMS, row.BlackoutFromKillMS = k.RecoveredMS, k.BlackoutFromKillMS
				if k.Leftovers != nil {
					row.Leftovers = k.Leftovers
				}
			}
			row.Pass = res.Pass
			for _, v := range res.Verdicts {
				if !v.OK {
					row.Failed = append(row.Failed, v.Name+": "+v.Detail)
				}
			}
		}
		if err != nil {
			row.Pass, row.Error = false, err.Error()
		}
		m.Pass = m.Pass && row.Pass
		m.Crash = append(m.Crash, row)
		if ctx.Err() != nil {
			break
		}
	}
	return m
}

// Text is the matrix as a table.
func (m *CrashMatrix) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-16s %-7s %-12s %-16s %6s %9s %9s %10s %9s  %s\n", "point", "journal", "outcome", "VM at", "clear", "blackout", "takeover", "recovered", "leftovers", "verdicts")
	for _, r := range m.Crash {
		verdict := "pass"
		if !r.Pass {
			verdict = "FAIL " + strings.Join(r.Failed, "; ") + r.Error
		}
		fmt.Fprintf(&b, "%-16s %-7s %-12s %-16s %6d %7.0fms %7.0fms %8.0fms %9d  %s\n", r.Point, r.Journal, r.Outcome,
			strings.Join(r.VMRunningAt, ","), r.PlaintextFramesOnWAN, r.BlackoutMS, r.TakeoverMS, r.RecoveredMS, len(r.Leftovers), verdict)
	}
	return b.String()
}

// matrixMain is main for -crash: it returns the exit status.
func matrixMain(ctx context.Context, o Options, crash, jsonPath string, log *slog.Logger) int {
	points, err := parsePoints(crash)
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		return 2
	}
	if o.Fence == "" {
		o.Fence = migration.FenceAtSwitchover
	}
	m := runMatrix(ctx, o, points, log)
	fmt.Println()
	fmt.Print(m.Text())
	if jsonPath != "" {
		data, _ := json.MarshalIndent(m, "", "  ")
		if err := os.WriteFile(jsonPath, append(data, '\n'), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "lab:", err)
			return 1
		}
		fmt.Println("report written to", jsonPath)
	}
	if !m.Pass {
		fmt.Fprintln(os.Stderr, "lab: a crash point failed (see FAIL above)")
		return 1
	}
	return 0
}
