package agent_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/promtest"
	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/tunnel"
)

// sample is one series of a gathered family (promtest.Sample).
type sample = promtest.Sample

// series returns family name's samples by their labels (`k="v",...`).
func series(t *testing.T, g prometheus.Gatherer, name string) map[string]sample {
	t.Helper()
	out, err := promtest.Series(g, name)
	require.NoError(t, err)
	return out
}

// rpcCounts sums the RPC histogram's counts by method (over codes), and
// returns the codes of the calls that did not end OK.
func rpcCounts(t *testing.T, g prometheus.Gatherer) (map[string]uint64, []string) {
	t.Helper()
	counts := map[string]uint64{}
	var failed []string
	for k, s := range series(t, g, agent.MetricRPCDuration) {
		code, method := labelOf(k, "code"), labelOf(k, "method")
		if s.Count > 0 {
			counts[method] += s.Count
			if code != codes.OK.String() {
				failed = append(failed, method+" "+code)
			}
		}
	}
	return counts, failed
}

// labelOf extracts label name's value from a series key.
func labelOf(key, name string) string {
	for _, kv := range strings.Split(key, ",") {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			s, _ := strconv.Unquote(v)
			return s
		}
	}
	return ""
}

// TestMigratorOverAgentsMetrics: a migration over agents with metrics:
// each agent counted exactly the calls its backends received (the fakes'
// own record, by service and method), plus the client's capability
// query (Fencer.Info); Hypervisor.Migrate, a stream, is counted once;
// the one call that failed (the target's Lookup at block 310: not there
// yet) is counted under its code.
func TestMigratorOverAgentsMetrics(t *testing.T) {
	s := migrationtest.NewSetup()
	regs := map[string]*prometheus.Registry{}
	remoteSetupWith(t, s, func(name string) []agent.Option {
		r := prometheus.NewPedanticRegistry()
		regs[name] = r
		return []agent.Option{agent.WithMetrics(r)}
	})
	require.Len(t, regs, 3)
	m, err := migration.New(s.Config)
	require.NoError(t, err)
	rep, err := m.Run(context.Background(), s.SubnetPlan())
	require.NoError(t, err)
	require.Equal(t, migration.Completed, rep.Outcome)

	want := map[string]map[string]uint64{
		"host-a": {"/sealift.agent.v1.Fencer/Info": 1},
		"host-b": {"/sealift.agent.v1.Fencer/Info": 1},
		"core":   {},
	}
	services := map[string]string{"hv": "Hypervisor", "fence": "Fencer", "audit": "ConnAuditor"}
	for _, c := range s.Calls() {
		kind, host, _ := strings.Cut(c.Fake, ":")
		switch {
		case c.Fake == "routing":
			want["core"]["/sealift.agent.v1.RouteWatcher/"+c.Method]++
		case services[kind] != "":
			want["host-"+host]["/sealift.agent.v1."+services[kind]+"/"+c.Method]++
		}
	}
	require.Equal(t, uint64(1), want["host-a"]["/sealift.agent.v1.Hypervisor/Migrate"], "the source migrated once")
	for name, reg := range regs {
		// The server observes a stream once it has ended, which the client
		// need not wait for.
		var got map[string]uint64
		var failed []string
		require.Eventually(t, func() bool {
			got, failed = rpcCounts(t, reg)
			return fmt.Sprint(got) == fmt.Sprint(want[name])
		}, 5*time.Second, 10*time.Millisecond, "agent %s: RPCs %v, backend calls %v", name, got, want[name])
		wantFailed := []string(nil)
		if name == "host-b" { // block 310: the VM is not at the target yet
			wantFailed = []string{"/sealift.agent.v1.Hypervisor/Lookup NotFound"}
		}
		assert.Equal(t, wantFailed, failed, "agent %s: calls that failed, by code", name)
	}
	// Every served method has its OK series from the start.
	assert.Contains(t, series(t, regs["host-a"], agent.MetricRPCDuration),
		`code="OK",method="/sealift.agent.v1.Hypervisor/Abort"`)
}

// listFencer is a Fencer whose List returns fences or fails.
type listFencer struct {
	mu     sync.Mutex
	fences []fence.Fence
	err    error
}

func (f *listFencer) Fence(context.Context, fence.Spec) error { return nil }
func (f *listFencer) Lift(context.Context, string) error      { return nil }
func (f *listFencer) List(context.Context) ([]fence.Fence, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fences, f.err
}

