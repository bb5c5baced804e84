package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/tunnel"
)

// The agent's metric names (WithMetrics).
const (
	MetricRPCDuration      = "sealift_agent_rpc_duration_seconds"
	MetricFences           = "sealift_agent_fences"
	MetricLinkEnds         = "sealift_agent_link_ends"
	MetricLinkBytes        = "sealift_agent_link_bytes_total"
	MetricLinkHandshake    = "sealift_agent_link_last_handshake_timestamp_seconds"
	MetricCollectorSuccess = "sealift_agent_collector_success"
)

// collectTimeout bounds the backend calls of one scrape (List, Stats).
const collectTimeout = 5 * time.Second

// rpcBuckets: unary calls take milliseconds (the switchover hook's a
// fraction of one on loopback); Hypervisor.Migrate's stream lasts the
// whole migration.
var rpcBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800}

// WithMetrics registers the agent's metrics with reg (NewServer fails if
// reg refuses them, e.g. a second agent on one registry):
//
//   - sealift_agent_rpc_duration_seconds{method,code}: a histogram of each
//     call's duration (a stream's, Hypervisor.Migrate's, from its start to
//     its end) by gRPC method and status code;
//   - at scrape time, from the backends (each scrape's calls bounded by a
//     few seconds): sealift_agent_fences (the Fencer's List),
//     sealift_agent_link_ends{kind,role,active} (the LinkEnd's List) and,
//     for each active end whose LinkEnd reports counters
//     (tunnel.EndStatser), sealift_agent_link_bytes_total{link,kind,direction}
//     and sealift_agent_link_last_handshake_timestamp_seconds{link}
//     (WireGuard only); sealift_agent_collector_success{collector} says
//     whether each source answered (fences, link_ends, link_stats).
//
// The link label is the link's ID (per migration): only the ends this
// host holds now are reported, so its series end with the link. No key
// and no address is exposed.
func WithMetrics(reg prometheus.Registerer) Option { return func(s *Server) { s.metricsReg = reg } }

// serverMetrics are a Server's RPC metrics.
type serverMetrics struct {
	rpc *prometheus.HistogramVec
}

// setupMetrics registers the server's metrics with s.metricsReg (nil
// without it); their interceptors record the calls.
func (s *Server) setupMetrics() (*serverMetrics, error) {
	if s.metricsReg == nil {
		return nil, nil
	}
	m := &serverMetrics{rpc: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: MetricRPCDuration,
		Help:    "Duration of the agent's gRPC calls (a stream's from its start to its end), by method and status code.",
		Buckets: rpcBuckets}, []string{"method", "code"})}
	if err := s.metricsReg.Register(m.rpc); err != nil {
		return nil, fmt.Errorf("agent: register %s: %w", MetricRPCDuration, err)
	}
	if err := s.metricsReg.Register(newCollector(s)); err != nil {
		s.metricsReg.Unregister(m.rpc)
		return nil, fmt.Errorf("agent: register the backends' metrics: %w", err)
	}
	return m, nil
}

// initMethods makes each served method's OK series exist (count 0), so a
// rate over it starts at the first scrape.
func (m *serverMetrics) initMethods(g *grpc.Server) {
	for svc, info := range g.GetServiceInfo() {
		for _, meth := range info.Methods {
			m.rpc.WithLabelValues("/"+svc+"/"+meth.Name, codes.OK.String())
		}
	}
}

func (m *serverMetrics) observe(method string, start time.Time, err error) {
	m.rpc.WithLabelValues(method, status.Code(err).String()).Observe(time.Since(start).Seconds())
}

func (m *serverMetrics) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	m.observe(info.FullMethod, start, err)
	return resp, err
}

func (m *serverMetrics) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	start := time.Now()
	err := h(srv, ss)
	m.observe(info.FullMethod, start, err)
	return err
}

// collector reads the backends at scrape time.
type collector struct {
	s                                       *Server
	fences, ends, bytes, handshake, success *prometheus.Desc
}

