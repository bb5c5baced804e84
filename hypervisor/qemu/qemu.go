// Package qemu implements hypervisor.Hypervisor for QEMU processes on one
// host (a network namespace), driven over QMP in pure Go.
//
// A Hypervisor starts and waits for its QEMU processes itself: Start boots
// a VM from a Config, Define records the device model a host should use to
// receive a VM, and PrepareIncoming starts that model paused with
// "-incoming defer" listening on the host's migration address. Migrate
// uses QEMU's pause-before-switchover capability to run the caller's
// switchover hook while the source is paused and the target not resumed.
// WithTLS encrypts and mutually authenticates the migration stream (QEMU's
// tls-creds-x509); migtls.NewDir makes credentials for users without a PKI.
package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/internal/nsutil"
)

var _ hypervisor.Hypervisor = (*Hypervisor)(nil)

// Hypervisor manages the QEMU processes of one host.
type Hypervisor struct {
	host     string
	stateDir string
	qemu     string
	migAddr  netip.Addr
	tlsDir   string // WithTLS: credentials directory, "" = plain TCP
	log      *slog.Logger

	mu   sync.Mutex
	vms  map[string]*vmEntry
	defs map[string]Config

	quitting sync.WaitGroup           // sources of finished migrations, exiting
	exiting  map[string]chan struct{} // by VM name: closed once that source is gone
}

type vmEntry struct {
	p         *Process
	incoming  bool // prepared here, not yet resumed
	migrating bool // a Migrate from here is running
	aborted   bool // Abort was called during that Migrate
}

// Option configures a Hypervisor.
type Option func(*Hypervisor) error

// WithHost sets the network namespace QEMU runs in ("" = current).
func WithHost(ns string) Option {
	return func(h *Hypervisor) error { h.host = ns; return nil }
}

// WithStateDir sets the directory for QMP sockets, logs and serial files
// (default: a directory under os.TempDir() named after the host).
func WithStateDir(dir string) Option {
	return func(h *Hypervisor) error {
		if dir == "" {
			return fmt.Errorf("%w: state dir is empty", hypervisor.ErrInvalid)
		}
		h.stateDir = dir
		return nil
	}
}

// WithQEMU sets the QEMU binary (default "qemu-system-x86_64").
func WithQEMU(bin string) Option {
	return func(h *Hypervisor) error { h.qemu = bin; return nil }
}

// WithMigrationAddr sets the address this host receives migration streams
// on (PrepareIncoming). Default: the first IPv4 address of the interface
// holding the host's default route, else 127.0.0.1.
func WithMigrationAddr(a netip.Addr) Option {
	return func(h *Hypervisor) error {
		if !a.IsValid() {
			return fmt.Errorf("%w: migration address is not valid", hypervisor.ErrInvalid)
		}
		h.migAddr = a
		return nil
	}
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(h *Hypervisor) error { h.log = l; return nil }
}

// New returns a Hypervisor for one host. It starts nothing. A host that
// does not exist is an error wrapping both hypervisor.ErrInvalid and
// host.ErrNotFound.
func New(opts ...Option) (*Hypervisor, error) {
	h := &Hypervisor{qemu: "qemu-system-x86_64", log: slog.New(slog.DiscardHandler),
		vms: map[string]*vmEntry{}, defs: map[string]Config{}, exiting: map[string]chan struct{}{}}
	for _, o := range opts {
		if err := o(h); err != nil {
			return nil, err
		}
	}
	if err := nsutil.Check(h.host); err != nil {
		return nil, fmt.Errorf("%w: WithHost: %w", hypervisor.ErrInvalid, err)
	}
	if h.stateDir == "" {
		n := h.host
		if n == "" {
			n = "default"
		}
		h.stateDir = filepath.Join(os.TempDir(), "sealift-qemu-"+n)
	}
	defs, err := loadDefs(h.stateDir)
	if err != nil {
		return nil, err
	}
	h.defs = defs
	return h, nil
}

// Host is the network namespace this Hypervisor manages.
func (h *Hypervisor) Host() string { return h.host }

// StateDir is where QMP sockets, logs and serial files live.
func (h *Hypervisor) StateDir() string { return h.stateDir }

// Define records cfg as the device model of VM cfg.Name on this host
// (used by PrepareIncoming; Start defines too), in memory and as
// <name>.json in the state dir, where a later Hypervisor (a restarted
// agent) finds it. Nothing is started.
func (h *Hypervisor) Define(cfg Config) error {
	cfg = cfg.withDefaults(h.stateDir)
	if err := cfg.Validate(); err != nil {
		return err
	}
	if err := saveDef(h.stateDir, cfg); err != nil {
		return fmt.Errorf("qemu: define vm %q on host %q: %w", cfg.Name, h.host, err)
	}
	h.mu.Lock()
	h.defs[cfg.Name] = cfg
	h.mu.Unlock()
	return nil
}

// Config returns the device model defined for name (defaults filled in).
func (h *Hypervisor) Config(name string) (Config, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	c, ok := h.defs[name]
	return c, ok
}

