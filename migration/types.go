// Package migration composes sealift's contracts into the secure live
// migration of FIG. 3 of US 2017/0329624 A1: Migrator.Run executes blocks
// 310-395, journals every step, rolls back a failure before the target
// resumes and rolls forward (or stays fenced, saying why) after.
//
// It imports the contract packages only: a program that imports migration
// pulls in no backend (no cgo, no GoBGP) unless it imports that backend.
package migration

import (
	"errors"
	"net/netip"
	"slices"
	"sort"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// Sentinel errors.
var (
	// ErrInvalidPlan: the plan is wrong; nothing was touched.
	ErrInvalidPlan = errors.New("migration: invalid plan")
	// ErrBusy: the VM is already being migrated.
	ErrBusy = errors.New("migration: vm busy")
	// ErrRolledBack: the migration failed before the target resumed; the
	// VM runs at the source, unfenced.
	ErrRolledBack = errors.New("migration: rolled back")
	// ErrStayedFenced: the migration failed after the target resumed; the
	// VM runs at the target but stays fenced (no traffic) until an
	// operator or Recover finishes it. The error says why.
	ErrStayedFenced = errors.New("migration: vm stays fenced at target")
	// ErrRollbackFailed: rolling back failed too; the error says what is
	// left, the report is Abandoned, and the journal keeps the migration
	// unfinished for Recover. Recover returns it too for a VM it finds
	// running in two places (it fences both copies and abandons).
	ErrRollbackFailed = errors.New("migration: rollback incomplete")
	// ErrVMLost: the VM runs nowhere (e.g. the guest crashed at the target
	// right after the move); the error says what the hypervisors report.
	ErrVMLost = errors.New("migration: vm lost")
)

// Block is a block of FIG. 3.
type Block int

// The blocks of FIG. 3, in order.
const (
	BlockSelect      Block = 310 // select the VM
	BlockTarget      Block = 315 // target the different environment
	BlockFence       Block = 320 // block data communications
	BlockPause       Block = 325 // pause at the source (switchover)
	BlockMigrate     Block = 330 // live migrate
	BlockSubnetMoved Block = 335 // subnet moved? (at switchover: add the redirect?)
	BlockRedirect    Block = 340 // add the redirect tunnel
	BlockRestart     Block = 345 // restart at target + secure link/IPsec policy
	BlockAudit       Block = 355 // non-managed connections?
	BlockKeep        Block = 360 // keep the secure ones
	BlockReset       Block = 365 // reset the unsecured ones
	BlockEnable      Block = 370 // enable comms over the secure link
	// BlockSubnetMovedAfterEnable is FIG. 3's second "subnet moved?"
	// decision, once the VM talks over the link: wait for the routing
	// core and remove the redirect tunnel (380-390)?
	BlockSubnetMovedAfterEnable Block = 375
	BlockInspect                Block = 380 // inspect the routing core (380/385)
	BlockRemoveTunnel           Block = 390 // remove the redirect tunnel
	BlockEnd                    Block = 395 // the VM still runs at the target?
	blockRollback               Block = 900 // not in FIG. 3: the way back
)

var blockNames = map[Block]string{
	BlockSelect: "select", BlockTarget: "target", BlockFence: "fence",
	BlockPause: "pause", BlockMigrate: "migrate", BlockSubnetMoved: "subnet-moved",
	BlockRedirect: "redirect-tunnel", BlockRestart: "restart", BlockAudit: "audit",
	BlockKeep: "keep-secure", BlockReset: "reset-unsecured", BlockEnable: "enable",
	BlockSubnetMovedAfterEnable: "subnet-moved-again", BlockInspect: "inspect-routing-core",
	BlockRemoveTunnel: "remove-tunnel", BlockEnd: "end", blockRollback: "rollback",
}

func (b Block) String() string {
	if n, ok := blockNames[b]; ok {
		return n
	}
	return "unknown"
}

// Outcome of a migration.
type Outcome string

const (
	Completed  Outcome = "completed"
	RolledBack Outcome = "rolled-back"
	// StayedFenced: the VM runs at the target, fenced; Reason says why.
	StayedFenced Outcome = "stayed-fenced"
	// Abandoned: a human must look (the rollback failed, the VM is lost,
	// or it runs in two places); Reason says what.
	Abandoned Outcome = "abandoned"
)

// Environment is one place VMs run in, as the Migrator reaches it.
type Environment struct {
	Hypervisor hypervisor.Hypervisor
	Fencer     fence.Fencer
	// Auditor lists and resets the VM's connections at this environment's
	// host (needed at targets).
	Auditor conn.ConnAuditor
	// Host is the network namespace of the host's secure-link end ("" =
	// current), and Underlay its address between the environments.
	Host     string
	Underlay netip.Addr
	// Core is the routing core (secure environments; needed when a
	// subnet moves).
	Core *Core
	// SecureDevices are interfaces of this host whose traffic is already
	// encrypted (the operator's site-to-site VPN to the secure
	// environment). A VM enabled here (block 370) may talk through them
	// as well as through its own link: once the routing core sends a
	// moved subnet over the site link, the VM's traffic arrives there.
	SecureDevices []string
}

// Core is a secure environment's routing core.
type Core struct {
	Host     string
	Underlay netip.Addr
	Routing  routing.RouteWatcher
}

// StepTiming is one step of a Report.
type StepTiming struct {
	Block    Block
	Name     string
	Start    int64  // unix nanoseconds
	Duration int64  // nanoseconds
	Err      string `json:",omitempty"`
}

// Audit is the result of blocks 355-365.
type Audit struct {
	Kept   []conn.Verdict
	Reset  []conn.Verdict
	Result conn.ResetResult
	// After is the policy that judges connections made once the secure
	// link is up (the plan's, plus the link): give it to
	// conn.WaitReestablished to check that reset sessions came back secure.
	After conn.Policy
}

// Report is what Run returns.
type Report struct {
	ID          string
	VM          string
	Outcome     Outcome
	Reason      string `json:",omitempty"`
	Steps       []StepTiming
	Migration   hypervisor.Stats
	Link        tunnel.Link
	Proof       tunnel.Proof
	Audit       Audit
	SubnetMoved bool
	Redirect    *tunnel.Link       `json:",omitempty"`
	Converged   *routing.Converged `json:",omitempty"`
	// Released is how many packets the source's fence held during the
	// switchover (fence.Spec.Hold, where the source's Fencer is a
	// fence.Holder) and sent on through the link once the VM had left:
	// packets sent to the VM in the switchover that arrive late, not
	// never. Set once block 370 has run.
	Released int `json:",omitempty"`
	// Warnings are things that went wrong without changing the outcome
	// (e.g. the routing core did not converge: the redirect stays).
	Warnings []string `json:",omitempty"`
}

// Step returns the first timing of block b and whether there is one.
func (r *Report) Step(b Block) (StepTiming, bool) {
	i := slices.IndexFunc(r.Steps, func(s StepTiming) bool { return s.Block == b })
	if i < 0 {
		return StepTiming{}, false
	}
	return r.Steps[i], true
}

func sortByStart(rs []Record) {
	sort.SliceStable(rs, func(i, j int) bool { return rs[i].Started.Before(rs[j].Started) })
}
