package agent_test

import (
	"os"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/connconform"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/sockdiag"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/fenceconform"
	"github.com/sealift/sealift/fence/linkstate"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/hvconform"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nshv"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
	"github.com/sealift/sealift/routing/routingconform"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/linkconform"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// The contracts' conformance suites, each run against a real backend
// behind an agent (gRPC, mutual TLS on loopback, throw-away
// certificates), used through the controller's client: the same suites
// the backends run locally (their conform_test.go), so a remote backend
// is held to exactly the local one's promises.

// behindAgent serves opts from a fresh agent and returns the
// controller's client of it.
func behindAgent(t testing.TB, opts ...agent.Option) *agent.Client {
	t.Helper()
	p := newPKI(t)
	return p.dial(t, p.serve(t, opts...), p.ctl.TLS)
}

// remoteFencer is a fenceconform harness: the backend newFencer makes
// for a host, behind its own agent (a later call for the same host is a
// restarted agent).
func remoteFencer(newFencer func(host string) fence.Fencer) fenceconform.Harness {
	return fenceconform.Harness{New: func(t testing.TB, host string) fence.Fencer {
		f, err := behindAgent(t, agent.WithFencer(newFencer(host))).Fencer(t.Context())
		require.NoError(t, err)
		return f
	}}
}

func TestConformFencerNft(t *testing.T) {
	fenceconform.Run(t, remoteFencer(func(host string) fence.Fencer { return nft.New(nft.WithHost(host)) }))
}

func TestConformFencerLinkstate(t *testing.T) {
	fenceconform.Run(t, remoteFencer(func(host string) fence.Fencer { return linkstate.New(linkstate.WithHost(host)) }))
}

func TestConformRouteWatcherNetlink(t *testing.T) {
	routingconform.Run(t, routingconform.Harness{New: func(t testing.TB, host string) routing.RouteWatcher {
		return behindAgent(t, agent.WithRouteWatcher(netlinkroute.New(netlinkroute.WithHost(host)))).RouteWatcher()
	}})
}

func TestConformConnAuditorConntrack(t *testing.T) {
	connconform.Run(t, connconform.Harness{Vantage: connconform.Router, New: func(t testing.TB, host string) conn.ConnAuditor {
		if nsutil.Check(host) == nil { // conntrack lists what the host tracks
			out, err := lab.Exec(host, "nft", "add table inet track; add chain inet track tracked { type filter hook forward priority 0; }; add rule inet track tracked ct state established counter")
			require.NoError(t, err, "%s", out)
		}
		return behindAgent(t, agent.WithConnAuditor(conntrack.New(conntrack.WithHost(host)))).ConnAuditor()
	}})
}

func TestConformConnAuditorSockdiag(t *testing.T) {
	connconform.Run(t, connconform.Harness{Vantage: connconform.Endpoint, New: func(t testing.TB, host string) conn.ConnAuditor {
		return behindAgent(t, agent.WithConnAuditor(sockdiag.New(sockdiag.WithHost(host)))).ConnAuditor()
	}})
}

// The source's and the target's hypervisors each behind its agent; the
// hook runs here, at the controller.
func TestConformHypervisorNshv(t *testing.T) {
	hvconform.Run(t, hvconform.Harness{New: func(t testing.TB) hvconform.World {
		return nshv.ConformWorld(t, func(t testing.TB, h hypervisor.Hypervisor) hypervisor.Hypervisor {
			return behindAgent(t, agent.WithHypervisor(h)).Hypervisor()
		})
	}})
}

// Each host's wireguard.End behind its agent (a state dir per host, read
// again by a restarted agent's End); the controller composes the ends.
func TestConformLinkEndWireGuard(t *testing.T) {
	var dirs sync.Map // host -> state dir
	linkconform.Run(t, linkconform.Harness{Kind: tunnel.WireGuard, New: func(t testing.TB, host string) tunnel.LinkEnd {
		dir, err := os.MkdirTemp("", "sealift-end-")
		require.NoError(t, err)
		if d, loaded := dirs.LoadOrStore(host, dir); loaded {
			os.Remove(dir)
			dir = d.(string)
		} else {
			t.Cleanup(func() { os.RemoveAll(dir) })
		}
		e := wireguard.NewEnd(host, wireguard.WithBackend(wireguard.Userspace), wireguard.WithStateDir(dir))
		return behindAgent(t, agent.WithLinkEnd(e)).LinkEnd()
	}})
}
