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

var (
	// ErrInvalid: a Spec field is wrong; nothing was changed.
	ErrInvalid = errors.New("fence: invalid spec")
	// ErrNoPort: the VM's port does not exist on this host.
	ErrNoPort = errors.New("fence: port not found")
	// ErrNotFenced: Lift found no fence for the VM; nothing was changed.
	ErrNotFenced = errors.New("fence: vm not fenced")
)

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
	// AllowMarks lets packets carrying one of these fwmarks through (the
	// XFRM backend marks decrypted traffic). Optional.
	AllowMarks []uint32
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