// statsEnds is a LinkEnd that lists ends and reports their counters.
type statsEnds struct {
	mu       sync.Mutex
	ends     []tunnel.EndState
	stats    map[string]tunnel.EndStats
	statsErr map[string]error
	asked    []string
}

var errNotHere = fmt.Errorf("%w: not in this fake", tunnel.ErrInvalid)

func (e *statsEnds) Open(context.Context, tunnel.Spec, tunnel.Role) (tunnel.EndState, error) {
	return tunnel.EndState{}, errNotHere
}
func (e *statsEnds) Connect(context.Context, string, tunnel.Public) error { return errNotHere }
func (e *statsEnds) Activate(context.Context, string) error               { return errNotHere }
func (e *statsEnds) Verify(context.Context, string) (tunnel.Proof, error) {
	return tunnel.Proof{}, errNotHere
}
func (e *statsEnds) Close(context.Context, string) error { return errNotHere }
func (e *statsEnds) List(context.Context) ([]tunnel.EndState, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]tunnel.EndState(nil), e.ends...), nil
}
func (e *statsEnds) Stats(_ context.Context, id string) (tunnel.EndStats, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.asked = append(e.asked, id)
	if err := e.statsErr[id]; err != nil {
		return tunnel.EndStats{}, err
	}
	return e.stats[id], nil
}

func endState(id string, kind tunnel.Kind, role tunnel.Role, active bool) tunnel.EndState {
	return tunnel.EndState{Spec: tunnel.Spec{ID: id, Kind: kind}, Role: role, Connected: true, Active: active}
}

