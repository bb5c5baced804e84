package agent_test

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/fence"
)

// pki is a throw-away CA with a controller and an agent ("host-a").
type pki struct {
	ca          *agentpki.CA
	ctl, agentA *agentpki.Identity
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca, err := agentpki.NewCA("sealift-test", time.Hour)
	require.NoError(t, err)
	now := time.Now()
	ctl, err := ca.Issue(agentpki.RoleController, "ctl", now.Add(-time.Minute), now.Add(time.Hour))
	require.NoError(t, err)
	a, err := ca.Issue(agentpki.RoleAgent, "host-a", now.Add(-time.Minute), now.Add(time.Hour))
	require.NoError(t, err)
	return &pki{ca: ca, ctl: ctl, agentA: a}
}

// serve starts an agent for host-a on loopback with the given backends.
func (p *pki) serve(t testing.TB, opts ...agent.Option) string {
	t.Helper()
	return p.serveAs(t, p.agentA, opts...)
}

// serveAs starts an agent with identity id.
func (p *pki) serveAs(t testing.TB, id *agentpki.Identity, opts ...agent.Option) string {
	t.Helper()
	scfg, err := agentpki.ServerConfig(p.ca.PEM, id.TLS)
	require.NoError(t, err)
	s, err := agent.NewServer(scfg, opts...)
	require.NoError(t, err)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

func (p *pki) dial(t testing.TB, addr string, cert tls.Certificate) *agent.Client {
	t.Helper()
	return p.dialAs(t, addr, cert, "host-a")
}

// dialAs connects to the agent that must be host.
func (p *pki) dialAs(t testing.TB, addr string, cert tls.Certificate, host string) *agent.Client {
	t.Helper()
	ccfg, err := agentpki.ClientConfig(p.ca.PEM, cert, host)
	require.NoError(t, err)
	c, err := agent.Dial(addr, ccfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestFencerRefusesBadInput: at the network boundary, what a client that
// skips validation sends is refused at the agent with InvalidArgument
// naming the field and value, and the backend never sees it. (What a
// remote fence does for real, and that its errors and capabilities
// cross, is fenceconform's, run behind an agent in conformance_test.go.)
func TestFencerRefusesBadInput(t *testing.T) {
	p := newPKI(t)
	cf := &countingFencer{}
	addr := p.serve(t, agent.WithFencer(cf))
	ctx := context.Background()
	raw := agentpb.NewFencerClient(rawConn(t, p, addr))
	for _, c := range []struct {
		spec  *agentpb.FenceSpec
		field string
	}{
		{nil, "spec is missing"},
		{&agentpb.FenceSpec{Vm: "vm-1", Port: "vm0", Addrs: []string{"10.1.0.x"}}, `spec.addrs[0] "10.1.0.x"`},
		{&agentpb.FenceSpec{Vm: "vm-1", Port: "vm0", Peers: []string{"10.2.0.1/24"}}, "Peers[0] 10.2.0.1/24 has host bits"},
		{&agentpb.FenceSpec{Vm: "", Port: "vm0"}, "VM is empty"},
	} {
		_, err := raw.Fence(ctx, &agentpb.FenceRequest{Spec: c.spec})
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.ErrorContains(t, err, c.field)
	}
	for _, call := range []func() error{
		func() error { _, err := raw.Lift(ctx, &agentpb.LiftRequest{}); return err },
	} {
		err := call()
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.ErrorContains(t, err, "vm is empty")
	}
	cf.mu.Lock()
	assert.Zero(t, cf.calls, "a refused request reached the backend")
	cf.mu.Unlock()
}

// rawConn is a gRPC connection without the client's checks.
func rawConn(t *testing.T, p *pki, addr string) *grpc.ClientConn {
	t.Helper()
	ccfg, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, "host-a")
	require.NoError(t, err)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ccfg)))
	require.NoError(t, err)
	t.Cleanup(func() { cc.Close() })
	return cc
}

// countingFencer records calls; the mTLS tests check that a refused
// client reaches none.
type countingFencer struct {
	mu    sync.Mutex
	calls int
}

func (f *countingFencer) hit() { f.mu.Lock(); f.calls++; f.mu.Unlock() }
func (f *countingFencer) Fence(context.Context, fence.Spec) error {
	f.hit()
	return nil
}
func (f *countingFencer) Lift(context.Context, string) error { f.hit(); return nil }
func (f *countingFencer) List(context.Context) ([]fence.Fence, error) {
	f.hit()
	return nil, nil
}

// TestMutualTLSOnly: the agent serves only a controller certificate of
// its CA: no certificate, another CA's, an agent's used as a client and
// an expired one are refused before any method runs; the controller
// refuses an agent whose certificate names another host. NewServer
// refuses to serve without mutual TLS.
func TestMutualTLSOnly(t *testing.T) {
	p := newPKI(t)
	cf := &countingFencer{}
	addr := p.serve(t, agent.WithFencer(cf))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	other, err := agentpki.NewCA("other", time.Hour)
	require.NoError(t, err)
	now := time.Now()
	otherCtl, err := other.Issue(agentpki.RoleController, "ctl", now.Add(-time.Minute), now.Add(time.Hour))
	require.NoError(t, err)
	expired, err := p.ca.Issue(agentpki.RoleController, "ctl", now.Add(-2*time.Hour), now.Add(-time.Hour))
	require.NoError(t, err)
	agentB, err := p.ca.Issue(agentpki.RoleAgent, "host-b", now.Add(-time.Minute), now.Add(time.Hour))
	require.NoError(t, err)

	refused := map[string]*tls.Config{}
	noCert, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, "host-a")
	require.NoError(t, err)
	noCert.Certificates = nil
	refused["no certificate"] = noCert
	for name, cert := range map[string]tls.Certificate{
		"another CA's controller": otherCtl.TLS, "an agent's certificate as client": agentB.TLS, "an expired controller": expired.TLS,
	} {
		cfg, err := agentpki.ClientConfig(p.ca.PEM, cert, "host-a")
		require.NoError(t, err)
		// Present it whatever CA the agent asks for: crypto/tls would
		// otherwise send no certificate at all for another CA's, and the
		// case would only repeat "no certificate".
		cert := cert
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		refused[name] = cfg
	}
	wrongHost, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, "host-b")
	require.NoError(t, err)
	refused["the agent is not the host the controller expects"] = wrongHost
	for name, cfg := range refused {
		c, err := agent.Dial(addr, cfg)
		require.NoError(t, err, name)
		_, err = c.Fencer(ctx)
		assert.ErrorIs(t, err, agent.ErrRemote, name)
		assert.ErrorContains(t, err, "Unavailable", name)
		c.Close()
	}
	cf.mu.Lock()
	assert.Zero(t, cf.calls, "a refused client reached the backend")
	cf.mu.Unlock()

	ok := p.dial(t, addr, p.ctl.TLS)
	f, err := ok.Fencer(ctx)
	require.NoError(t, err)
	_, holds := f.(fence.Holder)
	assert.False(t, holds, "a backend that does not hold is no fence.Holder remotely either")
	_, err = f.List(ctx)
	require.NoError(t, err)

	_, err = agent.NewServer(nil)
	assert.ErrorIs(t, err, agent.ErrNoTLS)
	_, err = agent.NewServer(&tls.Config{})
	assert.ErrorIs(t, err, agent.ErrNoTLS, "a server config that does not require client certificates")
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
