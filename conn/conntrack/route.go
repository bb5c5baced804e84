package conntrack

import (
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// devices derives the interface the host forwards a flow's packets from
// the VM through: a FIB lookup for the remote address as if a packet from
// the VM's address arrived on the interface towards the VM (so source
// policy routing counts), or a plain lookup where that is not possible
// (the VM's address is the host's own). Lookups are cached per List.
type devices struct {
	h     *netlink.Handle
	names map[int]string
	in    map[netip.Addr]int
	cache map[devKey]string
}

type devKey struct {
	local, remote netip.Addr
	mark          uint32
}

func newDevices(h *netlink.Handle) *devices {
	return &devices{h: h, in: make(map[netip.Addr]int), cache: make(map[devKey]string)}
}

// of returns the output device towards remote for a flow from local, or
// "" when there is no route.
func (d *devices) of(local, remote netip.Addr, mark uint32) string {
	k := devKey{local, remote, mark}
	if n, ok := d.cache[k]; ok {
		return n
	}
	n := ""
	if iif := d.towards(local); iif != 0 {
		n = d.lookup(remote, &netlink.RouteGetOptions{Mark: mark, SrcAddr: local.AsSlice(), IifIndex: iif})
	}
	if n == "" {
		n = d.lookup(remote, &netlink.RouteGetOptions{Mark: mark})
	}
	d.cache[k] = n
	return n
}

// towards is the index of the interface routing local, 0 if unknown or
// if local is one of the host's own addresses.
func (d *devices) towards(local netip.Addr) int {
	if i, ok := d.in[local]; ok {
		return i
	}
	i := 0
	rs, err := d.h.RouteGet(local.AsSlice())
	if err == nil && len(rs) > 0 && rs[0].Type != unix.RTN_LOCAL {
		i = rs[0].LinkIndex
	}
	d.in[local] = i
	return i
}

func (d *devices) lookup(a netip.Addr, o *netlink.RouteGetOptions) string {
	rs, err := d.h.RouteGetWithOptions(a.AsSlice(), o)
	if err != nil || len(rs) == 0 || rs[0].LinkIndex == 0 {
		return ""
	}
	if d.names == nil {
		d.names = make(map[int]string)
		if links, err := d.h.LinkList(); err == nil {
			for _, l := range links {
				d.names[l.Attrs().Index] = l.Attrs().Name
			}
		}
	}
	return d.names[rs[0].LinkIndex]
}
