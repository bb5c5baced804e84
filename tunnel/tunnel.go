// Package tunnel is the contract for the secure link between a VM that
// moved to the different environment and the VMs it left behind (FIG. 3
// block 345, claim 9), and for the encrypted redirect tunnel from the
// routing core (block 340). Backends: tunnel/wireguard (WireGuard, kernel
// device or embedded wireguard-go) and ipsec (XFRM ESP). Both stand side by
// side behind this one interface.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// A host (netns) that does not exist is, from every backend, an error
// wrapping host.ErrNotFound (package github.com/sealift/sealift/host) that
// names it; the sentinels below cover the rest.
var (
	ErrInvalid = errors.New("tunnel: invalid spec")
	ErrExists  = errors.New("tunnel: link already exists")
	ErrNoLink  = errors.New("tunnel: no such link")
	// ErrNotProven: Verify found no proof that traffic is encrypted (no
	// handshake, or the SAs did not count the backend's own probe).
	ErrNotProven = errors.New("tunnel: encryption not proven")
	// ErrKernelUnsupported: the kernel lacks what the backend needs
	// (e.g. CONFIG_INET_ESP); the error says which option.
	ErrKernelUnsupported = errors.New("tunnel: kernel lacks support")
)

// Kind names a link technology.
type Kind string

const (
	WireGuard Kind = "wireguard"
	IPsec     Kind = "ipsec"
)

// End is one end of a link: a host and the addresses behind it.
type End struct {
	// Host is the network namespace name of the host ("" = the current one).
	Host string
	// Underlay is the host's address on the network between the two
	// environments; the encrypted packets are sent from/to it.
	Underlay netip.Addr
	// Protected are the addresses reached through the link at this end
	// (the moved VM at the target; the peers at the secure side).
	Protected []netip.Prefix
	// Port is the UDP listen port (WireGuard); 0 picks the default.
	Port uint16
	// MAC is the MAC of the host addresses in Protected (the moved VM's,
	// at the Remote end). Optional: with it, Activate makes the end ready
	// to deliver to a VM that has not resumed yet: a neighbour entry for
	// each such address on the LAN interface it is on-link by (so what
	// the link carries to the VM during the switchover waits in the VM's
	// port instead of behind an ARP exchange with a guest still warming
	// up), and a gratuitous ARP for the host's own addresses on that
	// interface (the VM's gateway there: the VM resumes with the source's
	// gateway MAC cached). tunnel/wireguard uses it; the ipsec backend
	// does not yet (its target learns the VM's MAC by ARP as before).
	MAC string
}

// Spec describes a link between two ends.
type Spec struct {
	// ID names the link; it is unique per linker and at most 8 characters
	// of [a-z0-9] so backends can derive interface names from it.
	ID     string
	Kind   Kind
	Secure End // the secure environment's side (host A, or the routing core)
	Remote End // the different environment's side (host B)
	// ProxyARP makes each end answer ARP for the other's protected
	// addresses on its LAN side, so the VM and its peers keep their
	// addresses in one subnet.
	ProxyARP bool
	// MTU of the link device; 0 means underlay MTU minus 80 (WireGuard's
	// overhead over IPv6, and ESP's with AES-GCM), or minus a backend's
	// larger worst case (ipsec's CBC + HMAC over an IPv6 underlay: 97).
	MTU int
	// NoSecureRoutes: the Secure end installs no routes for
	// Remote.Protected. Set for a redirect tunnel from the routing core,
	// whose route is routing.RouteWatcher.AddRedirect's (with a metric the
	// real route can beat), and for site links routed by BGP.
	NoSecureRoutes bool
}

// Routing at the Remote end: several links may end on one host (two VMs
// of a subnet, a redirect tunnel) with overlapping Secure.Protected
// prefixes. Backends therefore route the Remote end's traffic by source:
// a rule "from <Remote.Protected> lookup <the link's table>" whose table
// holds the routes for Secure.Protected into the link. At the Secure end,
// routes for Remote.Protected (host routes, normally) go in the main table.

