package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
)

// QOM ids of the credentials objects on QEMU's command line.
const (
	tlsServerID = "sealift-tls-server"
	tlsClientID = "sealift-tls-client"
	tlsAuthzID  = "sealift-tls-authz"
)

// WithTLS makes every migration to and from this host run over TLS with
// the X.509 credentials in dir (laid out as package migtls describes;
// migtls.NewDir makes a set). Both peers verify each other
// (verify-peer=on) against the CA, and the source checks that the
// target's server certificate names the address it connects to. Every QEMU this Hypervisor starts gets a
// client credentials object (id sealift-tls-client), incoming instances
// also a server one (sealift-tls-server); Migrate reloads the client
// object from dir, so renewed files take effect without a restart. Both
// hosts of a migration must use TLS (a plain source fails against a TLS
// target, and the VM keeps running at the source). The files are
// checked here, before anything is started, and again by every
// PrepareIncoming (whose server certificate must name the host's
// migration address) and Migrate.
func WithTLS(dir string) Option {
	return func(h *Hypervisor) error {
		if dir == "" {
			return fmt.Errorf("%w: TLS dir is empty", hypervisor.ErrInvalid)
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("%w: TLS dir %q: %v", hypervisor.ErrInvalid, dir, err)
		}
		if err := migtls.CheckDir(abs); err != nil {
			return err
		}
		h.tlsDir = abs
		return nil
	}
}

// TLSDir is the credentials directory set by WithTLS ("" = plain TCP).
func (h *Hypervisor) TLSDir() string { return h.tlsDir }

// checkServerAddr makes sure the server certificate names addr, the
// address a source will connect to and verify (tls-hostname).
func (h *Hypervisor) checkServerAddr(addr netip.Addr) error {
	td, err := migtls.Load(h.tlsDir)
	if err != nil {
		return err
	}
	if err := td.VerifyServerAddr(addr); err != nil {
		return fmt.Errorf("%w (host %q)", err, h.host)
	}
	return nil
}

// tlsArgs are the -object options for a QEMU started with credentials in
// dir: a client object always, a server object for incoming instances.
func tlsArgs(dir string, incoming bool) []string {
	if dir == "" {
		return nil
	}
	d := strings.ReplaceAll(dir, ",", ",,") // QEMU's option escaping
	a := []string{"-object", "tls-creds-x509,id=" + tlsClientID + ",endpoint=client,verify-peer=on,dir=" + d}
	if incoming {
		a = append(a, "-object", "tls-creds-x509,id="+tlsServerID+",endpoint=server,verify-peer=on,dir="+d)
	}
	return a
}

// reloadClientCreds replaces p's client credentials object with one
// loaded from dir now, so a long-running VM migrates with certificates
// renewed since it started. If the old object cannot be deleted (still
// held by QEMU) it is kept.
func reloadClientCreds(ctx context.Context, p *Process, dir string, log *slog.Logger) error {
	if err := p.QMP().Execute(ctx, "object-del", map[string]any{"id": tlsClientID}, nil); err != nil &&
		!strings.Contains(err.Error(), "not found") {
		log.Warn("TLS client credentials not reloaded", "vm", p.Config.Name, "err", err)
		return nil
	}
	err := p.QMP().Execute(ctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": tlsClientID,
		"endpoint": "client", "verify-peer": true, "dir": dir}, nil)
	if err != nil {
		return fmt.Errorf("load TLS client credentials from %q: %w", dir, err)
	}
	return nil
}

// setTLS points the next migration of p at its credentials object: the
// server one on a target, the client one (verifying hostname) on a source.
func setTLS(ctx context.Context, p *Process, server bool, hostname string) error {
	params := map[string]any{"tls-creds": tlsClientID, "tls-hostname": hostname}
	if server {
		params = map[string]any{"tls-creds": tlsServerID}
	}
	if err := p.QMP().Execute(ctx, "migrate-set-parameters", params, nil); err != nil {
		return fmt.Errorf("set tls-creds: %w", err)
	}
	return nil
}

// tlsRefused reports whether QEMU's error describes a failed TLS handshake
// or certificate check (a peer that answered but was not trusted: not
// ErrUnreachable).
func tlsRefused(desc string) bool {
	d := strings.ToLower(desc)
	for _, s := range []string{"certificate", "tls", "handshake", "x509"} {
		if strings.Contains(d, s) {
			return true
		}
	}
	return false
}

// authorize makes the incoming instance p accept a migration stream only
// from a client certificate whose subject DN is identity (the source
// host's, hypervisor.VM.Identity): an authz-simple object and the
// migration parameter tls-authz. Another host's certificate of the same
// CA fails the handshake; the source keeps the VM.
func authorize(ctx context.Context, p *Process, identity string) error {
	if err := p.QMP().Execute(ctx, "object-add", map[string]any{"qom-type": "authz-simple", "id": tlsAuthzID,
		"identity": identity}, nil); err != nil {
		return fmt.Errorf("authorize source %q: %w", identity, err)
	}
	if err := p.QMP().Execute(ctx, "migrate-set-parameters", map[string]any{"tls-authz": tlsAuthzID}, nil); err != nil {
		return fmt.Errorf("set tls-authz: %w", err)
	}
	return nil
}
