// Command labstats summarises lab reports (the JSON that `lab -json`
// writes) over several runs: median and range of each figure, and how
// many runs passed every verdict. BENCHMARKS.md's lab table comes from
// it:
//
//	scripts/lab-bench.sh 5 -subnet     # runs the lab 5 times, then labstats
//	go run ./examples/labstats out/lab-*.json
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
)

// figure is one number read from a report.
type figure struct {
	name string
	get  func(r map[string]any) (float64, bool)
}

// path reads a number at a dotted path; numeric parts index arrays.
func path(p string) func(map[string]any) (float64, bool) {
	return func(r map[string]any) (float64, bool) {
		var v any = r
		for _, k := range strings.Split(p, ".") {
			switch x := v.(type) {
			case map[string]any:
				v = x[k]
			case []any:
				var i int
				if _, err := fmt.Sscan(k, &i); err != nil || i >= len(x) {
					return 0, false
				}
				v = x[i]
			default:
				return 0, false
			}
		}
		f, ok := v.(float64)
		return f, ok
	}
}

var figures = []figure{
	{"blackout (ms, no reply arriving)", path("migrations.0.blackout.ms")},
	{"baseline (a) blackout, TLS stream (ms)", path("baselines.0.blackout.ms")},
	{"baseline (b) blackout, plain stream (ms)", path("baselines.1.blackout.ms")},
	{"ratio secure / baseline (a)", path("blackout_ratio")},
	{"traffic after resume (ms)", path("migrations.0.traffic_after_resume_ms")},
	{"-ipv6: blackout over IPv6 (ms)", path("migrations.0.blackout_v6.ms")},
	{"-ipv6: traffic after resume over IPv6 (ms)", path("migrations.0.traffic_after_resume_v6_ms")},
	{"baseline (a) traffic after resume (ms)", path("baselines.0.traffic_after_resume_ms")},
	{"pings lost (no reply at all; both peers, every 5 ms)", path("migrations.0.blackout.lost")},
	{"baseline (a) pings lost (one peer)", path("baselines.0.blackout.lost")},
	{"packets held at A and released through the link", path("migrations.0.released_packets")},
	{"late replies (RTT > 20 ms)", path("migrations.0.blackout.late_replies")},
	{"max RTT (ms)", path("migrations.0.blackout.max_rtt_ms")},
	{"QEMU downtime (ms)", path("migrations.0.migration.downtime_ms")},
	{"switchover hook (ms)", path("migrations.0.migration.switchover_hook_ms")},
	{"paused -> first packet out of the link at B (ms)", path("migrations.0.timeline.first_from_link_ms")},
	{"paused -> first packet into the guest's tap at B (ms)", path("migrations.0.timeline.first_to_guest_ms")},
	{"paused -> the controller's Migrate returned (ms)", path("migrations.0.timeline.migrate_returned_ms")},
	{"paused -> target loaded (its MIGRATION completed) (ms)", path("migrations.0.timeline.target_loaded_ms")},
	{"paused -> target resumed (ms)", path("migrations.0.timeline.target_resumed_ms")},
	{"paused -> guest's first packet at B (ms)", path("migrations.0.timeline.first_guest_packet_ms")},
	{"paused -> first reply at peer2 (ms)", path("migrations.0.timeline.first_reply_ms.peer2")},
	{"migration total (ms)", path("migrations.0.migration.total_ms")},
	{"last migration blackout (ms)", func(r map[string]any) (float64, bool) {
		m, _ := r["migrations"].([]any)
		if len(m) < 2 {
			return 0, false
		}
		return path(fmt.Sprintf("migrations.%d.blackout.ms", len(m)-1))(r)
	}},
	{"remote: agent round trip from the controller, host-a (ms)", path("controller.agent_rtt_ms.host-a")},
	{"remote: agent round trip from the controller, host-b (ms)", path("controller.agent_rtt_ms.host-b")},
	{"batch: ratio members' time at once / one guest alone (goal <= 2)", path("batch.time_ratio")},
	{"batch: ratio worst blackout at once / median alone (goal <= 1.5)", path("batch.blackout_ratio")},
	{"batch at once: members done (ms)", path("batch.concurrent.members_ms")},
	{"batch at once: worst guest's blackout (ms)", path("batch.concurrent.max_blackout_ms")},
	{"batch at once: median guest's blackout (ms)", path("batch.concurrent.median_blackout_ms")},
	{"batch one by one: median member's own time (ms)", path("batch.one_by_one.median_member_ms")},
	{"batch one by one: members done (ms)", path("batch.one_by_one.members_ms")},
	{"batch one by one: median guest's blackout (ms)", path("batch.one_by_one.median_blackout_ms")},
	{"batch one by one: worst guest's blackout (ms)", path("batch.one_by_one.max_blackout_ms")},
	{"wan frames", path("wan.frames")},
	{"wan plaintext by address", path("wan.plaintext_by_address")},
	{"wan plaintext by address, IPv6 (-ipv6)", path("wan.plaintext_by_address_v6")},
	{"wan plaintext by marker", path("wan.plaintext_by_marker")},
	{"wan unknown frames", path("wan.unknown")},
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: labstats REPORT.json...")
		os.Exit(2)
	}
	var reports []map[string]any
	passed := 0
	var failures []string
	for _, f := range os.Args[1:] {
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "labstats:", err)
			os.Exit(1)
		}
		var r map[string]any
		if err := json.Unmarshal(b, &r); err != nil {
			fmt.Fprintf(os.Stderr, "labstats: %s: %v\n", f, err)
			os.Exit(1)
		}
		reports = append(reports, r)
		if r["pass"] == true {
			passed++
			continue
		}
		var why []string
		for _, v := range r["verdicts"].([]any) {
			if v := v.(map[string]any); v["ok"] != true {
				why = append(why, fmt.Sprint(v["name"]))
			}
		}
		failures = append(failures, fmt.Sprintf("%s: %s", f, strings.Join(why, ", ")))
	}
	fmt.Printf("%d runs of %q, %d passed every verdict\n", len(reports), reports[0]["scenario"], passed)
	for _, f := range failures {
		fmt.Println("  failed:", f)
	}
	fmt.Println("\n| figure (runs that passed) | median | range | n |\n|---|---|---|---|")
	for _, fig := range figures {
		var vs []float64
		for _, r := range reports {
			if r["pass"] != true {
				continue
			}
			if v, ok := fig.get(r); ok {
				vs = append(vs, v)
			}
		}
		if len(vs) == 0 {
			continue
		}
		slices.Sort(vs)
		fmt.Printf("| %s | %s | %s–%s | %d |\n", fig.name, num(median(vs)), num(vs[0]), num(vs[len(vs)-1]), len(vs))
	}
}

func median(v []float64) float64 {
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func num(v float64) string {
	if v == float64(int64(v)) {
		return fmt.Sprint(int64(v))
	}
	return fmt.Sprintf("%.2f", v)
}
