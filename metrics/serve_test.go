package metrics_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/migration/migrationtest"
)

// get fetches url: its status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

// parse reads Prometheus' text format: values by series as exposed.
func parse(t *testing.T, text string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		require.Positive(t, i, "line %q", line)
		v, err := strconv.ParseFloat(line[i+1:], 64)
		require.NoError(t, err, "line %q", line)
		out[line[:i]] = v
	}
	return out
}

// TestServe: a completed migration, scraped over HTTP from Serve: the
// exposed values are the Report's; other paths are 404; Serve returns
// nil once its context ends, and the port is closed; a bad address is
// an error naming it.
func TestServe(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Auditor.SetConns(plainConn, tlsConn)
	c, reg := newController(t)
	rep, err, _ := migrate(t, c, newMigrator(t, s), s.SubnetPlan())
	require.NoError(t, err)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- metrics.Serve(ctx, addr, reg) }()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + metrics.Path)
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, 5*time.Second, 10*time.Millisecond, "Serve does not answer")
	code, text := get(t, "http://"+addr+metrics.Path)
	require.Equal(t, http.StatusOK, code)
	got := parse(t, text)
	for series, want := range map[string]float64{
		`sealift_migrations_total{fence_mode="at-switchover",link="wireguard",outcome="completed"}`: 1,
		`sealift_migrations_in_progress`:                                  0,
		`sealift_migration_downtime_seconds_count`:                        1,
		`sealift_migration_downtime_seconds_sum`:                          rep.Migration.Downtime.Seconds(),
		`sealift_migration_bytes_total`:                                   float64(rep.Migration.Bytes),
		`sealift_connections_kept_total`:                                  1,
		`sealift_connections_reset_total`:                                 1,
		`sealift_redirect_active`:                                         0,
		`sealift_route_convergence_seconds_count`:                         1,
		`sealift_step_duration_seconds_count{block="330",step="migrate"}`: 1,
		`sealift_migration_switchover_hook_seconds_bucket{le="+Inf"}`:     1,
	} {
		v, ok := got[series]
		if assert.True(t, ok, "no series %s", series) {
			assert.Equal(t, want, v, series)
		}
	}
	code, _ = get(t, "http://"+addr+"/")
	assert.Equal(t, http.StatusNotFound, code)

	cancel()
	select {
	case err := <-done:
		require.NoError(t, err, "Serve's end")
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	_, err = http.Get("http://" + addr + metrics.Path)
	assert.Error(t, err, "still served")

	err = metrics.Serve(context.Background(), "127.0.0.1:99999", reg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "127.0.0.1:99999")
}
