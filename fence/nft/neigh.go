package nft

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/nsutil"
)

// dropPending deletes the host's neighbour entries still resolving
// (INCOMPLETE, and FAILED) for the addresses of the fences being lifted
// that guard peers. Packets forwarded to a VM that is not on this host
// (peers' packets that reached a target before a rollback) wait in such
// an entry's queue; when its resolution fails, seconds later, the kernel
// answers each with an ICMP "host unreachable" quoting it, addressed to
// the peer — in clear on the untrusted network once the fence and its
// peers guard are gone. Deleting the entry while the guard still holds
// drops the queue silently.
func dropPending(host string, specs []fence.Spec) error {
	var addrs []netip.Addr
	for _, s := range specs {
		if len(s.Peers) > 0 {
			addrs = append(addrs, s.Addrs...)
		}
	}
	if len(addrs) == 0 {
		return nil
	}
	h, err := nsutil.Handle(host, unix.NETLINK_ROUTE)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := h.NeighList(0, fam)
		if err != nil {
			return fmt.Errorf("neighbours of host %q: %w", host, err)
		}
		for _, n := range ns {
			a, ok := netip.AddrFromSlice(n.IP)
			if !ok || !slices.Contains(addrs, a.Unmap()) || n.State&(netlink.NUD_INCOMPLETE|netlink.NUD_FAILED) == 0 {
				continue
			}
			if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("delete the neighbour entry of %s on host %q: %w", a, host, err))
			}
		}
	}
	return errors.Join(errs...)
}
