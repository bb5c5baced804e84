// Package hypervisor is the contract sealift uses to look up, move and
// resume a virtual machine. Backends live in subpackages: hypervisor/qemu
// (QMP, pure Go) and hypervisor/libvirt (cgo).
//
// One Hypervisor manages the VMs of one host. A migration uses two: the
// source's (Lookup, Migrate, Abort) and the target's (PrepareIncoming,
// Resume, Abort). Only plain data crosses the interface, so an RPC agent can
// carry it.
package hypervisor

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Backends wrap them with %w and add the VM name and cause.
// A host (netns) that does not exist is, from every backend, an error
// wrapping host.ErrNotFound (package github.com/sealift/sealift/host) that
// names it (qemu.New: with ErrInvalid).
var (
	ErrInvalid        = errors.New("hypervisor: invalid argument")
	ErrNotFound       = errors.New("hypervisor: vm not found")
	ErrExists         = errors.New("hypervisor: vm already exists on target")
	ErrState          = errors.New("hypervisor: vm in wrong state")
	ErrUnreachable    = errors.New("hypervisor: target unreachable")
	ErrMigration      = errors.New("hypervisor: migration failed")
	ErrAborted        = errors.New("hypervisor: migration aborted")
	ErrSwitchoverHook = errors.New("hypervisor: switchover hook failed")
)

// State is the run state of a VM on one host.
type State string

const (
	Running  State = "running"  // executing guest code
	Paused   State = "paused"   // stopped, memory intact (also: source during switchover)
	Incoming State = "incoming" // target instance waiting for a migration stream
	Shutoff  State = "shutoff"  // defined but not running
)

// Active reports whether a VM in this state owns the guest's execution
// (it runs, or it is paused and can be resumed here).
func (s State) Active() bool { return s == Running || s == Paused }

// VM describes a virtual machine as one host sees it.
type VM struct {
	Name        string
	Host        string // the backend's name for its host
	State       State
	MemoryBytes uint64
	// NICs are the VM's network ports on this host.
	NICs []NIC
	// Identity is the TLS identity this host migrates with: the subject
	// DN of its client certificate ("CN=host-a"), set by Lookup where the
	// backend migrates over TLS with a certificate of its own (package
	// migtls: CA.HostDir). A target's PrepareIncoming given a VM with an
	// Identity accepts the migration stream from that identity only
	// (hypervisor/qemu: QEMU's tls-authz), so only the source host the
	// VM was looked up at can deliver into the prepared instance. Empty:
	// any certificate of the CA is accepted (a directory shared by all
	// hosts, migtls.NewDir, has no per-host identity).
	Identity string
}

// NIC is one network port of a VM.
type NIC struct {
	MAC  string // "52:54:00:12:34:56"
	Port string // host-side interface (tap) name, "" if unknown
}

// Endpoint is where a prepared target listens for the migration stream.
// It is produced by the target's PrepareIncoming and consumed by the
// source's Migrate.
type Endpoint struct {
	VM  string
	URI string // backend specific: "tcp:10.0.2.2:4444", "qemu+tcp://127.0.0.1:16510/system"
	// MigrateURI, when set, is the data channel URI (libvirt's
	// VIR_MIGRATE_PARAM_URI); empty means the backend's default.
	MigrateURI string
}

// Progress is a snapshot of a running migration.
type Progress struct {
	Elapsed     time.Duration
	Transferred uint64 // bytes sent so far
	Remaining   uint64 // bytes left in the current pass
	Total       uint64 // guest memory size
	Pass        int    // pre-copy iteration, when the backend knows it
}

// Stats summarise a finished migration.
type Stats struct {
	Total    time.Duration // start of Migrate to completion
	Downtime time.Duration // guest stopped (as measured by the hypervisor)
	Bytes    uint64        // bytes transferred
	// Switchover is when the source paused and the hook began, SwitchoverDone
	// when the hook returned (zero if there was no hook).
	Switchover     time.Time
	SwitchoverDone time.Time
}

