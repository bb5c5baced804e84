package gobgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/routing"
)

// apiFamily is the unicast address family of p.
func apiFamily(p netip.Prefix) *api.Family {
	if p.Addr().Is4() {
		return &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}
	}
	return &api.Family{Afi: api.Family_AFI_IP6, Safi: api.Family_SAFI_UNICAST}
}

// pathPrefix returns the prefix a path is for.
func pathPrefix(p *api.Path) (netip.Prefix, bool) {
	nlri, err := apiutil.GetNativeNlri(p)
	if err != nil {
		return netip.Prefix{}, false
	}
	pfx, err := netip.ParsePrefix(nlri.String())
	if err != nil {
		return netip.Prefix{}, false
	}
	return pfx, true
}

// nextHop returns a path's next hop (invalid for none or an unspecified
// one, i.e. a locally originated path).
func nextHop(p *api.Path) netip.Addr {
	attrs, err := apiutil.GetNativePathAttributes(p)
	if err != nil {
		return netip.Addr{}
	}
	var ip net.IP
	for _, a := range attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			ip = a.Value
		case *bgp.PathAttributeMpReachNLRI:
			if ip == nil {
				ip = a.Nexthop
			}
		}
	}
	addr, ok := netip.AddrFromSlice(ip)
	if !ok || addr.Unmap().IsUnspecified() {
		return netip.Addr{}
	}
	if ip.To4() != nil {
		addr = addr.Unmap()
	}
	return addr
}

// bestPaths returns the speaker's best paths to prefix in its global RIB
// (ListPath marks best paths reliably; the best-path watch does not).
func (w *Watcher) bestPaths(ctx context.Context, prefix netip.Prefix) ([]*api.Path, error) {
	var best []*api.Path
	err := w.s.ListPath(ctx, &api.ListPathRequest{
		TableType: api.TableType_GLOBAL,
		Family:    apiFamily(prefix),
		Prefixes:  []*api.TableLookupPrefix{{Prefix: prefix.String(), Type: api.TableLookupPrefix_EXACT}},
	}, func(d *api.Destination) {
		for _, p := range d.Paths {
			if p.Best && !p.IsWithdraw {
				if pp, ok := pathPrefix(p); ok && pp == prefix {
					best = append(best, p)
				}
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("gobgp: list paths to %s: %w", prefix, err)
	}
	return best, nil
}

// toRoute converts a best path; Device is the host's interface towards
// the next hop, if the kernel there has a route to it.
func (w *Watcher) toRoute(prefix netip.Prefix, p *api.Path) routing.Route {
	r := routing.Route{Prefix: prefix, Via: nextHop(p), Protocol: "bgp"}
	if r.Via.IsValid() {
		r.Device = w.deviceTo(r.Via)
	}
	return r
}

// deviceTo asks the host's kernel which interface reaches addr ("" if
// none or on error).
func (w *Watcher) deviceTo(addr netip.Addr) string {
	h, err := nsutil.Handle(w.host, unix.NETLINK_ROUTE)
	if err != nil {
		return ""
	}
	defer h.Close()
	rs, err := h.RouteGet(addr.AsSlice())
	if err != nil || len(rs) == 0 || rs[0].LinkIndex == 0 {
		return ""
	}
	l, err := h.LinkByIndex(rs[0].LinkIndex)
	if err != nil {
		return ""
	}
	return l.Attrs().Name
}
