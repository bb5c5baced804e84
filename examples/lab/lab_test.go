package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// TestLab runs the end-to-end lab (real QEMU guests, nftables fences,
// WireGuard, conntrack, BGP) and checks what its JSON report says, as a
// user of the report would. No retry: a guest that panics fails the
// scenario, with its console in the output. (Before-copy mode is the
// Migrator's tests' and `make lab LABFLAGS="-fence before-copy"`'s.)
func TestLab(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt: qemu-system-x86)")
	}
	for _, sc := range []struct {
		name   string
		subnet bool
		fence  migration.FenceMode
		remote bool
		ipv6   bool
	}{
		{"vm", false, migration.FenceAtSwitchover, false, false},
		{"subnet", true, migration.FenceAtSwitchover, false, false},
		// An agent process per host, `sealift migrate` in its own namespace.
		{"remote", false, migration.FenceAtSwitchover, true, false},
		{"remote-subnet", true, migration.FenceAtSwitchover, true, false},
		// Dual-stack guests, peers and hosts: judged by IPv4 and IPv6.
		{"vm-ipv6", false, migration.FenceAtSwitchover, false, true},
		// The subnet's IPv4 and IPv6 prefixes redirected, converged (GoBGP
		// with both families) and removed.
		{"subnet-ipv6", true, migration.FenceAtSwitchover, false, true},
		{"remote-ipv6", false, migration.FenceAtSwitchover, true, true},
	} {
		t.Run(sc.name, func(t *testing.T) {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			o := Options{Hypervisor: "qemu", Link: tunnel.WireGuard, Fence: sc.fence, Subnet: sc.subnet, Remote: sc.remote, IPv6: sc.ipv6}
			res, err := Run(t.Context(), t, o, log)
			require.NotNil(t, res, "no report: %v", err)
			t.Log("\n" + res.Text())
			if !res.Pass {
				keys := make([]string, 0, len(res.Diagnostics))
				for k := range res.Diagnostics {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				for _, k := range keys {
					t.Logf("%s:\n%s", k, res.Diagnostics[k])
				}
			}
			assert.NoError(t, err)
			data, err := json.Marshal(res)
			require.NoError(t, err)
			var got map[string]any
			require.NoError(t, json.Unmarshal(data, &got))
			checkReport(t, got, sc.subnet)
			if sc.ipv6 {
				checkIPv6(t, got, sc.subnet)
			} else {
				assert.Nil(t, got["ipv6"], "an IPv4-only run reports no IPv6")
			}
			assert.Equal(t, sc.remote, got["remote"])
			if sc.remote {
				c := got["controller"].(map[string]any)
				assert.Equal(t, true, c["holds_nothing"], "the controller's namespace: %v", c["devices"])
				codes := c["exit_codes"].([]any)
				assert.Len(t, codes, len(got["migrations"].([]any)), "one sealift migrate per migration")
				for _, code := range codes {
					assert.Equal(t, 0.0, code, "sealift migrate's exit codes: %v", codes)
				}
				assert.Len(t, c["agent_rtt_ms"], 3)
				rpcs := toJSON(c["switchover_rpcs"])
				assert.Contains(t, rpcs, "Fencer/Fence", "the source's fence in the hook")
				assert.Contains(t, rpcs, "3 calls", "fence at A, the link's activation at A and B")
			}
		})
	}
}

