package gobgp

import (
	"context"
	"fmt"
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/sealift/sealift/routing"
)

// Announce originates prefix from the speaker with nextHop: what the
// target environment does once the moved subnet is reachable there.
// Announcing it again with another next hop replaces the path.
func (w *Watcher) Announce(ctx context.Context, prefix netip.Prefix, nextHop netip.Addr) error {
	p, err := localPath(prefix, nextHop)
	if err != nil {
		return err
	}
	if _, err := w.s.AddPath(ctx, &api.AddPathRequest{TableType: api.TableType_GLOBAL, Path: p}); err != nil {
		return fmt.Errorf("gobgp: announce %s next hop %s: %w", prefix, nextHop, err)
	}
	w.log.Info("bgp prefix announced", "prefix", prefix, "next_hop", nextHop)
	return nil
}

// Withdraw withdraws a prefix that Announce originated with nextHop.
func (w *Watcher) Withdraw(ctx context.Context, prefix netip.Prefix, nextHop netip.Addr) error {
	p, err := localPath(prefix, nextHop)
	if err != nil {
		return err
	}
	if err := w.s.DeletePath(ctx, &api.DeletePathRequest{TableType: api.TableType_GLOBAL, Family: p.Family, Path: p}); err != nil {
		return fmt.Errorf("gobgp: withdraw %s: %w", prefix, err)
	}
	w.log.Info("bgp prefix withdrawn", "prefix", prefix)
	return nil
}

// localPath builds a unicast path with origin IGP.
func localPath(prefix netip.Prefix, nextHop netip.Addr) (*api.Path, error) {
	if !prefix.IsValid() || prefix != prefix.Masked() {
		return nil, fmt.Errorf("%w: prefix %s is not a valid masked prefix", routing.ErrInvalid, prefix)
	}
	if !nextHop.IsValid() || nextHop.Is4() != prefix.Addr().Is4() {
		return nil, fmt.Errorf("%w: next hop %s does not fit prefix %s", routing.ErrInvalid, nextHop, prefix)
	}
	nlri, err := anypb.New(&api.IPAddressPrefix{PrefixLen: uint32(prefix.Bits()), Prefix: prefix.Addr().String()})
	if err != nil {
		return nil, err
	}
	origin, err := anypb.New(&api.OriginAttribute{Origin: 0})
	if err != nil {
		return nil, err
	}
	fam := apiFamily(prefix)
	var nh *anypb.Any
	if prefix.Addr().Is4() {
		nh, err = anypb.New(&api.NextHopAttribute{NextHop: nextHop.String()})
	} else {
		nh, err = anypb.New(&api.MpReachNLRIAttribute{Family: fam, NextHops: []string{nextHop.String()}, Nlris: []*anypb.Any{nlri}})
	}
	if err != nil {
		return nil, err
	}
	return &api.Path{Family: fam, Nlri: nlri, Pattrs: []*anypb.Any{origin, nh}}, nil
}
