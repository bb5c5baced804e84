// Package agent serves one host's sealift backends over gRPC with mutual
// TLS, and provides clients that implement the contracts (package fence,
// ...) over it, so a controller builds migration.Environment from remote
// hosts with no change to package migration and no import of a backend.
//
// An agent is embeddable: a VM manager's node daemon calls NewServer with
// the backends it already runs. cmd/sealift-agent is the stand-alone
// daemon. Mutual TLS is the only transport: NewServer refuses a nil TLS
// config, and agent/agentpki's ServerConfig accepts only clients whose
// certificate carries the controller role.
//
// Served so far: the Fencer contract (with fence.Holder where the backend
// holds), the ConnAuditor, the RouteWatcher (a routing core's agent) and
// the Hypervisor, whose Migrate streams progress and the switchover to
// the controller, which runs its hook and answers; and the LinkEnd
// (tunnel.Pair composes two hosts' ends into a SecureLinker; no key
// crosses). The link backends' LinkEnds follow (issue 12).
//
// WithMetrics adds Prometheus metrics: each call's latency by method and
// code, and, read at scrape time, the host's fences and link ends with
// their counters (package metrics serves a registry over HTTP).
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// Server is one host's agent.
type Server struct {
	g       *grpc.Server
	log     *slog.Logger
	fencer  fence.Fencer
	auditor conn.ConnAuditor
	router  routing.RouteWatcher
	hv      hypervisor.Hypervisor
	ends    tunnel.LinkEnd
	// metricsReg receives the agent's metrics (WithMetrics; nil: none).
	metricsReg prometheus.Registerer
}

// Option configures a Server.
type Option func(*Server)

// WithFencer serves f as the host's Fencer (and as its fence.Holder if f
// is one).
func WithFencer(f fence.Fencer) Option { return func(s *Server) { s.fencer = f } }

// WithLogger sets the logger (default: discard). Each call is logged
// with its method, the caller's identity, its duration and its code.
func WithLogger(l *slog.Logger) Option { return func(s *Server) { s.log = l } }

// ErrNoTLS: NewServer got no TLS config; an agent serves mutual TLS only.
var ErrNoTLS = errors.New("agent: a TLS config is required (mutual TLS only)")

// NewServer returns an agent serving the given backends over tlsConf
// (agentpki.ServerConfig builds one from the operator's CA).
func NewServer(tlsConf *tls.Config, opts ...Option) (*Server, error) {
	if tlsConf == nil || tlsConf.ClientAuth != tls.RequireAndVerifyClientCert {
		return nil, ErrNoTLS
	}
	s := &Server{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, o := range opts {
		o(s)
	}
	m, err := s.setupMetrics()
	if err != nil {
		return nil, err
	}
	unary := []grpc.UnaryServerInterceptor{s.logCall}
	var stream []grpc.StreamServerInterceptor
	if m != nil {
		unary, stream = append(unary, m.unary), append(stream, m.stream)
	}
	s.g = grpc.NewServer(grpc.Creds(credentials.NewTLS(tlsConf)), grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...))
	if s.fencer != nil {
		agentpb.RegisterFencerServer(s.g, &fencerServer{f: s.fencer})
	}
	if s.auditor != nil {
		agentpb.RegisterConnAuditorServer(s.g, &connServer{a: s.auditor})
	}
	if s.ends != nil {
		agentpb.RegisterLinkEndServer(s.g, &endServer{e: s.ends})
	}
	if s.hv != nil {
		agentpb.RegisterHypervisorServer(s.g, &hvServer{h: s.hv})
	}
	if s.router != nil {
		agentpb.RegisterRouteWatcherServer(s.g, &routingServer{r: s.router})
	}
	if m != nil {
		m.initMethods(s.g)
	}
	return s, nil
}

// Serve accepts connections on l until Stop.
func (s *Server) Serve(l net.Listener) error { return s.g.Serve(l) }

// Stop stops accepting and waits for the calls in flight.
func (s *Server) Stop() { s.g.GracefulStop() }

// logCall logs each call with the caller's identity (its certificate's
// sealift:// URI) and outcome.
func (s *Server) logCall(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := h(ctx, req)
	caller := "unknown"
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.PeerCertificates) > 0 {
			if role, name, ierr := agentpki.IdentityOf(ti.State.PeerCertificates[0]); ierr == nil {
				caller = string(role) + "/" + name
			}
		}
	}
	s.log.Info("call", "method", info.FullMethod, "caller", caller, "ms", float64(time.Since(start).Microseconds())/1000,
		"code", status.Code(err).String())
	return resp, err
}