// TestLabBatch runs the batch scenario with two guests: dual-stack in
// process (`-subnet -vms 2 -ipv6`), and over an agent per host
// (`-remote -subnet -vms 2`: `sealift batch`, its metrics scraped): the
// subnet's guests one by one in a lab of their own, then both at once in
// one RunBatch (each member's prefixes redirected, converged, removed);
// every verdict of both phases must hold, and the report must carry what
// it measured (no figure is judged here: goals live in BENCHMARKS.md).
func TestLabBatch(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt: qemu-system-x86)")
	}
	for _, sc := range []struct {
		name         string
		ipv6, remote bool
	}{
		{"dual-stack", true, false},
		// `sealift batch` in its own namespace, over an agent per host.
		{"remote", false, true},
	} {
		t.Run(sc.name, func(t *testing.T) {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			o := Options{Hypervisor: "qemu", Link: tunnel.WireGuard, Fence: migration.FenceAtSwitchover, Subnet: true, VMs: 2,
				IPv6: sc.ipv6, Remote: sc.remote}
			got := runJudged(t, o, log)
			assert.Equal(t, "ok", got["journal"])
			b := got["batch"].(map[string]any)
			for _, phase := range []string{"one_by_one", "concurrent"} {
				ph, ok := b[phase].(map[string]any)
				require.True(t, ok, "no %s phase", phase)
				assert.Equal(t, "completed", ph["outcome"], "%s: %v", phase, ph["reason"])
				assert.Equal(t, true, ph["redirect_removed"], phase)
				assert.Equal(t, true, ph["pass"], "%s: %v", phase, ph["failed"])
				if assert.Len(t, ph["blackouts"], 2, phase) && sc.ipv6 {
					for _, b := range ph["blackouts"].([]any) {
						assert.NotNil(t, b.(map[string]any)["ms_v6"], "%s: %v: no IPv6 blackout", phase, b)
					}
				}
				assert.Len(t, ph["member_ms"], 2, phase)
			}
			assert.EqualValues(t, 1, b["one_by_one"].(map[string]any)["parallel"])
			assert.EqualValues(t, 2, b["concurrent"].(map[string]any)["parallel"])
			assert.Equal(t, sc.remote, got["remote"])
			if sc.remote {
				c := got["controller"].(map[string]any)
				assert.Equal(t, true, c["holds_nothing"], "the controller's namespace: %v", c["devices"])
				assert.Equal(t, []any{0.0}, c["exit_codes"], "one sealift batch, exit 0")
				m := c["metrics"].(map[string]any)
				assert.EqualValues(t, 2, m["migrations_completed"])
				assert.EqualValues(t, 1, m["batches_completed"])
				assert.EqualValues(t, 0, m["redirect_active"], "the batch removed its tunnel")
			}
		})
	}
}

// TestLabAgentCrash runs the remote lab's crash scenario: the source's,
// then the target's agent killed with SIGKILL while RAM is copied and in
// the switchover hook; the agent restarted and `sealift recover` run.
// The VM never runs in two places and ends running in exactly one (the
// lab's own QEMU monitors say so), nothing crosses the wan in clear,
// the journal holds nothing unfinished.
func TestLabAgentCrash(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt: qemu-system-x86)")
	}
	for _, kill := range []string{"source", "target"} {
		for _, at := range []string{"copy", "switchover"} {
			t.Run(kill+"-"+at, func(t *testing.T) {
				log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
				o := Options{Hypervisor: "qemu", Link: tunnel.WireGuard, Fence: migration.FenceAtSwitchover, Remote: true, Kill: kill, KillAt: at}
				got := runJudged(t, o, log)
				k := got["kill"].(map[string]any)
				assert.LessOrEqual(t, k["max_running_at_once"], 1.0)
				assert.Greater(t, k["placement_samples"], 10.0)
				assert.NotEqual(t, 0.0, k["migrate_exit"], "the kill must disrupt the migration")
				assert.EqualValues(t, 0, k["journal_unfinished"])
			})
		}
	}
}

// checkReport asserts on the JSON report: every verdict, and the figures
// CI must hold whatever a verdict's code says.
func checkReport(t *testing.T, r map[string]any, subnet bool) {
	t.Helper()
	for _, v := range r["verdicts"].([]any) {
		v := v.(map[string]any)
		assert.True(t, v["ok"].(bool), "verdict %q: %v", v["name"], v["detail"])
	}
	assert.Equal(t, true, r["pass"])
	wan := r["wan"].(map[string]any)
	assert.EqualValues(t, 0, wan["plaintext_by_address"], "plaintext by address")
	assert.EqualValues(t, 0, wan["plaintext_by_marker"], "plaintext by marker")
	assert.EqualValues(t, 0, wan["unknown"], "unknown frames")
	assert.EqualValues(t, 1, wan["control_by_address"], "the control leak, by address")
	assert.EqualValues(t, 1, wan["control_by_marker"], "the control leak, by marker")
	assert.EqualValues(t, 0, wan["dropped"], "capture drops")
	if lp, ok := wan["leak_probe"].(map[string]any); assert.True(t, ok, "no leak probe") {
		assert.EqualValues(t, 0, lp["plaintext_by_address"], "leak probe %v", lp["samples"])
	}
	audit := r["audit"].(map[string]any)
	assert.Equal(t, true, audit["reestablished_secure"], "came back secure by path: %v", audit["reestablished"])
	assert.Greater(t, audit["via_link_packets"].(float64), 0.0)
	assert.EqualValues(t, 0, audit["other_path_packets"])
	assert.Equal(t, "ok", r["journal"])
	migs := r["migrations"].([]any)
	if subnet {
		require.Len(t, migs, 2)
	} else {
		require.Len(t, migs, 1)
	}
	for _, m := range migs {
		m := m.(map[string]any)
		assert.Equal(t, string(migration.Completed), m["outcome"], "%v: %v", m["vm"], m["error"])
		assert.NotNil(t, m["traffic_after_resume_ms"], "%v: no reply after the resume", m["vm"])
		tl := m["timeline"].(map[string]any)
		assert.Contains(t, tl["resume_from"], "event at B", "the resume is timed by the hypervisor's event")
	}
	assert.Len(t, r["baselines"], 2)
	for _, b := range r["baselines"].([]any) {
		bl := b.(map[string]any)["blackout"].(map[string]any)
		assert.Greater(t, bl["sent"].(float64), 0.0)
	}
	if subnet {
		last := migs[len(migs)-1].(map[string]any)
		assert.Equal(t, true, last["redirect_removed"])
		assert.EqualValues(t, 0, last["redirect_removal_lost"])
	}
	assert.False(t, strings.Contains(toJSON(r["diagnostics"]), "Kernel panic"), "a guest kernel panicked")
}