// MigrateOptions tune one migration.
type MigrateOptions struct {
	// OnProgress, if set, is called from the migrating goroutine with
	// periodic snapshots. It must not block.
	OnProgress func(Progress)
	// AtSwitchover, if set, runs while the source is paused with its last
	// state not yet sent, before the target can resume. If it returns an
	// error the migration is cancelled and the VM resumes at the source.
	AtSwitchover func(ctx context.Context) error
	// MaxBandwidth limits the migration stream in bytes per second (0: none).
	MaxBandwidth uint64
	// MaxDowntime is the allowed stop-and-copy time (0: backend default;
	// else 1 ms to MaxDowntimeLimit, in whole milliseconds as QEMU takes it).
	MaxDowntime time.Duration
}

// MaxDowntimeLimit is the largest MaxDowntime (QEMU's limit for
// downtime-limit, also behind libvirt's).
const MaxDowntimeLimit = 2000 * time.Second

// Validate checks o and names the first bad field and its value. Errors
// wrap ErrInvalid. Backends call it before they touch anything.
func (o MigrateOptions) Validate() error {
	switch {
	case o.MaxDowntime < 0:
		return fmt.Errorf("%w: MaxDowntime %v is negative", ErrInvalid, o.MaxDowntime)
	case o.MaxDowntime > 0 && o.MaxDowntime < time.Millisecond:
		return fmt.Errorf("%w: MaxDowntime %v is below 1ms (QEMU counts whole milliseconds)", ErrInvalid, o.MaxDowntime)
	case o.MaxDowntime > MaxDowntimeLimit:
		return fmt.Errorf("%w: MaxDowntime %v exceeds %v", ErrInvalid, o.MaxDowntime, MaxDowntimeLimit)
	}
	return nil
}

// ValidName checks a VM name as every backend accepts it: 1 to 64
// letters, digits, '-', '_' and '.', not starting with '.'. Errors wrap
// ErrInvalid and quote the name.
func ValidName(name string) error {
	if name == "" {
		return fmt.Errorf("%w: vm name is empty", ErrInvalid)
	}
	if len(name) > 64 || name[0] == '.' {
		return fmt.Errorf("%w: vm name %q is not a valid name", ErrInvalid, name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("%w: vm name %q has character %q (allowed: letters, digits, - _ .)", ErrInvalid, name, r)
		}
	}
	return nil
}

// Hypervisor is the contract a VM manager backend fulfils.
//
// After a successful Migrate the VM is paused and complete at the target
// and gone (or inactive) at the source; it runs again only after the
// target's Resume. If Migrate fails the VM keeps running at the source.
type Hypervisor interface {
	// Lookup returns the VM named name on this host, or ErrNotFound.
	Lookup(ctx context.Context, name string) (VM, error)
	// PrepareIncoming starts an instance of vm on this host, paused and
	// waiting for the migration stream, and says where to send it.
	// ErrExists if this host already holds an active VM of that name.
	PrepareIncoming(ctx context.Context, vm VM) (Endpoint, error)
	// Migrate live-migrates the named VM from this host to the endpoint.
	// Its errors wrap ErrInvalid (bad name, endpoint or options; nothing
	// was touched), ErrNotFound or ErrState before a migration starts;
	// once one ran: ErrUnreachable (the target was never reached),
	// ErrExists (the target already holds the VM), ErrAborted (Abort, or
	// ctx ended), ErrSwitchoverHook (AtSwitchover failed or panicked) or
	// ErrMigration (the stream or the source failed otherwise).
	Migrate(ctx context.Context, name string, to Endpoint, opts MigrateOptions) (Stats, error)
	// Resume starts the guest's CPUs on this host (the target, after Migrate).
	Resume(ctx context.Context, name string) error
	// Abort cancels a migration of name. On a source it leaves the VM
	// running there; on a target it discards an instance that was prepared
	// but never resumed. Aborting when there is nothing to abort is a no-op.
	Abort(ctx context.Context, name string) error
}

// RunHook runs a switchover hook (MigrateOptions.AtSwitchover), turning
// a panic into an error: backends call it, so a hook's bug cancels the
// migration (the VM resumes at the source) instead of crashing the
// process while the source is paused.
func RunHook(ctx context.Context, hook func(context.Context) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("hook panicked: %v", r)
		}
	}()
	return hook(ctx)
}
