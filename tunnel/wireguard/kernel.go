package wireguard

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// hostGone reports whether err says a host (netns) does not exist: when
// tearing down, a host that went away took its devices with it.
func hostGone(err error) bool { return errors.Is(err, host.ErrNotFound) }

// nlHandle opens a route-netlink handle in host's namespace; a missing
// host is host.ErrNotFound naming it.
func nlHandle(host string) (*netlink.Handle, error) {
	return nsutil.Handle(host, unix.NETLINK_ROUTE)
}

// addKernelDevice creates the kernel WireGuard interface ifname (down).
// Where the kernel has no WireGuard it returns an error wrapping
// tunnel.ErrKernelUnsupported.
func addKernelDevice(host, ifname string, mtu int) error {
	h, err := nlHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	err = h.LinkAdd(&netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: ifname, MTU: mtu}})
	if err == nil {
		return nil
	}
	// The kernel answers an unknown link kind with EOPNOTSUPP after a
	// failed module autoload.
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP) || errors.Is(err, unix.EINVAL) && !linkExists(h, ifname) {
		return fmt.Errorf("%w: %s: link type wireguard (CONFIG_WIREGUARD): %v", tunnel.ErrKernelUnsupported, hostName(host), err)
	}
	if errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("%w: %s: interface %s exists", tunnel.ErrExists, hostName(host), ifname)
	}
	return fmt.Errorf("%s: add wireguard link %s: %w", hostName(host), ifname, err)
}

func linkExists(h *netlink.Handle, ifname string) bool {
	_, err := h.LinkByName(ifname)
	return err == nil
}

// delLink deletes interface ifname in host if it exists.
func delLink(host, ifname string) error {
	h, err := nlHandle(host)
	if err != nil {
		if hostGone(err) {
			return nil // the host and all its interfaces are gone
		}
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil
		}
		return fmt.Errorf("%s: %s: %w", hostName(host), ifname, err)
	}
	if err := h.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("%s: delete %s: %w", hostName(host), ifname, err)
	}
	return nil
}
