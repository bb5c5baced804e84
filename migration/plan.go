package migration

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// FenceMode says when the VM's communications are blocked (block 320).
type FenceMode string

const (
	// FenceAtSwitchover keeps traffic flowing during pre-copy and fences
	// the VM in the switchover hook, while the source is paused: the
	// shortest blackout. The default.
	FenceAtSwitchover FenceMode = "at-switchover"
	// FenceBeforeCopy fences before the migration starts: the patent's
	// order (block 320, then 325/330).
	FenceBeforeCopy FenceMode = "before-copy"
)

// SubnetMoved says whether the VM's whole subnet has moved (blocks 335/375).
type SubnetMoved string

const (
	// SubnetAuto: moved when every other member of Subnet.Members is
	// already active at the target.
	SubnetAuto SubnetMoved = "auto"
	SubnetYes  SubnetMoved = "yes"
	SubnetNo   SubnetMoved = "no"
)

// Subnet describes the VM's subnet, for the redirect tunnel and the
// routing-core watch. Leave Plan.Subnet nil when only the VM moves.
type Subnet struct {
	Prefix netip.Prefix
	// Prefix6 (optional) is a dual-stack subnet's IPv6 prefix: it moves
	// with Prefix (redirected, watched and its redirect removed alike),
	// and Via6 is its next hop at the core that proves the new location.
	Prefix6 netip.Prefix `json:",omitzero"`
	Via6    netip.Addr   `json:",omitzero"`
	Moved   SubnetMoved  // "" means SubnetAuto
	// Members are the other VMs of the subnet (for SubnetAuto).
	Members []string
	// Via is the next hop at the core that proves the new location
	// (e.g. the target's address on the permanent site link).
	Via netip.Addr
	// ConvergeTimeout bounds the wait for the routing core (blocks
	// 380/385); when it passes, the redirect tunnel stays and the report
	// says so. 0 means 5 minutes.
	ConvergeTimeout time.Duration
}

// Plan is what to migrate where, as plain data (it is journaled as JSON).
type Plan struct {
	// ID names the migration; empty means one is generated.
	ID string
	// VM is the VM's name in both environments' hypervisors.
	VM string
	// From and To name environments of the Migrator's Config.
	From, To string
	// Link is the kind of secure link ("" = WireGuard).
	Link tunnel.Kind
	// FenceMode ("" = FenceAtSwitchover).
	FenceMode FenceMode
	// Addrs are the VM's addresses: protected at the target end of the
	// link, and the selector of the connection audit.
	Addrs []netip.Prefix
	// Peers are the addresses of the VMs left behind that the moved VM
	// talks to: protected at the secure end of the link.
	Peers []netip.Prefix
	// Subnet, if set, enables blocks 335-340 and 375-390.
	Subnet *Subnet
	// Audit says which persisting connections are already secure by their
	// own means (TLS ports, the operator's IPsec policies or WireGuard
	// devices). The migration's own link is not part of it: a plaintext
	// session that survived the move is reset so that it comes back over
	// the link. Zero value: conn.DefaultTLSPorts only.
	Audit conn.Policy
	// SourcePort and TargetPort override the VM's host-side port names
	// reported by the hypervisors (needed when they report none).
	SourcePort, TargetPort string
	// MaxBandwidth for the migration stream, bytes/s (0: unlimited).
	MaxBandwidth uint64
	// MaxDowntime is the stop-and-copy time the hypervisor may take at
	// switchover (0: its default, 300 ms for QEMU).
	MaxDowntime time.Duration
	// Batch is the ID of the batch (Migrator.RunBatch) this plan is a
	// member of; RunBatch sets it, Run refuses a plan that has it. A
	// member's subnet has moved by definition: its switchover routes its
	// own addresses into the batch's one redirect tunnel, and the batch
	// waits for the routing core.
	Batch string `json:",omitempty"`
}

func (p *Plan) defaults() {
	if p.Link == "" {
		p.Link = tunnel.WireGuard
	}
	if p.FenceMode == "" {
		p.FenceMode = FenceAtSwitchover
	}
	if p.Subnet != nil {
		if p.Subnet.Moved == "" {
			p.Subnet.Moved = SubnetAuto
		}
		if p.Subnet.ConvergeTimeout == 0 {
			p.Subnet.ConvergeTimeout = 5 * time.Minute
		}
	}
}