// Validate checks s and names the first bad field and its value.
func (s Spec) Validate() error {
	if s.ID == "" || len(s.ID) > 8 {
		return fmt.Errorf("%w: ID %q must be 1 to 8 characters", ErrInvalid, s.ID)
	}
	for _, r := range s.ID {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return fmt.Errorf("%w: ID %q may hold only a-z and 0-9", ErrInvalid, s.ID)
		}
	}
	if s.Kind != WireGuard && s.Kind != IPsec {
		return fmt.Errorf("%w: Kind %q (want %q or %q)", ErrInvalid, s.Kind, WireGuard, IPsec)
	}
	for _, e := range []struct {
		name string
		end  End
	}{{"Secure", s.Secure}, {"Remote", s.Remote}} {
		if !e.end.Underlay.IsValid() {
			return fmt.Errorf("%w: %s.Underlay is not set", ErrInvalid, e.name)
		}
		if len(e.end.Protected) == 0 {
			return fmt.Errorf("%w: %s.Protected is empty", ErrInvalid, e.name)
		}
		for i, p := range e.end.Protected {
			if !p.IsValid() {
				return fmt.Errorf("%w: %s.Protected[%d] is not a valid prefix", ErrInvalid, e.name, i)
			}
		}
		if e.end.MAC != "" {
			if _, err := net.ParseMAC(e.end.MAC); err != nil {
				return fmt.Errorf("%w: %s.MAC %q: %v", ErrInvalid, e.name, e.end.MAC, err)
			}
		}
	}
	if s.Secure.Underlay == s.Remote.Underlay {
		return fmt.Errorf("%w: Secure.Underlay and Remote.Underlay are both %s", ErrInvalid, s.Secure.Underlay)
	}
	if s.MTU != 0 && (s.MTU < 1280 || s.MTU > 65535) {
		return fmt.Errorf("%w: MTU %d out of range 1280..65535", ErrInvalid, s.MTU)
	}
	return nil
}

// Link is the state of a prepared link. Keys are never part of it.
type Link struct {
	Spec
	// Backend says what carries the link: "wireguard-kernel",
	// "wireguard-userspace", "xfrm".
	Backend string
	// Device is the interface traffic enters the link through at each end
	// ("" for XFRM policy-based links, which have no device).
	SecureDevice, RemoteDevice string
	Active                     bool
	// Policy is the installed IPsec policy (XFRM links only), the
	// patent's "IPsec policy" for the VM, as readable text lines.
	Policy []string
}

// Proof is what Verify measured: evidence that traffic is encrypted.
type Proof struct {
	Handshake time.Time // last WireGuard handshake (zero for XFRM)
	// Packets and Bytes counted by the encrypting layer (WireGuard peer
	// counters, or the SAs' lifetime counters), both directions summed.
	TxPackets, RxPackets uint64
	TxBytes, RxBytes     uint64
	Detail               string
}

// SecureLinker sets up and tears down secure links.
type SecureLinker interface {
	// Prepare generates fresh keys and configures both ends; the link
	// carries no traffic yet (uncovered traffic is dropped, never sent in
	// clear).
	Prepare(ctx context.Context, spec Spec) (Link, error)
	// Activate makes the prepared link carry traffic and announces the
	// addresses it proxies (gratuitous ARP). Calling it on an active link
	// only announces again: the Migrator does so once the VM's fence
	// opens, so neighbours that cached an old MAC switch at once.
	Activate(ctx context.Context, id string) error
	// Verify proves the link encrypts traffic (a WireGuard handshake; an
	// XFRM link's SAs counting a probe Verify sends through them each way,
	// so a quiet VM's link is proven too) or returns an error wrapping
	// ErrNotProven.
	Verify(ctx context.Context, id string) (Proof, error)
	// Close removes everything the link installed, at both ends.
	// Closing an absent link is a no-op.
	Close(ctx context.Context, id string) error
	// List returns the links this backend finds installed (for recovery).
	List(ctx context.Context) ([]Link, error)
}
