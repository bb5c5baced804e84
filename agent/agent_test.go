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
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/internal/lab"
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

// TestRemoteFencer: fence/nft behind an agent, used through the client
// as a local fence.Fencer: the fence blocks the VM's traffic for real,
// List returns it, the sentinels survive the network (errors.Is), the
// client is a fence.Holder because nft holds, and a request that does
// not decode is refused at the agent naming the field, with nothing
// touched.
func TestRemoteFencer(t *testing.T) {
	lab.RequireRoot(t)
	w := lab.New(t)
	p := newPKI(t)
	addr := p.serve(t, agent.WithFencer(nft.New(nft.WithHost(w.A))))
	c := p.dial(t, addr, p.ctl.TLS)
	ctx := context.Background()
	f, err := c.Fencer(ctx)
	require.NoError(t, err)
	_, holds := f.(fence.Holder)
	assert.True(t, holds, "nft holds: the remote fencer must be a fence.Holder")

	ping := func() int {
		n, _ := lab.Ping(w.Peer, lab.VMAddr, 2, 500*time.Millisecond)
		return n
	}
	require.NotZero(t, ping(), "the VM answers before the fence")
	spec := fence.Spec{VM: "vm-1", Port: "vm0", Addrs: []netip.Addr{lab.VMAddr}}
	require.NoError(t, f.Fence(ctx, spec))
	assert.Zero(t, ping(), "the remote fence lets the peer's pings through")
	fs, err := f.List(ctx)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	assert.Equal(t, spec, fs[0].Spec)
	assert.Equal(t, "nft", fs[0].Backend)

	n, err := f.(fence.Holder).Release(ctx, spec.VM)
	require.NoError(t, err)
	assert.Zero(t, n, "a fence without Hold holds nothing")
	require.NoError(t, f.Lift(ctx, spec.VM))
	assert.ErrorIs(t, f.Lift(ctx, spec.VM), fence.ErrNotFenced)
	assert.ErrorIs(t, f.Fence(ctx, fence.Spec{VM: "vm-2", Port: "nosuch0"}), fence.ErrNoPort)
	assert.NotZero(t, ping(), "the VM answers after the lift")

	// At the network boundary: what a client that skips validation sends.
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
	fs, err = f.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, fs, "a refused request touched the host")
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
