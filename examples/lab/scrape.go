package main

// The remote lab's metrics (issue 14): every agent serves /metrics on its
// management address, each `sealift migrate` on ctl's loopback and goes
// on serving a while after its migration; the lab scrapes them from ctl,
// as a Prometheus there would, and checks them against the migration's
// report and the agents' own lists.

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/sealift/sealift/internal/promtest"
	"github.com/sealift/sealift/migration"
)

const (
	agentMetricsPort = 9100
	ctlMetricsAddr   = "127.0.0.1:9101" // in ctl
)

func (p *agentProc) metricsAddr() string {
	return netip.AddrPortFrom(p.addr, agentMetricsPort).String()
}

// MetricsResult is what the scrapes after a migration showed.
type MetricsResult struct {
	// Controller: `sealift migrate`'s own, after its one migration.
	MigrationsCompleted float64 `json:"migrations_completed"`
	MigrationsAll       float64 `json:"migrations_all"`
	InProgress          float64 `json:"in_progress"`
	DowntimeCount       uint64  `json:"downtime_observations"`
	DowntimeSum         float64 `json:"downtime_sum_seconds"`
	HookCount           uint64  `json:"hook_observations"`
	Bytes               float64 `json:"bytes_total"`
	ConnsReset          float64 `json:"connections_reset_total"`
	Step330Count        uint64  `json:"step_330_observations"`
	// BatchesCompleted and RedirectActive: a batch's end, and the
	// members' redirect once the batch removed its tunnel.
	BatchesCompleted float64 `json:"batches_completed"`
	RedirectActive   float64 `json:"redirect_active"`
	// Agents: fences and active link ends they report, by host, and the
	// Fence calls A served.
	AgentFences  map[string]float64 `json:"agent_fences"`
	AgentActive  map[string]float64 `json:"agent_active_link_ends"`
	AFenceCalls  uint64             `json:"host_a_fence_calls"`
	ScrapeErrors []string           `json:"scrape_errors,omitempty"`
}

// scrapeFrom fetches url's metrics from inside namespace ns.
func scrapeFrom(ctx context.Context, ns, url string) (promtest.Families, error) {
	dial := nsDialer(ns)
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) { return dial(ctx, addr) }}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: %s: %s", url, resp.Status, body)
	}
	return promtest.Parse(bytes.NewReader(body))
}

// scrapeAll reads the lingering controller's and every agent's metrics.
func (w *world) scrapeAll(ctx context.Context) *MetricsResult {
	r := &MetricsResult{AgentFences: map[string]float64{}, AgentActive: map[string]float64{}}
	fail := func(err error) { r.ScrapeErrors = append(r.ScrapeErrors, err.Error()) }
	ctl, err := scrapeFrom(ctx, w.rm.ctl, "http://"+ctlMetricsAddr+"/metrics")
	if err != nil {
		fail(fmt.Errorf("controller: %w", err))
	} else {
		r.MigrationsCompleted, _ = ctl.Sum("sealift_migrations_total", map[string]string{"outcome": string(migration.Completed)})
		r.MigrationsAll, _ = ctl.Sum("sealift_migrations_total", nil)
		r.InProgress, _ = ctl.Sum("sealift_migrations_in_progress", nil)
		r.DowntimeSum, r.DowntimeCount = ctl.Sum("sealift_migration_downtime_seconds", nil)
		_, r.HookCount = ctl.Sum("sealift_migration_switchover_hook_seconds", nil)
		r.Bytes, _ = ctl.Sum("sealift_migration_bytes_total", nil)
		r.ConnsReset, _ = ctl.Sum("sealift_connections_reset_total", nil)
		_, r.Step330Count = ctl.Sum("sealift_step_duration_seconds", map[string]string{"block": "330"})
		r.BatchesCompleted, _ = ctl.Sum("sealift_batches_total", map[string]string{"outcome": string(migration.Completed)})
		r.RedirectActive, _ = ctl.Sum("sealift_redirect_active", nil)
	}
	for _, h := range []string{"host-a", "host-b"} {
		fams, err := scrapeFrom(ctx, w.rm.ctl, "http://"+w.rm.agents[h].metricsAddr()+"/metrics")
		if err != nil {
			fail(fmt.Errorf("agent %s: %w", h, err))
			continue
		}
		r.AgentFences[h], _ = fams.Sum("sealift_agent_fences", nil)
		r.AgentActive[h], _ = fams.Sum("sealift_agent_link_ends", map[string]string{"active": "true"})
		if h == "host-a" {
			_, r.AFenceCalls = fams.Sum("sealift_agent_rpc_duration_seconds", map[string]string{"method": "/sealift.agent.v1.Fencer/Fence", "code": "OK"})
		}
	}
	return r
}

