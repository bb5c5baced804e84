package agent_test

import (
	"bytes"
	"context"
	"net/http/httptest"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/wgctrl"
	"google.golang.org/grpc"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// TestRemoteWireGuardEnds: real WireGuard ends on hosts A and B, each
// behind its agent, composed by tunnel.Pair at the controller: the VM at
// B and its peer at A talk through the link, and neither device's
// private key appears in any RPC the controller made (read back from the
// devices themselves), in any form, nor in the agents' metrics, which
// report each active end with its counters and handshake, and drop its
// series once it is closed.
func TestRemoteWireGuardEnds(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	// The VM lives at B: its endpoint at A goes, one with its address
	// appears on B's bridge.
	h, err := lab.Handle(l.A)
	require.NoError(t, err)
	if port, err := h.LinkByName("vm0"); err == nil {
		require.NoError(t, h.LinkDel(port))
	}
	h.Close()
	require.NoError(t, netns.DeleteNamed(l.VM))
	vm, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	require.NoError(t, err)

	p := newPKI(t)
	rec := &recorder{}
	now := time.Now()
	ends := map[string]tunnel.LinkEnd{}
	regs := map[string]*prometheus.Registry{}
	for name, host := range map[string]string{"host-a": l.A, "host-b": l.B} {
		id, err := p.ca.Issue(agentpki.RoleAgent, name, now.Add(-time.Minute), now.Add(time.Hour))
		require.NoError(t, err)
		regs[name] = prometheus.NewPedanticRegistry()
		addr := p.serveAs(t, id, agent.WithLinkEnd(wireguard.NewEnd(host, wireguard.WithBackend(wireguard.Userspace))),
			agent.WithMetrics(regs[name]))
		ccfg, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, name)
		require.NoError(t, err)
		c, err := agent.Dial(addr, ccfg, grpc.WithUnaryInterceptor(rec.intercept))
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		ends[name] = c.LinkEnd()
	}
	pair := tunnel.Pair{Secure: ends["host-a"], Remote: ends["host-b"]}
	ctx := context.Background()
	spec := tunnel.Spec{ID: "rw1", Kind: tunnel.WireGuard, ProxyARP: true,
		Secure: tunnel.End{Host: l.A, Underlay: lab.AUplink, Protected: []netip.Prefix{netip.PrefixFrom(lab.PeerAddr, 32)}},
		Remote: tunnel.End{Host: l.B, Underlay: lab.BUnderlay, Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}}
	link, err := pair.Prepare(ctx, spec)
	require.NoError(t, err)
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	require.NoError(t, pair.Activate(ctx, spec.ID))
	n, err := lab.Ping(l.Peer, lab.VMAddr, 5, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "the peer reaches the VM through the link")
	n, err = lab.Ping(vm, lab.PeerAddr, 5, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 5, n, "and back")
	_, err = pair.Verify(ctx, spec.ID)
	require.NoError(t, err)
	// Each agent's metrics: its active end, its counters (each end sent
	// and received ten 84-byte ICMP packets, encrypted), a handshake since
	// the start.
	for name, reg := range regs {
		role := map[string]string{"host-a": "secure", "host-b": "remote"}[name]
		assert.Equal(t, 1.0, series(t, reg, agent.MetricLinkEnds)[`active="true",kind="wireguard",role="`+role+`"`].Value, name)
		b := series(t, reg, agent.MetricLinkBytes)
		for _, dir := range []string{"rx", "tx"} {
			assert.Greater(t, b[`direction="`+dir+`",kind="wireguard",link="rw1"`].Value, 10*84.0, "%s: %s bytes", name, dir)
		}
		hs := series(t, reg, agent.MetricLinkHandshake)[`link="rw1"`].Value
		assert.InDelta(t, float64(time.Now().Unix()), hs, float64(time.Since(now)/time.Second)+2, "%s: last handshake", name)
	}

	var privs [][]byte
	for _, e := range []struct{ host, dev string }{{l.A, link.SecureDevice}, {l.B, link.RemoteDevice}} {
		require.NoError(t, nsutil.Do(e.host, func() error {
			c, err := wgctrl.New()
			if err != nil {
				return err
			}
			defer c.Close()
			d, err := c.Device(e.dev)
			if err != nil {
				return err
			}
			privs = append(privs, d.PrivateKey[:], []byte(d.PrivateKey.String()))
			return nil
		}))
	}
	var exposed [][]byte // what a scrape of each agent serves
	for _, reg := range regs {
		w := httptest.NewRecorder()
		metrics.Handler(reg).ServeHTTP(w, httptest.NewRequest("GET", metrics.Path, nil))
		require.Equal(t, 200, w.Code)
		require.Contains(t, w.Body.String(), agent.MetricLinkBytes, "the scrape read something")
		exposed = append(exposed, w.Body.Bytes())
	}
	require.NoError(t, pair.Close(ctx, spec.ID))
	for name, reg := range regs {
		assert.Empty(t, series(t, reg, agent.MetricLinkBytes), "%s: the closed link's series", name)
	}
	for _, k := range privs {
		for _, m := range exposed {
			assert.False(t, bytes.Contains(m, k), "a device's private key in the metrics")
		}
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	require.NotEmpty(t, rec.msgs)
	for _, k := range privs {
		for _, m := range rec.msgs {
			assert.False(t, bytes.Contains(m, k), "a device's private key crossed the network")
		}
	}
}