// runJudged runs the lab scenario o and returns its JSON report, having
// asserted that every verdict held, the run passed, and the wan counted
// the control leak and no plaintext by address.
func runJudged(t *testing.T, o Options, log *slog.Logger) map[string]any {
	t.Helper()
	res, err := Run(t.Context(), t, o, log)
	require.NotNil(t, res, "no report: %v", err)
	t.Log("\n" + res.Text())
	assert.NoError(t, err)
	data, err := json.Marshal(res)
	require.NoError(t, err)
	var got map[string]any
	require.NoError(t, json.Unmarshal(data, &got))
	for _, v := range got["verdicts"].([]any) {
		v := v.(map[string]any)
		assert.True(t, v["ok"].(bool), "verdict %q: %v", v["name"], v["detail"])
	}
	assert.Equal(t, true, got["pass"])
	wan := got["wan"].(map[string]any)
	assert.EqualValues(t, 0, wan["plaintext_by_address"], "plaintext by address")
	assert.EqualValues(t, 1, wan["control_by_address"], "the control leak, by address")
	return got
}

// checkIPv6 asserts on the dual-stack report's IPv6 side, as a user of
// the report would: both families' plaintext 0, the guest's IPv6 blackout
// measured beside the IPv4 one, every peer's IPv6 echoes with the moved
// guest through the link at B and none by another way, the IPv6 session
// reset and back through the link, B's ICMPv6 errors kept off the wan.
func checkIPv6(t *testing.T, r map[string]any, subnet bool) {
	t.Helper()
	wan := r["wan"].(map[string]any)
	assert.EqualValues(t, 0, wan["plaintext_by_address_v6"], "IPv6 plaintext by address")
	assert.EqualValues(t, 0, wan["plaintext_by_address"], "plaintext by address, both families")
	assert.EqualValues(t, 1, wan["control_v6_by_address"], "the IPv6 control leak, by the IPv6 count")
	assert.EqualValues(t, 1, wan["control_v6_by_marker"], "the IPv6 control leak, by marker")
	require.NotNil(t, r["blackout_v6_ms"], "no IPv6 blackout")
	for _, m := range r["migrations"].([]any) {
		m := m.(map[string]any)
		b6, ok := m["blackout_v6"].(map[string]any)
		if assert.True(t, ok, "%v: no IPv6 blackout", m["vm"]) {
			assert.Greater(t, b6["sent"].(float64), b6["lost"].(float64), "%v: IPv6 pings", m["vm"])
		}
		assert.NotNil(t, m["traffic_after_resume_v6_ms"], "%v: no IPv6 reply after the resume", m["vm"])
	}
	v6 := r["ipv6"].(map[string]any)
	assert.Equal(t, true, v6["peers_reach_all"], "unreachable by IPv6: %v", v6["unreachable"])
	paths := v6["paths"].([]any)
	if subnet {
		assert.Len(t, paths, 1, "peer2 (the subnet scenario pings from the other subnet only)")
	} else {
		assert.Len(t, paths, 2, "peer and peer2")
	}
	for _, p := range paths {
		p := p.(map[string]any)
		assert.Equal(t, true, p["secure"], "%v: %v", p["peer"], p["detail"])
		assert.Greater(t, p["via_link_packets"].(float64), 0.0, "%v", p["peer"])
		assert.EqualValues(t, 0, p["other_path_packets"], "%v", p["peer"])
	}
	a := v6["audit"].(map[string]any)
	assert.Equal(t, true, a["reestablished_secure"], "IPv6 session: %v", a["reestablished"])
	var reset bool
	for _, c := range r["audit"].(map[string]any)["reset"].([]any) {
		reset = reset || strings.HasPrefix(c.(string), "tcp [fd00:1::10]:7777->")
	}
	assert.True(t, reset, "the IPv6 session reset: %v", r["audit"].(map[string]any)["reset"])
	lp := wan["leak_probe"].(map[string]any)
	// The stopped copy's IPv6 address: the moved guest's (vm) or the
	// subnet's second guest's (subnet: the moved one lives at B).
	want := "fd00:1::10"
	if subnet {
		want = "fd00:1::11"
	}
	assert.Contains(t, toJSON(lp["targets"]), want, "the leak probe covers a stopped guest's IPv6 address")
}

func toJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestLabControllerCrash: the controller (sealift migrate) is killed with
// SIGKILL at three points of FIG. 3 — in the switchover hook before the
// source's fence, once QEMU has finished (330), between the audit and
// the reset (355-365) — and another finishes the migration: `sealift
// recover` on its bbolt journal, or (etcd) a standby controller once the
// owner's lease expired. Rolled back before the target resumed,
// completed after; the VM never runs in two places and ends active in
// exactly one, no host keeps anything its end does not explain, nothing
// crosses the wan in clear; the standby claims within the lease's TTL
// and a second. The whole matrix: make crash.
func TestLabControllerCrash(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt: qemu-system-x86)")
	}
	for _, c := range []struct {
		point   string
		outcome migration.Outcome
		at      string
	}{
		{"hook-before-320", migration.RolledBack, "host-a running"},
		{"after-330", migration.Completed, "host-b running"},
		{"355-365", migration.Completed, "host-b running"},
	} {
		for _, standby := range []bool{false, true} {
			name := c.point + "/bolt"
			if standby {
				name = c.point + "/etcd"
			}
			t.Run(name, func(t *testing.T) { controllerCrash(t, c.point, c.outcome, c.at, standby) })
		}
	}
}

func controllerCrash(t *testing.T, point string, outcome migration.Outcome, at string, standby bool) {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	o := Options{Hypervisor: "qemu", Link: tunnel.WireGuard, Fence: migration.FenceAtSwitchover, Remote: true,
		Kill: "controller", KillAt: point, Standby: standby}
	res, err := Run(t.Context(), t, o, log)
	require.NotNil(t, res, "no report: %v", err)
	t.Log("\n" + res.Text())
	assert.NoError(t, err)
	for _, v := range res.Verdicts {
		assert.True(t, v.OK, "verdict %q: %v", v.Name, v.Detail)
	}
	assert.True(t, res.Pass)
	assert.Zero(t, res.WAN.PlaintextByAddress, "plaintext by address")
	assert.Equal(t, 1, res.WAN.ControlByAddress, "the control leak, by address")
	k := res.Kill
	require.NotNil(t, k)
	assert.Equal(t, point, k.Point)
	assert.Equal(t, string(outcome), k.Outcome)
	assert.Equal(t, 1, k.VMActiveCount)
	assert.Equal(t, []string{at}, k.VMRunningAt)
	assert.Empty(t, k.Leftovers)
	assert.LessOrEqual(t, k.MaxRunning, 1)
	assert.Positive(t, k.TakeoverMS, "the recovering controller said when it started")
	// sealift inspect, as an operator: the link's ends (and fences) left
	// by the killed controller, then only what the end explains.
	assert.Positive(t, k.InspectAfterKill["host-a"].Links, "sealift inspect host-a after the kill: %v", k.InspectAfterKill)
	assert.Positive(t, k.InspectAfterKill["host-b"].Links+k.InspectAfterKill["host-b"].Fences, "sealift inspect host-b after the kill: %v", k.InspectAfterKill)
	assert.Equal(t, k.AgentsHold, k.InspectAfterRecovery, "sealift inspect after the recovery = the agents' lists")
	if standby {
		assert.Equal(t, "etcd", k.Journal)
		assert.LessOrEqual(t, k.TakeoverMS, float64((leaseTTL+time.Second)/time.Millisecond), "takeover within the lease's TTL and a second")
	}
}