// Start defines cfg and boots it on this host. ErrExists if a VM of that
// name is already there.
func (h *Hypervisor) Start(ctx context.Context, cfg Config) (hypervisor.VM, error) {
	cfg = cfg.withDefaults(h.stateDir)
	if err := cfg.Validate(); err != nil {
		return hypervisor.VM{}, err
	}
	if err := h.awaitExit(ctx, cfg.Name); err != nil {
		return hypervisor.VM{}, err
	}
	e, err := h.reserve(cfg.Name)
	if err != nil {
		return hypervisor.VM{}, err
	}
	if err := saveDef(h.stateDir, cfg); err != nil {
		h.release(cfg.Name, e)
		return hypervisor.VM{}, fmt.Errorf("qemu: start vm %q on host %q: %w", cfg.Name, h.host, err)
	}
	p, err := Launch(ctx, cfg, h.launchOpts(false))
	if err != nil {
		h.release(cfg.Name, e)
		return hypervisor.VM{}, err
	}
	h.mu.Lock()
	e.p = p
	h.defs[cfg.Name] = cfg
	h.mu.Unlock()
	h.log.Info("vm started", "vm", cfg.Name, "host", h.host, "pid", p.Pid())
	return h.Lookup(ctx, cfg.Name)
}

// Stop quits the VM's QEMU (killing it if ctx ends first) and forgets it.
func (h *Hypervisor) Stop(ctx context.Context, name string) error {
	e, err := h.entry(name)
	if err != nil {
		return err
	}
	err = e.p.Quit(ctx)
	h.release(name, e)
	return err
}

// Close kills every QEMU this Hypervisor started.
func (h *Hypervisor) Close() error {
	h.mu.Lock()
	var ps []*Process
	for n, e := range h.vms {
		if e.p != nil {
			ps = append(ps, e.p)
		}
		delete(h.vms, n)
	}
	h.mu.Unlock()
	for _, p := range ps {
		p.Kill()
	}
	h.quitting.Wait() // sources of finished migrations
	return nil
}

func (h *Hypervisor) launchOpts(incoming bool) LaunchOptions {
	return LaunchOptions{QEMU: h.qemu, Host: h.host, StateDir: h.stateDir, Incoming: incoming, TLSDir: h.tlsDir, Logger: h.log}
}

// reserve claims name for a new process (ErrExists if a live one holds it).
// awaitExit waits until a source of that name that is still quitting
// after its migration is gone: a new instance must not share its tap.
func (h *Hypervisor) awaitExit(ctx context.Context, name string) error {
	h.mu.Lock()
	gone := h.exiting[name]
	h.mu.Unlock()
	if gone == nil {
		return nil
	}
	select {
	case <-gone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu: vm %q on host %q: the previous instance is still exiting: %w", name, h.host, ctx.Err())
	}
}

func (h *Hypervisor) reserve(name string) (*vmEntry, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e, ok := h.vms[name]; ok {
		if e.p == nil || !e.p.Exited() {
			what := "an active VM"
			if e.incoming {
				what = "an incoming instance"
			}
			return nil, fmt.Errorf("%w: host %q already holds %s named %q", hypervisor.ErrExists, h.host, what, name)
		}
	}
	e := &vmEntry{}
	h.vms[name] = e
	return e, nil
}

func (h *Hypervisor) release(name string, e *vmEntry) {
	h.mu.Lock()
	if h.vms[name] == e {
		delete(h.vms, name)
	}
	h.mu.Unlock()
}

// entry returns the live process entry for name, or ErrNotFound.
func (h *Hypervisor) entry(name string) (*vmEntry, error) {
	if err := hypervisor.ValidName(name); err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	e, ok := h.vms[name]
	if _, quitting := h.exiting[name]; !ok && !quitting {
		// A QEMU of an earlier process (or detached by another)?
		a, err := h.adopt(name)
		if err != nil {
			return nil, err
		}
		if a != nil {
			h.vms[name], e, ok = a, a, true
		}
	}
	if !ok || e.p == nil {
		return nil, fmt.Errorf("%w: %q on host %q", hypervisor.ErrNotFound, name, h.host)
	}
	if e.p.Exited() {
		delete(h.vms, name)
		return nil, fmt.Errorf("%w: %q on host %q (its QEMU exited: %v)", hypervisor.ErrNotFound, name, h.host, e.p.waitErr)
	}
	return e, nil
}

// Lookup returns the VM named name on this host, or ErrNotFound.
func (h *Hypervisor) Lookup(ctx context.Context, name string) (hypervisor.VM, error) {
	e, err := h.entry(name)
	if err != nil {
		return hypervisor.VM{}, err
	}
	st, err := e.p.Status(ctx)
	if err != nil {
		if e.p.Exited() {
			return hypervisor.VM{}, fmt.Errorf("%w: %q on host %q", hypervisor.ErrNotFound, name, h.host)
		}
		return hypervisor.VM{}, fmt.Errorf("qemu: vm %q: %w", name, err)
	}
	vm := e.p.Config.vm(h.host, state(st))
	if h.tlsDir != "" {
		td, err := migtls.Load(h.tlsDir)
		if err != nil {
			return hypervisor.VM{}, err
		}
		vm.Identity = td.Identity
	}
	return vm, nil
}

// Process returns the QEMU process running name here (nil if none).
func (h *Hypervisor) Process(name string) *Process {
	e, err := h.entry(name)
	if err != nil {
		return nil
	}
	return e.p
}
