package wireguard

import (
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sealift/sealift/internal/nsutil"
)

// withWG runs fn with a wgctrl client created inside host's netns: its
// kernel (generic netlink) backend is bound to the netns of the thread
// that created it; its userspace backend finds the UAPI sockets from
// anywhere.
func withWG(host string, fn func(c *wgctrl.Client) error) error {
	var c *wgctrl.Client
	err := nsutil.Do(host, func() error {
		var err error
		c, err = wgctrl.New()
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: wgctrl: %w", hostName(host), err)
	}
	defer c.Close()
	return fn(c)
}

// peerConfig is the configuration of one end: its own key and port, and
// the other end as its only peer.
type peerConfig struct {
	private   wgtypes.Key
	port      int
	peer      wgtypes.Key
	psk       *wgtypes.Key
	endpoint  netip.AddrPort
	allowed   []netip.Prefix
	keepalive time.Duration
}

func (p peerConfig) wgConfig() wgtypes.Config {
	allowed := make([]net.IPNet, 0, len(p.allowed))
	for _, a := range p.allowed {
		allowed = append(allowed, ipNet(a))
	}
	ka := p.keepalive
	return wgtypes.Config{
		PrivateKey:   &p.private,
		ListenPort:   &p.port,
		ReplacePeers: true,
		Peers: []wgtypes.PeerConfig{{
			PublicKey:                   p.peer,
			PresharedKey:                p.psk,
			Endpoint:                    net.UDPAddrFromAddrPort(p.endpoint),
			PersistentKeepaliveInterval: &ka,
			ReplaceAllowedIPs:           true,
			AllowedIPs:                  allowed,
		}},
	}
}

// configure applies p to device ifname in host.
func configure(host, ifname string, p peerConfig) error {
	return withWG(host, func(c *wgctrl.Client) error {
		if err := c.ConfigureDevice(ifname, p.wgConfig()); err != nil {
			return fmt.Errorf("%s: configure %s: %w", hostName(host), ifname, err)
		}
		return nil
	})
}

// peerStats reads the single peer of device ifname in host.
func peerStats(host, ifname string) (wgtypes.Peer, error) {
	var peer wgtypes.Peer
	err := withWG(host, func(c *wgctrl.Client) error {
		d, err := c.Device(ifname)
		if err != nil {
			return fmt.Errorf("%s: read %s: %w", hostName(host), ifname, err)
		}
		if len(d.Peers) != 1 {
			return fmt.Errorf("%s: %s has %d peers, want 1", hostName(host), ifname, len(d.Peers))
		}
		peer = d.Peers[0]
		return nil
	})
	return peer, err
}

// kickKeepalive makes the end send a keepalive now (which starts a
// handshake if there is no session): WireGuard sends one whenever the
// persistent keepalive interval of a running device's peer goes from 0 to
// non-zero. The interval ends as keep.
func kickKeepalive(host, ifname string, keep time.Duration) error {
	kick := keep
	if kick == 0 {
		kick = DefaultKeepalive
	}
	steps := []time.Duration{0, kick}
	if keep == 0 {
		steps = append(steps, 0)
	}
	return setKeepalive(host, ifname, steps...)
}

// setKeepalive sets the persistent keepalive interval of the device's
// peer to each value in turn.
func setKeepalive(host, ifname string, intervals ...time.Duration) error {
	return withWG(host, func(c *wgctrl.Client) error {
		d, err := c.Device(ifname)
		if err != nil {
			return fmt.Errorf("%s: read %s: %w", hostName(host), ifname, err)
		}
		if len(d.Peers) != 1 {
			return fmt.Errorf("%s: %s has %d peers, want 1", hostName(host), ifname, len(d.Peers))
		}
		for _, ka := range intervals {
			cfg := wgtypes.Config{Peers: []wgtypes.PeerConfig{{
				PublicKey: d.Peers[0].PublicKey, UpdateOnly: true, PersistentKeepaliveInterval: &ka,
			}}}
			if err := c.ConfigureDevice(ifname, cfg); err != nil {
				return fmt.Errorf("%s: keepalive on %s: %w", hostName(host), ifname, err)
			}
		}
		return nil
	})
}

func ipNet(p netip.Prefix) net.IPNet {
	p = p.Masked()
	return net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
