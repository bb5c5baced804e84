package agent_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// TestRemoteConnAuditor: conn/conntrack behind an agent, used through
// the client: it lists the VM's connection through host A and resets
// it (the VM's socket sees the reset), as a local auditor does.
func TestRemoteConnAuditor(t *testing.T) {
	lab.RequireRoot(t)
	w := lab.New(t)
	out, err := lab.Exec(w.A, "nft", "add table inet t; add chain inet t f { type filter hook forward priority 0; }; add rule inet t f ct state established counter")
	require.NoError(t, err, "%s", out)
	p := newPKI(t)
	addr := p.serve(t, agent.WithConnAuditor(conntrack.New(conntrack.WithHost(w.A))))
	a := p.dial(t, addr, p.ctl.TLS).ConnAuditor()
	ctx := context.Background()

	var l net.Listener
	require.NoError(t, nsutil.Do(w.Peer2, func() error {
		var err error
		l, err = net.Listen("tcp4", "10.2.0.20:8080")
		return err
	}))
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	var c net.Conn
	require.NoError(t, nsutil.Do(w.VM, func() error {
		var err error
		c, err = net.DialTimeout("tcp4", "10.2.0.20:8080", 3*time.Second)
		return err
	}))
	defer c.Close()
	peerSide := <-accepted
	defer peerSide.Close()
	_, err = c.Write([]byte("hello"))
	require.NoError(t, err)

	// Host is the controller's name for the host (Environment.Host): the
	// agent acts in its own, whatever the name.
	sel := conn.Selector{Host: "host-a", Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}
	conns, err := a.List(ctx, sel)
	require.NoError(t, err)
	require.Len(t, conns, 1, "%v", conns)
	assert.Equal(t, conn.TCP, conns[0].Proto)
	assert.Equal(t, netip.MustParseAddrPort("10.2.0.20:8080"), conns[0].Remote)
	res, err := a.Reset(ctx, sel, conns)
	require.NoError(t, err)
	assert.Equal(t, conn.ResetResult{Reset: 1}, res)
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 16))
	assert.True(t, errors.Is(err, syscall.ECONNRESET), "the VM's socket after the remote reset: %v", err)

	_, err = a.List(ctx, conn.Selector{})
	assert.ErrorIs(t, err, conn.ErrInvalid, "checked at the client")
}

// countingAuditor records calls: refused requests must reach none.
type countingAuditor struct {
	mu    sync.Mutex
	calls int
}

func (a *countingAuditor) List(context.Context, conn.Selector) ([]conn.Conn, error) {
	a.mu.Lock()
	a.calls++
	a.mu.Unlock()
	return nil, nil
}

func (a *countingAuditor) Reset(context.Context, conn.Selector, []conn.Conn) (conn.ResetResult, error) {
	a.mu.Lock()
	a.calls++
	a.mu.Unlock()
	return conn.ResetResult{}, nil
}

// TestConnAuditorRefusesBadInput: what a client that skips validation
// sends is refused at the agent, naming the field and the value, and
// the backend never sees it.
func TestConnAuditorRefusesBadInput(t *testing.T) {
	p := newPKI(t)
	ca := &countingAuditor{}
	addr := p.serve(t, agent.WithConnAuditor(ca))
	raw := agentpb.NewConnAuditorClient(rawConn(t, p, addr))
	ctx := context.Background()
	good := &agentpb.Selector{Addrs: []string{"10.1.0.10/32"}}
	for _, c := range []struct {
		req   *agentpb.ConnResetRequest
		field string
	}{
		{&agentpb.ConnResetRequest{}, "selector is missing"},
		{&agentpb.ConnResetRequest{Selector: &agentpb.Selector{}}, "Selector.Addrs is empty"},
		{&agentpb.ConnResetRequest{Selector: &agentpb.Selector{Addrs: []string{"10.1.0.10"}}}, `selector.addrs[0] "10.1.0.10"`},
		{&agentpb.ConnResetRequest{Selector: good, Conns: []*agentpb.Conn{{Proto: "sctp", Local: "10.1.0.10:1", Remote: "10.2.0.20:2"}}}, `conns[0].proto "sctp"`},
		{&agentpb.ConnResetRequest{Selector: good, Conns: []*agentpb.Conn{{Proto: "tcp", Local: "10.1.0.10", Remote: "10.2.0.20:2"}}}, `conns[0].local "10.1.0.10"`},
	} {
		_, err := raw.Reset(ctx, c.req)
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.ErrorContains(t, err, c.field)
	}
	ca.mu.Lock()
	assert.Zero(t, ca.calls, "a refused request reached the backend")
	ca.mu.Unlock()
}