// validate checks the plan (defaults applied) against the Migrator's
// configuration without touching anything (Migrator.Validate and Run
// call it). Errors wrap ErrInvalidPlan and name the field and its value.
func (p Plan) validate(cfg *Config) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidPlan}, args...)...)
	}
	if p.VM == "" {
		return bad("VM is empty")
	}
	if len(p.VM) > 64 {
		return bad("VM %q is longer than 64 characters", p.VM)
	}
	if len(p.ID) > 64 {
		return bad("ID %q is longer than 64 characters", p.ID)
	}
	src, ok := cfg.Environments[p.From]
	if !ok {
		return bad("From %q is not a configured environment (have %v)", p.From, cfg.envNames())
	}
	dst, ok := cfg.Environments[p.To]
	if !ok {
		return bad("To %q is not a configured environment (have %v)", p.To, cfg.envNames())
	}
	if p.From == p.To {
		return bad("To %q is the same environment as From", p.To)
	}
	if src.Hypervisor == nil || src.Fencer == nil {
		return bad("From %q: environment needs a Hypervisor and a Fencer", p.From)
	}
	if dst.Hypervisor == nil || dst.Fencer == nil || dst.Auditor == nil {
		return bad("To %q: environment needs a Hypervisor, a Fencer and an Auditor", p.To)
	}
	switch p.Link {
	case tunnel.WireGuard, tunnel.IPsec:
	default:
		return bad("Link %q (want %q or %q)", p.Link, tunnel.WireGuard, tunnel.IPsec)
	}
	if cfg.Linkers[p.Link] == nil {
		return bad("Link %q: no SecureLinker configured for it", p.Link)
	}
	switch p.FenceMode {
	case FenceAtSwitchover, FenceBeforeCopy:
	default:
		return bad("FenceMode %q (want %q or %q)", p.FenceMode, FenceAtSwitchover, FenceBeforeCopy)
	}
	if !src.Underlay.IsValid() || !dst.Underlay.IsValid() {
		return bad("environments %q and %q both need an Underlay address", p.From, p.To)
	}
	if len(p.Addrs) == 0 {
		return bad("Addrs is empty (the VM's addresses)")
	}
	if err := checkPrefixes("Addrs", p.Addrs, true); err != nil {
		return bad("%v", err)
	}
	if len(p.Peers) == 0 {
		return bad("Peers is empty (the addresses the VM talks to)")
	}
	if err := checkPrefixes("Peers", p.Peers, false); err != nil {
		return bad("%v", err)
	}
	for _, a := range p.Addrs {
		for _, q := range p.Peers {
			if a.Overlaps(q) {
				return bad("Peers %s overlaps Addrs %s", q, a)
			}
		}
	}
	if s := p.Subnet; s != nil {
		if !s.Prefix.IsValid() {
			return bad("Subnet.Prefix is not a valid prefix")
		}
		if s.Prefix != s.Prefix.Masked() {
			return bad("Subnet.Prefix %s has host bits set (want %s)", s.Prefix, s.Prefix.Masked())
		}
		if s.Prefix6.IsValid() || s.Via6.IsValid() {
			switch {
			case !s.Prefix6.IsValid() || !s.Prefix6.Addr().Is6() || !s.Prefix.Addr().Is4():
				return bad("Subnet.Prefix6 %s: want an IPv6 prefix beside an IPv4 Subnet.Prefix (%s)", s.Prefix6, s.Prefix)
			case s.Prefix6 != s.Prefix6.Masked():
				return bad("Subnet.Prefix6 %s has host bits set (want %s)", s.Prefix6, s.Prefix6.Masked())
			case s.Via6.IsValid() && !s.Via6.Is6():
				return bad("Subnet.Via6 %s is not an IPv6 address", s.Via6)
			}
		}
		for _, a := range p.Addrs {
			if !s.Prefix.Contains(a.Addr()) && !(s.Prefix6.IsValid() && s.Prefix6.Contains(a.Addr())) {
				if s.Prefix6.IsValid() {
					return bad("Addrs %s is outside Subnet.Prefix %s and Subnet.Prefix6 %s", a, s.Prefix, s.Prefix6)
				}
				return bad("Addrs %s is outside Subnet.Prefix %s", a, s.Prefix)
			}
		}
		switch s.Moved {
		case SubnetAuto, SubnetYes, SubnetNo:
		default:
			return bad("Subnet.Moved %q (want auto, yes or no)", s.Moved)
		}
		if s.ConvergeTimeout < 0 {
			return bad("Subnet.ConvergeTimeout %s is negative", s.ConvergeTimeout)
		}
		if s.Moved != SubnetNo {
			if src.Core == nil || src.Core.Routing == nil || !src.Core.Underlay.IsValid() {
				return bad("Subnet: From %q has no routing Core (Host, Underlay, Routing) for the redirect tunnel", p.From)
			}
		}
		if s.Via.IsValid() && s.Via.Is4() != s.Prefix.Addr().Is4() {
			return bad("Subnet.Via %s is not of the family of Subnet.Prefix %s", s.Via, s.Prefix)
		}
	}
	if p.MaxDowntime < 0 {
		return bad("MaxDowntime %s is negative", p.MaxDowntime)
	}
	for _, port := range []struct{ name, v string }{{"SourcePort", p.SourcePort}, {"TargetPort", p.TargetPort}} {
		if len(port.v) > 15 {
			return bad("%s %q is longer than 15 characters", port.name, port.v)
		}
	}
	return nil
}

func checkPrefixes(field string, ps []netip.Prefix, hosts bool) error {
	for i, p := range ps {
		switch {
		case !p.IsValid():
			return fmt.Errorf("%s[%d] is not a valid prefix", field, i)
		case hosts && !p.IsSingleIP():
			return fmt.Errorf("%s[%d] %s is not a single address (want %s/%d)", field, i, p, p.Addr(), p.Addr().BitLen())
		case p != p.Masked():
			return fmt.Errorf("%s[%d] %s has host bits set (want %s)", field, i, p, p.Masked())
		}
	}
	return nil
}

// subnetPrefixes are the subnet's prefixes: Prefix, and Prefix6 if set.
func (s *Subnet) subnetPrefixes() []netip.Prefix {
	ps := []netip.Prefix{s.Prefix}
	if s.Prefix6.IsValid() {
		ps = append(ps, s.Prefix6)
	}
	return ps
}

// expects are the routing core's routes that prove the subnet moved: one
// per prefix, with its family's Via.
func (s *Subnet) expects() []routing.Expect {
	es := []routing.Expect{{Prefix: s.Prefix, Via: s.Via}}
	if s.Prefix6.IsValid() {
		es = append(es, routing.Expect{Prefix: s.Prefix6, Via: s.Via6})
	}
	return es
}
