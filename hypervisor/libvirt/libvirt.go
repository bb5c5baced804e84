// Package libvirt implements hypervisor.Hypervisor over libvirt's C API
// (libvirt.org/go/libvirt, cgo): one Hypervisor per libvirt daemon.
//
// Migrations are peer-to-peer (the source daemon connects to the target
// daemon at Endpoint.URI) and leave the target paused (VIR_MIGRATE_PAUSED)
// until its Resume. The switchover hook runs when the source reports the
// lifecycle event "suspended: migrated": the source is paused and the
// target cannot run before Resume. Unlike the qemu backend, libvirt keeps
// copying while the hook runs, so a failing hook can only cancel the
// migration while the job is still active; if the stream has completed,
// Migrate returns ErrSwitchoverHook with the VM paused at the target and
// gone from the source (the caller decides: Resume there, or not).
//
// It does not set or check hypervisor.VM.Identity: libvirt has no
// per-migration authorization of the stream's client certificate (its
// daemons' migrate_tls_x509_verify trusts every certificate of the CA),
// so with libvirt any host holding a certificate of that CA can feed a
// prepared target; the qemu backend authorizes the source host alone.
package libvirt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	golibvirt "libvirt.org/go/libvirt"

	"github.com/sealift/sealift/hypervisor"
)

var _ hypervisor.Hypervisor = (*Hypervisor)(nil)

// Hypervisor manages the domains of one libvirt daemon.
type Hypervisor struct {
	uri        string
	peerURI    string
	migrateURI string
	host       string
	tls        bool // WithTLS: VIR_MIGRATE_TLS
	log        *slog.Logger
	conn       *golibvirt.Connect

	mu       sync.Mutex
	prepared map[string]bool // PrepareIncoming'd here, not resumed
	aborted  map[string]bool // Abort asked during a Migrate from here
}

// Option configures a Hypervisor.
type Option func(*Hypervisor) error

// WithURI sets the URI this process connects to the daemon with
// (required), e.g. "qemu+unix:///system?socket=/path/libvirt-sock".
func WithURI(uri string) Option {
	return func(h *Hypervisor) error { h.uri = uri; return nil }
}

// WithPeerURI sets the URI other daemons use to reach this one for
// peer-to-peer migration, e.g. "qemu+tcp://203.0.113.1:16512/system"
// (PrepareIncoming returns it as Endpoint.URI). Default: WithURI's.
func WithPeerURI(uri string) Option {
	return func(h *Hypervisor) error { h.peerURI = uri; return nil }
}

// WithMigrateURI sets the data-channel URI migrations into this daemon use
// (Endpoint.MigrateURI), e.g. "tcp://203.0.113.1". Default: libvirt's.
func WithMigrateURI(uri string) Option {
	return func(h *Hypervisor) error { h.migrateURI = uri; return nil }
}

// WithTLS makes every Migrate from this daemon encrypt the migration
// stream (VIR_MIGRATE_TLS): QEMU's TLS migration with the X.509
// credentials in the directory both daemons' qemu.conf name
// (migrate_tls_x509_cert_dir, default /etc/pki/qemu; see
// internal/libvirtd Options.MigrateTLSDir and migtls.NewDir). The
// target's server certificate must name the host of Endpoint.MigrateURI
// (libvirt verifies it as the TLS hostname); with
// migrate_tls_x509_verify = 1 the target checks the source's client
// certificate too. A daemon without usable credentials fails the
// migration; the VM keeps running at the source.
func WithTLS() Option {
	return func(h *Hypervisor) error { h.tls = true; return nil }
}

// TLS reports whether Migrate from here uses VIR_MIGRATE_TLS.
func (h *Hypervisor) TLS() bool { return h.tls }