// judgeMetrics adds the verdicts on the first migration's scrape.
func (r *Result) judgeMetrics(add func(string, bool, string, ...any)) {
	c := r.Controller
	if c == nil || c.Metrics == nil || len(r.Migrations) == 0 {
		add("metrics scraped", false, "no scrape")
		return
	}
	m, rep := c.Metrics, r.Migrations[0]
	add("metrics scraped", len(m.ScrapeErrors) == 0, "%v", m.ScrapeErrors)
	if r.Batch != nil {
		r.judgeBatchMetrics(add, m)
		return
	}
	add("controller metrics: one migration, completed, its downtime and bytes",
		m.MigrationsCompleted == 1 && m.MigrationsAll == 1 && m.InProgress == 0 && m.DowntimeCount == 1 && m.HookCount == 1 &&
			m.Step330Count == 1 && m.Bytes == float64(rep.Migration.Bytes) &&
			int(m.DowntimeSum*1000+0.5) == int(rep.Migration.DowntimeMS+0.5) && m.ConnsReset == float64(len(rep.reset)),
		"completed %v of %v (in progress %v), downtime %d obs. %.3f s (report %.0f ms), hook %d, block 330 %d, bytes %.0f (report %d), reset %v (report %d)",
		m.MigrationsCompleted, m.MigrationsAll, m.InProgress, m.DowntimeCount, m.DowntimeSum, rep.Migration.DowntimeMS, m.HookCount,
		m.Step330Count, m.Bytes, rep.Migration.Bytes, m.ConnsReset, len(rep.reset))
	add("agent metrics: A fenced once and holds no fence, B one fence and an active link end",
		m.AFenceCalls >= 1 && m.AgentFences["host-a"] == 0 && m.AgentFences["host-b"] == 1 && m.AgentActive["host-b"] >= 1,
		"A: %d Fence calls, fences %v, active link ends %v", m.AFenceCalls, m.AgentFences, m.AgentActive)
}

// judgeBatchMetrics adds the verdicts on a batch's scrape (`sealift
// batch`, every member completed): every member counted once, the
// downtimes and bytes of their reports, one batch, no redirect left; at
// the agents, A holds no fence and B one per member.
func (r *Result) judgeBatchMetrics(add func(string, bool, string, ...any), m *MetricsResult) {
	n := len(r.Migrations)
	var bytes float64
	var downMS float64
	for _, mr := range r.Migrations {
		bytes += float64(mr.Migration.Bytes)
		downMS += mr.Migration.DowntimeMS
	}
	add("controller metrics: the batch's members and the batch, completed, their downtimes and bytes",
		m.MigrationsCompleted == float64(n) && m.MigrationsAll == float64(n) && m.InProgress == 0 &&
			m.DowntimeCount == uint64(n) && m.HookCount == uint64(n) && m.Step330Count == uint64(n) &&
			m.Bytes == bytes && math.Abs(m.DowntimeSum*1000-downMS) < float64(n) &&
			m.BatchesCompleted == 1 && m.RedirectActive == 0,
		"%d members: completed %v of %v (in progress %v), downtime %d obs. %.3f s (reports %.0f ms), hook %d, block 330 %d, bytes %.0f (reports %.0f), batches completed %v, redirects active %v",
		n, m.MigrationsCompleted, m.MigrationsAll, m.InProgress, m.DowntimeCount, m.DowntimeSum, downMS, m.HookCount,
		m.Step330Count, m.Bytes, bytes, m.BatchesCompleted, m.RedirectActive)
	add("agent metrics: A holds no fence, B one fence and an active link end per member",
		m.AFenceCalls >= uint64(n) && m.AgentFences["host-a"] == 0 && m.AgentFences["host-b"] == float64(n) && m.AgentActive["host-b"] >= float64(n),
		"A: %d Fence calls, fences %v, active link ends %v", m.AFenceCalls, m.AgentFences, m.AgentActive)
}
