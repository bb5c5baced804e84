package main

import (
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// TestLab runs the end-to-end lab (real QEMU guests, nftables fences,
// WireGuard, conntrack, BGP) in both scenarios and checks what its JSON
// report says.
func TestLab(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt: qemu-system-x86)")
	}
	for _, sc := range []struct {
		name   string
		subnet bool
		fence  migration.FenceMode
	}{
		{"vm", false, migration.FenceAtSwitchover},
		{"subnet", true, migration.FenceBeforeCopy},
	} {
		t.Run(sc.name, func(t *testing.T) {
			log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
			o := Options{Hypervisor: "qemu", Link: tunnel.WireGuard, Fence: sc.fence, Subnet: sc.subnet}
			res, err := runLab(t, o, log)
			if res != nil && res.GuestPanicked() {
				// Seen in about 1 run of 15 on QEMU 7.2 under TCG: the guest
				// kernel panics at the target right after a migration QEMU
				// reported complete (the Migrator then reports the VM lost).
				// Not sealift's doing as far as we know (BENCHMARKS.md): log
				// it loudly and run the scenario once more; a second failure
				// of any kind fails the test.
				t.Logf("GUEST KERNEL PANIC after migration (QEMU TCG), retrying the scenario once:\n%s", res.Text())
				for k, v := range res.Diagnostics {
					if strings.HasPrefix(k, "serial_") {
						t.Logf("%s:\n%s", k, v)
					}
				}
				res, err = runLab(t, o, log)
			}
			if res != nil {
				t.Log("\n" + res.Text())
				// Assert from the JSON, as a user of the report would.
				data, _ := json.Marshal(res)
				var got map[string]any
				if err := json.Unmarshal(data, &got); err != nil {
					t.Fatal(err)
				}
				checkReport(t, got, sc.subnet)
			}
			if err != nil {
				t.Fatal(err)
			}
		})
	}
}

func checkReport(t *testing.T, r map[string]any, subnet bool) {
	t.Helper()
	if n := r["plaintext_frames_on_wan"].(float64); n != 0 {
		t.Errorf("plaintext_frames_on_wan = %v, want 0", n)
	}
	for _, k := range []string{"vm_reachable_after", "counter_continued", "journal_complete", "peers_reach_all"} {
		if r[k] != true {
			t.Errorf("%s = %v, want true", k, r[k])
		}
	}
	audit := r["audit"].(map[string]any)
	var sessionReset bool
	for _, c := range audit["reset"].([]any) {
		sessionReset = sessionReset || strings.HasPrefix(c.(string), "tcp 10.1.0.10:7777->")
	}
	if !sessionReset {
		t.Errorf("audit.reset = %v, want the plaintext session to the guest's port 7777", audit["reset"])
	}
	if audit["reestablished_secure"] != true {
		t.Errorf("reestablished_secure = false: %v", audit["reestablished"])
	}
	if steps := r["steps"].([]any); len(steps) == 0 {
		t.Error("no steps")
	}
	migs := r["migrations"].([]any)
	for _, m := range migs {
		m := m.(map[string]any)
		if m["outcome"] != string(migration.Completed) {
			t.Errorf("%v: outcome %v (%v)", m["vm"], m["outcome"], m["error"])
		}
	}
	if !subnet {
		return
	}
	last := migs[len(migs)-1].(map[string]any)
	if last["subnet_moved"] != true || last["redirect_removed"] != true {
		t.Errorf("last migration: subnet_moved %v redirect_removed %v, want both", last["subnet_moved"], last["redirect_removed"])
	}
	if n := last["redirect_removal_lost"].(float64); n != 0 {
		t.Errorf("redirect_removal_lost = %v, want 0 (make-before-break)", n)
	}
}

// runLab runs one scenario in a subtest of its own, so that the lab it
// builds is torn down before a retry builds the next.
func runLab(t *testing.T, o Options, log *slog.Logger) (res *Result, err error) {
	t.Run("run", func(t *testing.T) {
		res, err = Run(t.Context(), t, o, log)
	})
	return res, err
}
