// Package fence is the contract for blocking a VM's data communications
// with other VMs (FIG. 3 block 320) and enabling them again over the secure
// link only (block 370). Backends: fence/nft (nftables) and fence/linkstate
// (the port's link state).
package fence

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
	// ErrInvalid: a Spec field is wrong; nothing was changed.
	ErrInvalid = errors.New("fence: invalid spec")
	// ErrNoPort: the VM's port does not exist on this host.
	ErrNoPort = errors.New("fence: port not found")
	// ErrNotFenced: Lift found no fence for the VM; nothing was changed.
	ErrNotFenced = errors.New("fence: vm not fenced")
	// ErrUnsupported: the backend cannot enforce a (valid) Spec field; the
	// error names the field. Nothing was changed.
	ErrUnsupported = errors.New("fence: not supported by this backend")
)

// ResetMark is the fwmark conn/conntrack gives the packets it sends to
// reset a VM's unsecured connections (its "tickle" ACKs, and the RSTs its
// reset table answers them with). A fence with AllowVia lets such a
// packet reach the VM, and nothing else: it must carry this exact mark,
// be TCP without IP or TCP options and without payload (IPv4 total
// length 40, IPv6 payload length 20 with TCP as the next header), have
// only ACK and/or RST set, and be addressed to one of the VM's Addrs (a
// fence without Addrs lets none in). So a marked packet can end a
// connection of the VM but carry no data to or from it. Fences without
// AllowVia (a full block) do not let it in: the VM's answers could not
// leave anyway. Spec.Validate refuses ResetMark in AllowMarks.
const ResetMark uint32 = 0x5ea1f1c7

// Spec says which VM to fence and what, if anything, stays allowed.
type Spec struct {
	// VM is the VM's name; fences are keyed by it.
	VM string
	// Port is the host-side interface of the VM (tap or veth on a bridge).
	Port string
	// MAC and Addrs identify the VM's traffic so a guest that spoofs
	// another port cannot slip past. Optional, but recommended.
	MAC   string
	Addrs []netip.Addr
	// AllowVia names secure-link interfaces (WireGuard devices, a redirect
	// tunnel, the operator's site-to-site VPN) whose traffic stays allowed:
	// the "enabled over the secure link only" state. Empty: block everything.
	AllowVia []string
	// AllowMarks lets packets carrying one of these fwmarks through (e.g.
	// traffic an operator's own IPsec setup marks once decrypted; sealift's
	// ipsec backend marks nothing). Optional.
	AllowMarks []uint32
	// Peers are the secure side's prefixes (the addresses the VM talks to
	// over the link; a migration's Plan.Peers). While this fence exists,
	// nothing addressed to them leaves this host except through an
	// AllowVia device, whoever generated it: packets the host forwards,
	// its own packets and its ICMP/ICMPv6 errors (e.g. "host unreachable"
	// for an address of a moved subnet that has no VM here, which would
	// quote the peer's packet), IPv4 and IPv6. The guard is host-wide:
	// when several fences carry Peers, every prefix any of them lists is
	// guarded and every AllowVia device of any of them counts as secure
	// (all are encrypting links), so lifting one fence keeps the guard of
	// the others. AllowMarks do not exempt packets from it. Prefixes must
	// have no host bits, must not be /0 (that would cut the host's
	// underlay off) nor IPv4-mapped, and must not contain the VM's Addrs.
	// Set it at the target only: where the peers are local (the source)
	// the guard would cut them off. Encryption by XFRM policy (no device)
	// does not count as an AllowVia device: the plaintext leaves the
	// guard's hook by the underlay device and would be dropped before it
	// is transformed, unless a fence carrying Peers also sets AllowIPsec
	// (then a packet to a peer that the kernel will IPsec-transform may
	// leave). Optional; backends that cannot filter by destination
	// refuse it with ErrUnsupported (fence/linkstate does; fence/nft
	// implements it).
	Peers []netip.Prefix
	// AllowIPsec counts traffic the kernel's IPsec (XFRM) policies
	// protect as "through the secure link", as AllowVia does for a
	// link's devices: a packet of the VM (or to it) may pass if it will
	// be transformed on its way out (its route carries an XFRM bundle:
	// nft "rt ipsec exists") or if it arrived decrypted (nft "meta
	// secpath exists"); everything else of the VM stays blocked. It is
	// the "enabled over the secure link only" state for a device-less
	// IPsec link. With Peers, the host-wide guard lets a packet to a peer
	// leave when it will be transformed, and only then: the host's own
	// ICMP errors to a peer, which XFRM does not encrypt unless a policy
	// covers the host's address, stay dropped. It trusts the host's XFRM
	// configuration as a whole (any policy and SA counts, the operator's
	// own too): use encrypting SAs only. It needs the VM's Addrs (IPsec
	// policies select by address, and so must the fence). Backends that
	// cannot see XFRM refuse it with ErrUnsupported (fence/linkstate
	// does; fence/nft implements it).
	AllowIPsec bool
	// Hold keeps copies of the packets addressed to the VM (IPv4 and
	// IPv6, to Addrs) that this fence drops, so that a later Release
	// (Holder) sends them on by the host's routes: at a migration's
	// source, once the secure link is the route to the VM's address, the
	// packets that reached the source during the switchover are delivered
	// late instead of lost. The kernel drops every packet as without
	// Hold (a slow or dead holder lets nothing through); the copies live
	// in the Fencer's memory only, bounded (a restart loses them).
	// Needs Addrs. Backends that cannot hold refuse it with
	// ErrUnsupported (fence/linkstate does; fence/nft implements it and
	// Holder).
	Hold bool
}

