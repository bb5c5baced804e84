package qemu

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/internal/nsutil"
)

// ensureTaps creates the NICs' taps that do not exist yet in host's
// namespace (persistent, attached to their bridge, up) and returns the
// names it created. On error it removes what it created.
func ensureTaps(host string, nics []NIC) ([]string, error) {
	var created []string
	err := nsutil.Do(host, func() error {
		for _, n := range nics {
			if _, err := netlink.LinkByName(n.Tap); err == nil {
				continue
			} else if !errors.As(err, new(netlink.LinkNotFoundError)) {
				return fmt.Errorf("tap %s: %w", n.Tap, err)
			}
			t := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: n.Tap}, Mode: netlink.TUNTAP_MODE_TAP,
				Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR}
			if err := netlink.LinkAdd(t); err != nil {
				return fmt.Errorf("create tap %s: %w", n.Tap, err)
			}
			created = append(created, n.Tap)
			for _, f := range t.Fds {
				f.Close()
			}
			l, err := netlink.LinkByName(n.Tap)
			if err != nil {
				return fmt.Errorf("tap %s: %w", n.Tap, err)
			}
			if n.Bridge != "" {
				br, err := netlink.LinkByName(n.Bridge)
				if err != nil {
					return fmt.Errorf("bridge %s for tap %s: %w", n.Bridge, n.Tap, err)
				}
				if err := netlink.LinkSetMaster(l, br); err != nil {
					return fmt.Errorf("attach tap %s to %s: %w", n.Tap, n.Bridge, err)
				}
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("up tap %s: %w", n.Tap, err)
			}
		}
		return nil
	})
	if err != nil {
		deleteTaps(host, created)
		return nil, err
	}
	return created, nil
}

// deleteTaps removes the named interfaces from host's namespace (errors
// are ignored: the namespace may be gone already).
func deleteTaps(host string, names []string) {
	if len(names) == 0 {
		return
	}
	_ = nsutil.Do(host, func() error {
		for _, n := range names {
			if l, err := netlink.LinkByName(n); err == nil {
				_ = netlink.LinkDel(l)
			}
		}
		return nil
	})
}
