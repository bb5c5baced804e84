package agent_test

import (
	"context"
	"testing"
	"time"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

// BenchmarkSwitchoverHook: the Migrator's switchover hook (the source
// paused: the switchover event to the controller, the source fence, the
// link's activation, the journal, the answer) on the in-memory fakes,
// in process and with every host behind an agent (mutual TLS on
// loopback). hook-µs/op is what the source's downtime grows by; the
// difference is the agents' RPC overhead inside the hook (issue 12's
// goal: ≤ 2 ms).
func BenchmarkSwitchoverHook(b *testing.B) {
	for _, remote := range []bool{false, true} {
		name := "local"
		if remote {
			name = "agents"
		}
		b.Run(name, func(b *testing.B) {
			var hook time.Duration
			n := 0
			for b.Loop() {
				b.StopTimer()
				s := migrationtest.NewSetup()
				if remote {
					remoteSetupB(b, s)
				}
				m, err := migration.New(s.Config)
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				rep, err := m.Run(context.Background(), s.Plan())
				if err != nil {
					b.Fatal(err)
				}
				hook += rep.Migration.SwitchoverDone.Sub(rep.Migration.Switchover)
				n++
			}
			b.ReportMetric(float64(hook.Microseconds())/float64(n), "hook-µs/op")
		})
	}
}