// TestAgentMetricsCollector: at scrape time the agent reports its
// Fencer's fences, its link ends by kind, role and state, and the
// counters and handshake of its active ends only (an inactive end is not
// asked); a backend that fails is reported as such (0) while the rest
// is still served; an end closed between List and Stats is skipped; a
// closed end's series go with it. A refused call is
// counted under its code. The names pass promlint.
func TestAgentMetricsCollector(t *testing.T) {
	p := newPKI(t)
	f := &listFencer{fences: []fence.Fence{{Spec: fence.Spec{VM: "vm-1"}}, {Spec: fence.Spec{VM: "vm-2"}}}}
	hs := time.Unix(1700000000, 500_000_000)
	ends := &statsEnds{
		ends: []tunnel.EndState{
			endState("w1", tunnel.WireGuard, tunnel.SecureRole, true),
			endState("x1", tunnel.IPsec, tunnel.RemoteRole, false),
			endState("x2", tunnel.IPsec, tunnel.RemoteRole, true),
		},
		stats: map[string]tunnel.EndStats{
			"w1": {RxBytes: 10, TxBytes: 20, LastHandshake: hs},
			"x1": {RxBytes: 99, TxBytes: 99},
			"x2": {RxBytes: 30, TxBytes: 40},
		},
		statsErr: map[string]error{},
	}
	reg := prometheus.NewPedanticRegistry()
	addr := p.serve(t, agent.WithFencer(f), agent.WithLinkEnd(ends), agent.WithMetrics(reg))
	raw := agentpb.NewFencerClient(rawConn(t, p, addr))
	_, err := raw.Fence(context.Background(), &agentpb.FenceRequest{})
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	assert.Equal(t, map[string]sample{"": {Value: 2}}, series(t, reg, agent.MetricFences))
	linkEnds := map[string]sample{}
	for _, k := range []string{"wireguard", "ipsec"} {
		for _, r := range []string{"secure", "remote"} {
			for _, a := range []string{"true", "false"} {
				linkEnds[fmt.Sprintf(`active=%q,kind=%q,role=%q`, a, k, r)] = sample{}
			}
		}
	}
	linkEnds[`active="true",kind="wireguard",role="secure"`] = sample{Value: 1}
	linkEnds[`active="false",kind="ipsec",role="remote"`] = sample{Value: 1}
	linkEnds[`active="true",kind="ipsec",role="remote"`] = sample{Value: 1}
	assert.Equal(t, linkEnds, series(t, reg, agent.MetricLinkEnds))
	assert.Equal(t, map[string]sample{
		`direction="rx",kind="wireguard",link="w1"`: {Value: 10},
		`direction="tx",kind="wireguard",link="w1"`: {Value: 20},
		`direction="rx",kind="ipsec",link="x2"`:     {Value: 30},
		`direction="tx",kind="ipsec",link="x2"`:     {Value: 40},
	}, series(t, reg, agent.MetricLinkBytes))
	assert.Equal(t, map[string]sample{`link="w1"`: {Value: 1700000000.5}}, series(t, reg, agent.MetricLinkHandshake))
	success := func(fences, linkEnds, stats float64) map[string]sample {
		return map[string]sample{`collector="fences"`: {Value: fences}, `collector="link_ends"`: {Value: linkEnds},
			`collector="link_stats"`: {Value: stats}}
	}
	assert.Equal(t, success(1, 1, 1), series(t, reg, agent.MetricCollectorSuccess))
	ends.mu.Lock()
	assert.NotContains(t, ends.asked, "x1", "an inactive end was asked for its counters")
	ends.mu.Unlock()
	rpc := series(t, reg, agent.MetricRPCDuration)
	assert.Equal(t, uint64(1), rpc[`code="InvalidArgument",method="/sealift.agent.v1.Fencer/Fence"`].Count)
	assert.Equal(t, uint64(0), rpc[`code="OK",method="/sealift.agent.v1.Fencer/Fence"`].Count)
	assert.Contains(t, rpc, `code="OK",method="/sealift.agent.v1.LinkEnd/Verify"`, "served methods start at 0")
	problems, err := testutil.GatherAndLint(reg)
	require.NoError(t, err)
	assert.Empty(t, problems)

	// The Fencer fails, and w1's counters: the rest is served.
	f.mu.Lock()
	f.err = errBoom
	f.mu.Unlock()
	ends.mu.Lock()
	ends.statsErr["w1"] = errBoom
	ends.mu.Unlock()
	assert.Empty(t, series(t, reg, agent.MetricFences))
	assert.Equal(t, success(0, 1, 0), series(t, reg, agent.MetricCollectorSuccess))
	got := series(t, reg, agent.MetricLinkBytes)
	keys := make([]string, 0, len(got))
	for k := range got {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	assert.Equal(t, []string{`direction="rx",kind="ipsec",link="x2"`, `direction="tx",kind="ipsec",link="x2"`}, keys)
	assert.Empty(t, series(t, reg, agent.MetricLinkHandshake))

	// x2 closed between List and Stats: skipped, not a failure.
	ends.mu.Lock()
	ends.statsErr["x2"] = fmt.Errorf("%w: x2", tunnel.ErrNoLink)
	ends.mu.Unlock()
	assert.Empty(t, series(t, reg, agent.MetricLinkBytes))
	f.mu.Lock()
	f.err = nil
	f.mu.Unlock()
	ends.mu.Lock()
	delete(ends.statsErr, "w1")
	ends.mu.Unlock()
	assert.Equal(t, success(1, 1, 1), series(t, reg, agent.MetricCollectorSuccess))

	// w1 and x2 closed: their series are gone.
	require.Len(t, series(t, reg, agent.MetricLinkBytes), 2, "w1's")
	ends.mu.Lock()
	ends.ends = ends.ends[1:2] // x1, inactive
	ends.mu.Unlock()
	assert.Empty(t, series(t, reg, agent.MetricLinkBytes))
	assert.Empty(t, series(t, reg, agent.MetricLinkHandshake))

	// One registry, one agent.
	scfg, err := agentpki.ServerConfig(p.ca.PEM, p.agentA.TLS)
	require.NoError(t, err)
	_, err = agent.NewServer(scfg, agent.WithFencer(f), agent.WithMetrics(reg))
	var are prometheus.AlreadyRegisteredError
	require.ErrorAs(t, err, &are)
}

// serveMetrics serves reg's metrics on loopback until the test ends and
// returns their URL.
func serveMetrics(t *testing.T, reg prometheus.Gatherer) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- metrics.ServeListener(ctx, l, reg) }()
	t.Cleanup(func() {
		cancel()
		assert.NoError(t, <-done, "the metrics server's end")
	})
	return "http://" + l.Addr().String() + metrics.Path
}

// scrapeMetrics GETs url and returns its samples by series, as exposed
// ("name{labels}").
func scrapeMetrics(t *testing.T, url string) map[string]float64 {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out, err := promtest.Lines(body)
	require.NoError(t, err)
	return out
}

// val is series key's value in a scrape; the series must be there.
func val(t *testing.T, scraped map[string]float64, key string) float64 {
	t.Helper()
	v, ok := scraped[key]
	require.True(t, ok, "no series %s", key)
	return v
}
