package dashboards_test

import (
	"crypto/tls"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/dashboards"
	"github.com/sealift/sealift/metrics"
)

// descs is a prometheus.Registerer that records the names of the
// metrics registered with it.
type descs map[string]bool

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (d descs) Register(c prometheus.Collector) error {
	ch := make(chan *prometheus.Desc)
	go func() { c.Describe(ch); close(ch) }()
	for desc := range ch {
		if m := fqName.FindStringSubmatch(desc.String()); m != nil {
			d[m[1]] = true
		}
	}
	return nil
}

func (d descs) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		_ = d.Register(c)
	}
}

func (d descs) Unregister(prometheus.Collector) bool { return true }

// registered names every metric the controller (package metrics) and an
// agent (agent.WithMetrics) register.
func registered(t *testing.T) descs {
	t.Helper()
	d := descs{}
	_, err := metrics.New(d)
	require.NoError(t, err)
	_, err = agent.NewServer(&tls.Config{ClientAuth: tls.RequireAndVerifyClientCert}, agent.WithMetrics(d))
	require.NoError(t, err)
	require.True(t, d[metrics.MigrationsTotal] && d[agent.MetricRPCDuration], "names recorded: %v", d)
	return d
}

var metricName = regexp.MustCompile(`sealift_[a-z_]+`)

// unknown returns the sealift metric names expr uses that known does not
// hold (a histogram's _bucket, _sum and _count series are its own).
func unknown(expr string, known descs) []string {
	var out []string
	for _, n := range metricName.FindAllString(expr, -1) {
		ok := known[n]
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			ok = ok || strings.HasSuffix(n, suffix) && known[strings.TrimSuffix(n, suffix)]
		}
		if !ok {
			out = append(out, n)
		}
	}
	return out
}

// queries returns every PromQL text of the dashboard: panels' targets'
// expr, and the template variables' queries, by where they are.
func queries(v any, path string, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			if s, ok := x.(string); ok && (k == "expr" || k == "query" || k == "definition") {
				out[path+"."+k] = s
				continue
			}
			queries(x, path+"."+k, out)
		}
	case []any:
		for i, x := range v {
			queries(x, path+"["+strconv.Itoa(i)+"]", out)
		}
	}
}

// TestDashboardNamesRegisteredMetrics: every PromQL expression of
// sealift.json names only metrics the code registers (so the dashboard
// cannot drift from the code), and the dashboard covers what it is for:
// each metric of the issue has a panel.
func TestDashboardNamesRegisteredMetrics(t *testing.T) {
	known := registered(t)
	var dash map[string]any
	require.NoError(t, json.Unmarshal(dashboards.Sealift, &dash))
	qs := map[string]string{}
	queries(dash, "", qs)
	require.Greater(t, len(qs), 20, "the expressions were found")
	used := map[string]bool{}
	for where, q := range qs {
		assert.Empty(t, unknown(q, known), "%s: %s", where, q)
		for _, n := range metricName.FindAllString(q, -1) {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b := strings.TrimSuffix(n, suffix); known[b] {
					n = b
				}
			}
			used[n] = true
		}
	}
	for _, n := range []string{metrics.MigrationsTotal, metrics.MigrationsInProgress, metrics.MigrationDuration, metrics.MigrationDowntime,
		metrics.SwitchoverHook, metrics.StepDuration, metrics.StepFailuresTotal, metrics.MigrationBytesTotal, metrics.MigrationRemaining,
		metrics.ConnectionsResetTotal, metrics.ConnectionsKeptTotal, metrics.RedirectActive, metrics.RouteConvergence,
		agent.MetricRPCDuration, agent.MetricFences, agent.MetricLinkEnds, agent.MetricLinkBytes, agent.MetricLinkHandshake} {
		assert.True(t, used[n], "no panel shows %s", n)
	}
	// Control: the check catches a name the code does not register, and
	// a histogram suffix on a name it does not know.
	assert.Equal(t, []string{"sealift_migrations_failed_total"}, unknown(`sum(rate(sealift_migrations_failed_total[5m]))`, known))
	assert.Equal(t, []string{"sealift_migration_blackout_seconds_bucket"},
		unknown(`histogram_quantile(0.9, rate(sealift_migration_blackout_seconds_bucket[5m]))`, known))
}

// TestDashboardModel: the dashboard is a Grafana model of schema 39 with
// a Prometheus data source variable that every panel and query uses,
// unique panel IDs, and every panel placed on the grid.
func TestDashboardModel(t *testing.T) {
	var dash struct {
		SchemaVersion int    `json:"schemaVersion"`
		UID           string `json:"uid"`
		Title         string `json:"title"`
		Templating    struct {
			List []struct {
				Name, Type string
				Query      any
			}
		}
		Panels []struct {
			ID         int
			Type       string
			Title      string
			GridPos    struct{ H, W, X, Y int }
			Datasource *struct{ Type, UID string }
			Targets    []struct {
				Expr       string
				Datasource *struct{ Type, UID string }
			}
		}
	}
	require.NoError(t, json.Unmarshal(dashboards.Sealift, &dash))
	assert.Equal(t, 39, dash.SchemaVersion)
	assert.NotEmpty(t, dash.UID)
	require.NotEmpty(t, dash.Templating.List)
	assert.Equal(t, "datasource", dash.Templating.List[0].Name)
	assert.Equal(t, "datasource", dash.Templating.List[0].Type)
	assert.Equal(t, "prometheus", dash.Templating.List[0].Query)
	var ids []int
	for _, p := range dash.Panels {
		assert.NotContains(t, ids, p.ID, "panel %q: ID %d used twice", p.Title, p.ID)
		ids = append(ids, p.ID)
		assert.Positive(t, p.GridPos.W*p.GridPos.H, "panel %q has no size", p.Title)
		assert.LessOrEqual(t, p.GridPos.X+p.GridPos.W, 24, "panel %q is wider than the grid", p.Title)
		if p.Type == "row" {
			continue
		}
		require.NotNil(t, p.Datasource, "panel %q", p.Title)
		assert.Equal(t, "${datasource}", p.Datasource.UID, "panel %q", p.Title)
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, tg := range p.Targets {
			assert.NotEmpty(t, tg.Expr, "panel %q", p.Title)
			if assert.NotNil(t, tg.Datasource, "panel %q", p.Title) {
				assert.Equal(t, "${datasource}", tg.Datasource.UID, "panel %q", p.Title)
			}
		}
	}
	assert.Greater(t, len(ids), 15)
}