// WithHost names the host in returned VMs (default: the URI).
func WithHost(name string) Option {
	return func(h *Hypervisor) error { h.host = name; return nil }
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option {
	return func(h *Hypervisor) error { h.log = l; return nil }
}

var (
	eventOnce sync.Once
	eventErr  error
)

// startEventLoop registers libvirt's default event implementation and
// runs it on a goroutine, once per process (needed for domain events and
// keepalive; it must precede the first connection).
func startEventLoop() error {
	eventOnce.Do(func() {
		if eventErr = golibvirt.EventRegisterDefaultImpl(); eventErr != nil {
			return
		}
		go func() {
			for {
				if err := golibvirt.EventRunDefaultImpl(); err != nil {
					slog.Default().Warn("libvirt event loop", "err", err)
					time.Sleep(100 * time.Millisecond) // do not spin on a persistent error
				}
			}
		}()
	})
	return eventErr
}

// New connects to a libvirt daemon.
func New(opts ...Option) (*Hypervisor, error) {
	h := &Hypervisor{log: slog.New(slog.DiscardHandler), prepared: map[string]bool{}, aborted: map[string]bool{}}
	for _, o := range opts {
		if err := o(h); err != nil {
			return nil, err
		}
	}
	if h.uri == "" {
		return nil, fmt.Errorf("%w: WithURI is required", hypervisor.ErrInvalid)
	}
	if h.peerURI == "" {
		h.peerURI = h.uri
	}
	if err := checkPeerURI(h.peerURI); err != nil {
		return nil, err
	}
	if h.migrateURI != "" {
		if err := checkMigrateURI(h.migrateURI); err != nil {
			return nil, err
		}
	}
	if h.host == "" {
		h.host = h.uri
	}
	if err := startEventLoop(); err != nil {
		return nil, fmt.Errorf("libvirt: event loop: %w", err)
	}
	c, err := golibvirt.NewConnect(h.uri)
	if err != nil {
		return nil, fmt.Errorf("%w: connect %s: %v", hypervisor.ErrUnreachable, h.uri, err)
	}
	if err := c.SetKeepAlive(5, 3); err != nil {
		h.log.Debug("libvirt keepalive", "err", err)
	}
	h.conn = c
	return h, nil
}

// Close closes the connection (domains keep running).
func (h *Hypervisor) Close() error {
	if h.conn == nil {
		return nil
	}
	_, err := h.conn.Close()
	h.conn = nil
	return err
}

// Conn is the underlying libvirt connection.
func (h *Hypervisor) Conn() *golibvirt.Connect { return h.conn }

func checkPeerURI(uri string) error {
	u, err := url.Parse(uri)
	if err != nil || !strings.HasPrefix(u.Scheme, "qemu") || u.Path != "/system" && u.Path != "/session" {
		return fmt.Errorf("%w: URI %q: want qemu[+transport]://[host[:port]]/system", hypervisor.ErrInvalid, uri)
	}
	return nil
}

func checkMigrateURI(uri string) error {
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "tcp" || u.Hostname() == "" {
		return fmt.Errorf("%w: MigrateURI %q: want tcp://HOST[:PORT]", hypervisor.ErrInvalid, uri)
	}
	return nil
}

func isCode(err error, code golibvirt.ErrorNumber) bool {
	var le golibvirt.Error
	return errors.As(err, &le) && le.Code == code
}

// domain looks name up, mapping "no domain" to ErrNotFound.
func (h *Hypervisor) domain(ctx context.Context, name string) (*golibvirt.Domain, error) {
	if err := hypervisor.ValidName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	d, err := h.conn.LookupDomainByName(name)
	if err != nil {
		if isCode(err, golibvirt.ERR_NO_DOMAIN) {
			return nil, fmt.Errorf("%w: %q on host %q", hypervisor.ErrNotFound, name, h.host)
		}
		return nil, fmt.Errorf("libvirt: lookup %q on host %q: %w", name, h.host, err)
	}
	return d, nil
}

// state returns the contract state of d.
func state(d *golibvirt.Domain) (hypervisor.State, golibvirt.DomainState, int, error) {
	st, reason, err := d.GetState()
	if err != nil {
		return "", 0, 0, err
	}
	switch st {
	case golibvirt.DOMAIN_RUNNING:
		return hypervisor.Running, st, reason, nil
	case golibvirt.DOMAIN_PAUSED, golibvirt.DOMAIN_PMSUSPENDED, golibvirt.DOMAIN_BLOCKED:
		if golibvirt.DomainPausedReason(reason) == golibvirt.DOMAIN_PAUSED_MIGRATION || golibvirt.DomainPausedReason(reason) == golibvirt.DOMAIN_PAUSED_STARTING_UP {
			if ji, err := d.GetJobStats(0); err == nil && ji.OperationSet && ji.Operation == golibvirt.DOMAIN_JOB_OPERATION_MIGRATION_IN {
				return hypervisor.Incoming, st, reason, nil
			}
		}
		return hypervisor.Paused, st, reason, nil
	default:
		return hypervisor.Shutoff, st, reason, nil
	}
}

// Lookup returns the domain named name on this daemon, or ErrNotFound.
func (h *Hypervisor) Lookup(ctx context.Context, name string) (hypervisor.VM, error) {
	d, err := h.domain(ctx, name)
	if err != nil {
		return hypervisor.VM{}, err
	}
	defer d.Free()
	s, _, _, err := state(d)
	if err != nil {
		if isCode(err, golibvirt.ERR_NO_DOMAIN) {
			return hypervisor.VM{}, fmt.Errorf("%w: %q on host %q", hypervisor.ErrNotFound, name, h.host)
		}
		return hypervisor.VM{}, fmt.Errorf("libvirt: state of %q on host %q: %w", name, h.host, err)
	}
	vm := hypervisor.VM{Name: name, Host: h.host, State: s}
	if info, err := d.GetInfo(); err == nil {
		vm.MemoryBytes = info.MaxMem << 10
	}
	if x, err := d.GetXMLDesc(0); err == nil {
		vm.NICs = parseNICs(x)
	}
	return vm, nil
}

// Start creates and boots a transient domain from spec. ErrExists if the
// daemon already has an active domain of that name.
func (h *Hypervisor) Start(ctx context.Context, spec DomainSpec) (hypervisor.VM, error) {
	x, err := spec.XML()
	if err != nil {
		return hypervisor.VM{}, err
	}
	if vm, err := h.Lookup(ctx, spec.Name); err == nil && vm.State != hypervisor.Shutoff {
		return hypervisor.VM{}, fmt.Errorf("%w: host %q already runs %q", hypervisor.ErrExists, h.host, spec.Name)
	}
	d, err := h.conn.DomainCreateXML(x, 0)
	if err != nil {
		return hypervisor.VM{}, fmt.Errorf("libvirt: create %q on host %q: %w", spec.Name, h.host, err)
	}
	d.Free()
	h.log.Info("domain started", "vm", spec.Name, "host", h.host)
	return h.Lookup(ctx, spec.Name)
}

// Destroy stops a domain at once (virDomainDestroy). ErrNotFound if absent.
func (h *Hypervisor) Destroy(ctx context.Context, name string) error {
	d, err := h.domain(ctx, name)
	if err != nil {
		return err
	}
	defer d.Free()
	if err := d.Destroy(); err != nil && !isCode(err, golibvirt.ERR_OPERATION_INVALID) {
		return fmt.Errorf("libvirt: destroy %q on host %q: %w", name, h.host, err)
	}
	h.mu.Lock()
	delete(h.prepared, name)
	h.mu.Unlock()
	return nil
}

// PrepareIncoming checks that this daemon can receive vm and returns where
// to send it: for libvirt the target instance is created by the
// migration itself. ErrExists if an active domain of that name is here.
func (h *Hypervisor) PrepareIncoming(ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
	if err := hypervisor.ValidName(vm.Name); err != nil {
		return hypervisor.Endpoint{}, err
	}
	if alive, err := h.conn.IsAlive(); err != nil || !alive {
		return hypervisor.Endpoint{}, fmt.Errorf("%w: daemon %s: connection not alive: %v", hypervisor.ErrUnreachable, h.uri, err)
	}
	got, err := h.Lookup(ctx, vm.Name)
	switch {
	case err == nil && got.State != hypervisor.Shutoff:
		return hypervisor.Endpoint{}, fmt.Errorf("%w: host %q already holds %q (%s)", hypervisor.ErrExists, h.host, vm.Name, got.State)
	case err != nil && !errors.Is(err, hypervisor.ErrNotFound):
		return hypervisor.Endpoint{}, err
	}
	h.mu.Lock()
	h.prepared[vm.Name] = true
	h.mu.Unlock()
	return hypervisor.Endpoint{VM: vm.Name, URI: h.peerURI, MigrateURI: h.migrateURI}, nil
}

// Resume starts the guest's CPUs here (the target, after Migrate).
// Resuming a running domain is a no-op.
func (h *Hypervisor) Resume(ctx context.Context, name string) error {
	d, err := h.domain(ctx, name)
	if err != nil {
		return err
	}
	defer d.Free()
	s, _, _, err := state(d)
	if err != nil {
		return fmt.Errorf("libvirt: state of %q on host %q: %w", name, h.host, err)
	}
	switch s {
	case hypervisor.Running:
	case hypervisor.Paused:
		if err := d.Resume(); err != nil {
			return fmt.Errorf("libvirt: resume %q on host %q: %w", name, h.host, err)
		}
		h.log.Info("domain resumed", "vm", name, "host", h.host)
	default:
		return fmt.Errorf("%w: %q on host %q is %s", hypervisor.ErrState, name, h.host, s)
	}
	h.mu.Lock()
	delete(h.prepared, name)
	h.mu.Unlock()
	return nil
}
