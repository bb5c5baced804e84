package qemu

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sealift/sealift/hypervisor"
)

// Files of a TLS credentials directory, named as QEMU's tls-creds-x509
// object (and libvirt's migrate_tls_x509_cert_dir) expect them. All five
// are required: any host may be a migration's target (server) and, when
// the VM moves on or back, its source (client).
const (
	TLSCACert     = "ca-cert.pem"     // CA certificate(s) both peers are verified against
	TLSServerCert = "server-cert.pem" // presented by the target; must name its migration address
	TLSServerKey  = "server-key.pem"
	TLSClientCert = "client-cert.pem" // presented by the source (the target verifies it)
	TLSClientKey  = "client-key.pem"
	// TLSDHParams is optional: without it QEMU generates 2048-bit DH
	// parameters each time it loads server credentials (0.1–0.5 s per
	// PrepareIncoming here). NewTLSDir writes RFC 7919's ffdhe2048.
	TLSDHParams = "dh-params.pem"
)

// ffdhe2048 is the RFC 7919 group as PKCS#3 DH parameters (public,
// standard; openssl genpkey -genparam -algorithm DH -pkeyopt
// dh_param:ffdhe2048).
const ffdhe2048 = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`

// QOM ids of the credentials objects on QEMU's command line.
const (
	tlsServerID = "sealift-tls-server"
	tlsClientID = "sealift-tls-client"
)

// WithTLS makes every migration to and from this host run over TLS with
// the X.509 credentials in dir (files TLSCACert … TLSClientKey; see
// NewTLSDir). Both peers verify each other (verify-peer=on) against the
// CA, and the source checks that the target's server certificate names
// the address it connects to. Every QEMU this Hypervisor starts gets a
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
		if _, err := loadTLSDir(abs); err != nil {
			return err
		}
		h.tlsDir = abs
		return nil
	}
}

// TLSDir is the credentials directory set by WithTLS ("" = plain TCP).
func (h *Hypervisor) TLSDir() string { return h.tlsDir }

// tlsDir is a checked credentials directory.
type tlsDir struct {
	dir    string
	server *x509.Certificate
}

// CheckTLSDir checks that dir holds the five credential files, that each
// key matches its certificate and that both certificates chain to the CA
// and are valid now. Errors wrap hypervisor.ErrInvalid and name the file.
func CheckTLSDir(dir string) error {
	_, err := loadTLSDir(dir)
	return err
}

func loadTLSDir(dir string) (tlsDir, error) {
	bad := func(file string, err error) (tlsDir, error) {
		return tlsDir{}, fmt.Errorf("%w: TLS dir %q: %s: %v", hypervisor.ErrInvalid, dir, file, err)
	}
	for _, f := range []string{TLSCACert, TLSServerCert, TLSServerKey, TLSClientCert, TLSClientKey} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			return tlsDir{}, fmt.Errorf("%w: TLS dir %q: missing %s", hypervisor.ErrInvalid, dir, f)
		}
		if err != nil {
			return bad(f, err)
		}
		if !fi.Mode().IsRegular() {
			return bad(f, errors.New("not a regular file"))
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, TLSCACert))
	if err != nil {
		return bad(TLSCACert, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return bad(TLSCACert, errors.New("no PEM certificate"))
	}
	var td tlsDir
	td.dir = dir
	for _, pair := range []struct {
		cert, key string
		usage     x509.ExtKeyUsage
	}{{TLSServerCert, TLSServerKey, x509.ExtKeyUsageServerAuth}, {TLSClientCert, TLSClientKey, x509.ExtKeyUsageClientAuth}} {
		kp, err := tls.LoadX509KeyPair(filepath.Join(dir, pair.cert), filepath.Join(dir, pair.key))
		if err != nil {
			// The error names no key material, only what did not match.
			return bad(pair.cert+" / "+pair.key, err)
		}
		leaf, err := x509.ParseCertificate(kp.Certificate[0])
		if err != nil {
			return bad(pair.cert, err)
		}
		inter := x509.NewCertPool()
		for _, der := range kp.Certificate[1:] {
			if c, err := x509.ParseCertificate(der); err == nil {
				inter.AddCert(c)
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{pair.usage}}); err != nil {
			return bad(pair.cert, fmt.Errorf("not valid against %s: %w", TLSCACert, err))
		}
		if pair.usage == x509.ExtKeyUsageServerAuth {
			td.server = leaf
		}
	}
	return td, nil
}

// checkServerAddr makes sure the server certificate names addr, the
// address a source will connect to and verify (tls-hostname).
func (h *Hypervisor) checkServerAddr(addr netip.Addr) error {
	td, err := loadTLSDir(h.tlsDir)
	if err != nil {
		return err
	}
	if err := td.server.VerifyHostname(addr.String()); err != nil {
		return fmt.Errorf("%w: TLS dir %q: %s does not name migration address %s of host %q: %v",
			hypervisor.ErrInvalid, h.tlsDir, TLSServerCert, addr, h.host, err)
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

// NewTLSDir writes a fresh set of migration credentials into dir (created
// 0700 if missing; files 0600, replacing existing ones): a new self-signed
// CA (ECDSA P-256, valid one year; its private key is discarded, so it
// signs nothing else), a server certificate naming serverAddrs (every
// address a target receives migrations on) and a client certificate, both
// signed by it, and TLSDHParams. For tests, labs and users without a
// PKI: give every host the same directory, then WithTLS(dir).
func NewTLSDir(dir string, serverAddrs []netip.Addr) error {
	if dir == "" {
		return fmt.Errorf("%w: TLS dir is empty", hypervisor.ErrInvalid)
	}
	if len(serverAddrs) == 0 {
		return fmt.Errorf("%w: serverAddrs is empty (the server certificate must name the migration addresses)", hypervisor.ErrInvalid)
	}
	var ips [][]byte
	for i, a := range serverAddrs {
		if !a.IsValid() || a.Zone() != "" {
			return fmt.Errorf("%w: serverAddrs[%d] %q is not a valid address", hypervisor.ErrInvalid, i, a)
		}
		ips = append(ips, a.Unmap().AsSlice())
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("qemu: TLS dir %q: %w", dir, err)
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "sealift migration CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := signCert(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	files := map[string][]byte{TLSCACert: pemBlock("CERTIFICATE", caDER), TLSDHParams: []byte(ffdhe2048)}
	for _, leaf := range []struct {
		cert, key, cn string
		usage         x509.ExtKeyUsage
		ips           [][]byte
	}{
		{TLSServerCert, TLSServerKey, "sealift migration target", x509.ExtKeyUsageServerAuth, ips},
		{TLSClientCert, TLSClientKey, "sealift migration source", x509.ExtKeyUsageClientAuth, nil},
	} {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			Subject:   pkix.Name{CommonName: leaf.cn},
			NotBefore: now.Add(-time.Hour),
			NotAfter:  now.AddDate(1, 0, 0),
			// QEMU rejects a leaf whose (critical) key usage lacks key
			// encipherment, even for ECDSA keys.
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage:           []x509.ExtKeyUsage{leaf.usage},
			BasicConstraintsValid: true,
		}
		for _, ip := range leaf.ips {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		}
		der, err := signCert(tmpl, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		kder, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		files[leaf.cert] = pemBlock("CERTIFICATE", der)
		files[leaf.key] = pemBlock("PRIVATE KEY", kder)
	}
	for _, f := range []string{TLSCACert, TLSServerCert, TLSServerKey, TLSClientCert, TLSClientKey, TLSDHParams} {
		if err := writeFile0600(dir, f, files[f]); err != nil {
			return fmt.Errorf("qemu: TLS dir %q: %s: %w", dir, f, err)
		}
	}
	return nil
}

func signCert(tmpl, parent *x509.Certificate, pub *ecdsa.PublicKey, signer *ecdsa.PrivateKey) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1))
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeFile0600 replaces dir/name atomically with a 0600 file.
func writeFile0600(dir, name string, data []byte) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp-") // created 0600
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, werr := f.Write(data)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp, 0o600)
	}
	if werr == nil {
		werr = os.Rename(tmp, filepath.Join(dir, name))
	}
	if werr != nil {
		os.Remove(tmp)
	}
	return werr
}
