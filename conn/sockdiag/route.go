package sockdiag

import (
	"net/netip"

	"github.com/vishvananda/netlink"
)

// devices derives the interface a socket's traffic leaves by towards its
// remote end, with one FIB lookup per (local, remote address, mark) per
// List.
type devices struct {
	h     *netlink.Handle
	names map[int]string
	cache map[devKey]string
}

type devKey struct {
	local, remote netip.Addr
	mark          uint32
}

func newDevices(h *netlink.Handle) *devices {
	return &devices{h: h, cache: make(map[devKey]string)}
}

// of returns the output device from local towards remote (source policy
// routing counts), or "" when there is no route.
func (d *devices) of(local, remote netip.Addr, mark uint32) string {
	k := devKey{local, remote, mark}
	if n, ok := d.cache[k]; ok {
		return n
	}
	n := d.lookup(remote, &netlink.RouteGetOptions{Mark: mark, SrcAddr: local.AsSlice()})
	if n == "" { // e.g. a local address not (or no longer) configured
		n = d.lookup(remote, &netlink.RouteGetOptions{Mark: mark})
	}
	d.cache[k] = n
	return n
}

func (d *devices) lookup(a netip.Addr, o *netlink.RouteGetOptions) string {
	rs, err := d.h.RouteGetWithOptions(a.AsSlice(), o)
	if err != nil || len(rs) == 0 || rs[0].LinkIndex == 0 {
		return ""
	}
	return d.name(rs[0].LinkIndex)
}

func (d *devices) loadNames() {
	d.names = make(map[int]string)
	if links, err := d.h.LinkList(); err == nil {
		for _, l := range links {
			d.names[l.Attrs().Index] = l.Attrs().Name
		}
	}
}

// name is the name of interface index i ("" if unknown).
func (d *devices) name(i int) string {
	if d.names == nil {
		d.loadNames()
	}
	return d.names[i]
}