func newCollector(s *Server) *collector {
	return &collector{s: s,
		fences: prometheus.NewDesc(MetricFences,
			"Fences this host's Fencer holds (installed, or found in the kernel from an earlier run).", nil, nil),
		ends: prometheus.NewDesc(MetricLinkEnds,
			"Secure link ends this host holds, by kind (wireguard, ipsec), role (secure, remote) and whether they carry traffic.",
			[]string{"kind", "role", "active"}, nil),
		bytes: prometheus.NewDesc(MetricLinkBytes,
			"Bytes an active link end received (rx) and sent (tx), as its encrypting layer counts them (WireGuard: ciphertext; XFRM: the SAs' inner bytes); link is the link's ID, reported while this host holds the end.",
			[]string{"link", "kind", "direction"}, nil),
		handshake: prometheus.NewDesc(MetricLinkHandshake,
			"Unix time of an active WireGuard link end's last completed handshake (age: time() minus it); link is the link's ID, reported while this host holds the end.",
			[]string{"link"}, nil),
		success: prometheus.NewDesc(MetricCollectorSuccess,
			"Whether the backend answered this scrape (1) or failed or timed out (0; the agent's log says why), by source: fences, link_ends, link_stats.",
			[]string{"collector"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.fences, c.ends, c.bytes, c.handshake, c.success} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it asks the backends.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), collectTimeout)
	defer cancel()
	ok := func(name string, err error) {
		v := 1.0
		if err != nil {
			v = 0
			c.s.log.Warn("metrics: collecting failed", "collector", name, "err", err)
		}
		ch <- prometheus.MustNewConstMetric(c.success, prometheus.GaugeValue, v, name)
	}
	if f := c.s.fencer; f != nil {
		fs, err := f.List(ctx)
		if err == nil {
			ch <- prometheus.MustNewConstMetric(c.fences, prometheus.GaugeValue, float64(len(fs)))
		}
		ok("fences", err)
	}
	if c.s.ends == nil {
		return
	}
	es, err := c.s.ends.List(ctx)
	ok("link_ends", err)
	if err != nil {
		return
	}
	type endKey struct {
		kind   tunnel.Kind
		role   tunnel.Role
		active bool
	}
	counts := map[endKey]int{}
	for _, kind := range []tunnel.Kind{tunnel.WireGuard, tunnel.IPsec} {
		for _, role := range []tunnel.Role{tunnel.SecureRole, tunnel.RemoteRole} {
			counts[endKey{kind, role, true}], counts[endKey{kind, role, false}] = 0, 0
		}
	}
	for _, e := range es {
		counts[endKey{e.Spec.Kind, e.Role, e.Active}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(c.ends, prometheus.GaugeValue, float64(n), string(k.kind), string(k.role), strconv.FormatBool(k.active))
	}
	st, isStatser := c.s.ends.(tunnel.EndStatser)
	if !isStatser {
		return
	}
	var errs []error
	seen := map[string]bool{}
	for _, e := range es {
		id := e.Spec.ID
		if !e.Active || seen[id] {
			continue // (one ID per host; a duplicate series would fail the scrape)
		}
		seen[id] = true
		s, err := st.Stats(ctx, id)
		if errors.Is(err, tunnel.ErrNoLink) {
			continue // closed since List, or held by an end that reports no counters
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("link %s: %w", id, err))
			continue
		}
		kind := string(e.Spec.Kind)
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.RxBytes), id, kind, "rx")
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.TxBytes), id, kind, "tx")
		if !s.LastHandshake.IsZero() {
			ch <- prometheus.MustNewConstMetric(c.handshake, prometheus.GaugeValue, float64(s.LastHandshake.UnixNano())/1e9, id)
		}
	}
	var err2 error
	if len(errs) > 0 {
		err2 = fmt.Errorf("%d of the active ends: %w", len(errs), errs[0])
	}
	ok("link_stats", err2)
}