// Holder is implemented by Fencers that can hold (Spec.Hold).
type Holder interface {
	// Release sends the packets held for vm's fence, oldest first, by the
	// host's routes at the time of the call, and stops holding (the fence
	// stays, and drops without holding from then on). It returns how many
	// packets it sent; a fence without Hold has none (0, nil). A VM
	// without a fence: an error wrapping ErrNotFenced.
	Release(ctx context.Context, vm string) (int, error)
}

// Validate checks s and names the first bad field and its value.
func (s Spec) Validate() error {
	if s.VM == "" {
		return fmt.Errorf("%w: VM is empty", ErrInvalid)
	}
	if s.Port == "" {
		return fmt.Errorf("%w: Port is empty (VM %q)", ErrInvalid, s.VM)
	}
	if len(s.Port) > 15 {
		return fmt.Errorf("%w: Port %q is longer than 15 characters", ErrInvalid, s.Port)
	}
	if s.MAC != "" {
		if _, err := net.ParseMAC(s.MAC); err != nil {
			return fmt.Errorf("%w: MAC %q: %v", ErrInvalid, s.MAC, err)
		}
	}
	for i, a := range s.Addrs {
		if !a.IsValid() {
			return fmt.Errorf("%w: Addrs[%d] is not a valid address", ErrInvalid, i)
		}
	}
	for i, m := range s.AllowMarks {
		if m == ResetMark {
			return fmt.Errorf("%w: AllowMarks[%d] %#x is ResetMark, which fences let through only for payload-free resets (VM %q)",
				ErrInvalid, i, m, s.VM)
		}
	}
	for i, p := range s.Peers {
		switch {
		case !p.IsValid():
			return fmt.Errorf("%w: Peers[%d] is not a valid prefix (VM %q)", ErrInvalid, i, s.VM)
		case p.Addr().Is4In6():
			return fmt.Errorf("%w: Peers[%d] %s is IPv4-mapped; use the IPv4 form (VM %q)", ErrInvalid, i, p, s.VM)
		case p != p.Masked():
			return fmt.Errorf("%w: Peers[%d] %s has host bits set (want %s) (VM %q)", ErrInvalid, i, p, p.Masked(), s.VM)
		case p.Bits() == 0:
			return fmt.Errorf("%w: Peers[%d] %s covers every address, the host's underlay too (VM %q)", ErrInvalid, i, p, s.VM)
		}
		for _, a := range s.Addrs {
			if p.Contains(a.Unmap()) {
				return fmt.Errorf("%w: Peers[%d] %s contains the VM's address %s (VM %q)", ErrInvalid, i, p, a, s.VM)
			}
		}
	}
	if s.Hold && len(s.Addrs) == 0 {
		return fmt.Errorf("%w: Hold is set but Addrs is empty: the held packets are those addressed to the VM (VM %q)", ErrInvalid, s.VM)
	}
	if s.AllowIPsec && len(s.Addrs) == 0 {
		return fmt.Errorf("%w: AllowIPsec is set but Addrs is empty: IPsec policies select by address, so must the fence (VM %q)", ErrInvalid, s.VM)
	}
	for i, v := range s.AllowVia {
		switch {
		case v == "" || len(v) > 15:
			return fmt.Errorf("%w: AllowVia[%d] %q must be 1 to 15 characters", ErrInvalid, i, v)
		case v == s.Port:
			return fmt.Errorf("%w: AllowVia[%d] %q is the VM's own Port (VM %q)", ErrInvalid, i, v, s.VM)
		}
	}
	return nil
}

// Fence is an active fence as a backend reports it.
type Fence struct {
	Spec
	Backend string    // "nft", "linkstate"
	Since   time.Time // when it was installed (zero if the backend cannot tell)
}

// Fencer blocks and re-enables a VM's communications on one host.
// Implementations are idempotent: fencing a fenced VM with the same Spec
// changes nothing, with a different Spec replaces the fence atomically.
type Fencer interface {
	// Fence installs (or replaces) the fence described by spec.
	Fence(ctx context.Context, spec Spec) error
	// Lift removes the VM's fence. Lifting an absent fence returns an
	// error wrapping ErrNotFenced and changes nothing; callers that only
	// want the fence gone can test for it with errors.Is.
	Lift(ctx context.Context, vm string) error
	// List returns the fences this backend installed on its host,
	// including those of an earlier process (for recovery).
	List(ctx context.Context) ([]Fence, error)
}
