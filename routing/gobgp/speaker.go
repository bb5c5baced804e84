package gobgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
)

// Speaker describes the BGP speaker that New builds and runs: the routing
// core's (or, for tests and the target side, another environment's).
type Speaker struct {
	AS       uint32
	RouterID netip.Addr
	// ListenAddrs are the addresses the speaker accepts sessions on, in
	// the watcher's host (default: every IPv4 address there).
	ListenAddrs []netip.Addr
	// ListenPort: 0 is 179, -1 starts no listener.
	ListenPort int32
	Neighbors  []Neighbor
}

// Neighbor is a BGP peer of the speaker.
type Neighbor struct {
	Address netip.Addr
	AS      uint32
	// Passive waits for the neighbor to connect. It is forced when the
	// watcher's host is another namespace than the program's: GoBGP dials
	// from goroutines that do not run in that namespace.
	Passive bool
}

// Validate names the first bad field.
func (s Speaker) Validate() error {
	if s.AS == 0 {
		return fmt.Errorf("%w: Speaker.AS is 0", routing.ErrInvalid)
	}
	if !s.RouterID.Is4() {
		return fmt.Errorf("%w: Speaker.RouterID %q is not an IPv4 address", routing.ErrInvalid, s.RouterID)
	}
	if s.ListenPort < -1 {
		return fmt.Errorf("%w: Speaker.ListenPort %d (want -1, 0 or a port)", routing.ErrInvalid, s.ListenPort)
	}
	for i, a := range s.ListenAddrs {
		if !a.IsValid() {
			return fmt.Errorf("%w: Speaker.ListenAddrs[%d] is not an address", routing.ErrInvalid, i)
		}
	}
	seen := map[netip.Addr]bool{}
	for i, n := range s.Neighbors {
		if !n.Address.IsValid() {
			return fmt.Errorf("%w: Speaker.Neighbors[%d].Address is not an address", routing.ErrInvalid, i)
		}
		if n.AS == 0 {
			return fmt.Errorf("%w: Speaker.Neighbors[%d].AS is 0 (neighbor %s)", routing.ErrInvalid, i, n.Address)
		}
		if seen[n.Address] {
			return fmt.Errorf("%w: Speaker.Neighbors[%d].Address %s is listed twice", routing.ErrInvalid, i, n.Address)
		}
		seen[n.Address] = true
	}
	return nil
}

// startSpeaker builds and starts a GoBGP server for sp whose listeners
// live in host's namespace.
func startSpeaker(ctx context.Context, host string, sp Speaker, log *slog.Logger) (*server.BgpServer, error) {
	hook := &serveHook{}
	s := server.NewBgpServer(server.LoggerOption(slogAdapter{log}), server.TimingHookOption(hook))
	go s.Serve()

	port := sp.ListenPort
	if port == 0 {
		port = 179
	}
	addrs := make([]string, 0, len(sp.ListenAddrs))
	for _, a := range sp.ListenAddrs {
		addrs = append(addrs, a.String())
	}
	if len(addrs) == 0 {
		addrs = []string{"0.0.0.0"}
	}
	start := func() error {
		return s.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
			Asn: sp.AS, RouterId: sp.RouterID.String(), ListenPort: port, ListenAddresses: addrs,
		}})
	}
	var err error
	if host == "" || port < 0 {
		err = start()
	} else {
		ns, oerr := nsutil.Open(host)
		if oerr != nil {
			s.Stop()
			return nil, fmt.Errorf("gobgp: speaker host: %w", oerr)
		}
		err = hook.inNetns(ctx, s, ns, start)
		ns.Close()
	}
	if err != nil {
		s.Stop()
		return nil, fmt.Errorf("gobgp: start speaker AS %d router id %s in %q: %w", sp.AS, sp.RouterID, host, err)
	}
	for _, n := range sp.Neighbors {
		passive := n.Passive || host != ""
		if passive && !n.Passive {
			log.Debug("neighbor made passive: the speaker runs in another netns", "neighbor", n.Address, "host", host)
		}
		err := s.AddPeer(ctx, &api.AddPeerRequest{Peer: &api.Peer{
			Conf:      &api.PeerConf{NeighborAddress: n.Address.String(), PeerAsn: n.AS},
			Transport: &api.Transport{PassiveMode: passive},
			Timers:    &api.Timers{Config: &api.TimersConfig{ConnectRetry: 5}},
			AfiSafis:  unicastFamilies(),
		}})
		if err != nil {
			s.Stop()
			return nil, fmt.Errorf("gobgp: add neighbor %s AS %d: %w", n.Address, n.AS, err)
		}
	}
	log.Info("bgp speaker started", "host", host, "as", sp.AS, "router_id", sp.RouterID, "listen", addrs, "port", port, "neighbors", len(sp.Neighbors))
	return s, nil
}

// unicastFamilies are the address families every session negotiates:
// IPv4 and IPv6 unicast, whatever the neighbour's address family (GoBGP
// gives a neighbour without configured families only its own address's,
// so a dual-stack subnet's IPv6 half would never cross an IPv4 session).
func unicastFamilies() []*api.AfiSafi {
	var out []*api.AfiSafi
	for _, afi := range []api.Family_Afi{api.Family_AFI_IP, api.Family_AFI_IP6} {
		out = append(out, &api.AfiSafi{Config: &api.AfiSafiConfig{
			Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true}})
	}
	return out
}
