package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/promtest"
	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/migration"
)

// TestMetricsThroughAgents: a migration through `sealift migrate
// -metrics-listen`, with both agents serving /metrics; scraped over HTTP
// after it, the controller's counters and histograms moved by exactly one
// migration (completed, wireguard, at-switchover; its blocks, bytes, the
// connections the audit reset and kept, as the report says) and the agents counted the calls the
// controller made, A lifted its fence and B holds one (open to the link)
// and an active link end.
func TestMetricsThroughAgents(t *testing.T) {
	lab.RequireRoot(t)
	agentURL := map[string]string{}
	w := newAgentsWorld(t, func(host string) []agent.Option {
		reg := prometheus.NewRegistry()
		l, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = metrics.ServeListener(ctx, l, reg) }()
		t.Cleanup(func() { cancel(); <-done })
		agentURL[host] = "http://" + l.Addr().String() + metrics.Path
		return []agent.Option{agent.WithMetrics(reg)}
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out bytes.Buffer
	errs := &syncBuffer{}
	code := make(chan int, 1)
	go func() {
		code <- run(ctx, []string{"migrate", "-config", w.path, "-vm", "vm1", "-from", "secure", "-to", "cloud",
			"-addr", lab.VMAddr.String() + "/32", "-peer", lab.PeerAddr.String() + "/32",
			"-metrics-listen", addr, "-metrics-linger", "2m", "-json"}, &out, errs)
	}()
	ctl := "http://" + addr + metrics.Path
	var fams promtest.Families
	require.Eventually(t, func() bool {
		if !strings.Contains(errs.String(), "metrics: serving") { // the run is over, lingering
			return false
		}
		fams = scrape(t, ctl)
		return true
	}, 2*time.Minute, 100*time.Millisecond, "sealift migrate did not finish: %s", errs)

	var rep migration.Report // (written before "metrics: serving", which errs' lock orders)
	require.NoError(t, json.Unmarshal(out.Bytes(), &rep), "%s", out.String())
	require.Equal(t, migration.Completed, rep.Outcome)
	labels := map[string]string{"outcome": "completed", "link": "wireguard", "fence_mode": "at-switchover"}
	assert.Equal(t, 1.0, value(fams, "sealift_migrations_total", labels), "migrations completed")
	assert.Equal(t, 1.0, total(fams, "sealift_migrations_total"), "migrations of any outcome")
	assert.Equal(t, 0.0, total(fams, "sealift_migrations_in_progress"))
	assert.Equal(t, uint64(1), count(fams, "sealift_migration_duration_seconds"))
	assert.Equal(t, uint64(1), count(fams, "sealift_migration_downtime_seconds"))
	assert.Equal(t, uint64(1), count(fams, "sealift_migration_switchover_hook_seconds"))
	assert.Equal(t, 0.0, total(fams, "sealift_migration_remaining_bytes"))
	assert.Equal(t, float64(rep.Migration.Bytes), total(fams, "sealift_migration_bytes_total"), "bytes, as the hypervisor reported them")
	assert.Equal(t, float64(len(rep.Audit.Reset)), total(fams, "sealift_connections_reset_total"), "connections reset, as the report")
	assert.Equal(t, float64(len(rep.Audit.Kept)), total(fams, "sealift_connections_kept_total"), "connections kept, as the report")
	assert.Equal(t, uint64(1), count(fams, "sealift_step_duration_seconds", map[string]string{"block": "330"}), "block 330, once")
	assert.Equal(t, uint64(1), count(fams, "sealift_step_duration_seconds", map[string]string{"block": "345"}), "block 345, once")

	// The agents: A's Fencer.Fence once (the hook) and Lift once; B holds
	// one fence and one active link end.
	a, b := scrape(t, agentURL["host-a"]), scrape(t, agentURL["host-b"])
	assert.Equal(t, uint64(1), count(a, "sealift_agent_rpc_duration_seconds", map[string]string{"method": "/sealift.agent.v1.Fencer/Fence", "code": "OK"}), "A: Fence calls")
	assert.Equal(t, uint64(1), count(a, "sealift_agent_rpc_duration_seconds", map[string]string{"method": "/sealift.agent.v1.Fencer/Lift", "code": "OK"}), "A: Lift calls")
	assert.Equal(t, 0.0, total(a, "sealift_agent_fences"), "A: fences")
	assert.Equal(t, 1.0, total(b, "sealift_agent_fences"), "B: fences")
	assert.Equal(t, 1.0, value(b, "sealift_agent_link_ends", map[string]string{"active": "true"}), "B: active link ends")

	cancel() // ends the linger
	select {
	case c := <-code:
		assert.Equal(t, exitOK, c, "%s", errs)
	case <-time.After(30 * time.Second):
		t.Fatal("sealift migrate did not stop lingering")
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

func scrape(t *testing.T, url string) promtest.Families {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, resp.StatusCode, "%s", body)
	fams, err := promtest.Parse(bytes.NewReader(body))
	require.NoError(t, err)
	return fams
}

func value(fams promtest.Families, name string, want map[string]string) float64 {
	v, _ := fams.Sum(name, want)
	return v
}

func total(fams promtest.Families, name string) float64 { return value(fams, name, nil) }

func count(fams promtest.Families, name string, want ...map[string]string) uint64 {
	var w map[string]string
	if len(want) > 0 {
		w = want[0]
	}
	_, n := fams.Sum(name, w)
	return n
}
