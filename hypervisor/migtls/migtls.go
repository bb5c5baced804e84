// Package migtls makes and checks the X.509 credentials that encrypt and
// mutually authenticate a live migration stream: a directory laid out as
// QEMU's tls-creds-x509 object (and libvirt's migrate_tls_x509_cert_dir)
// expects it. Both hypervisor backends use it; NewDir makes credentials
// for tests, labs and users without a PKI.
package migtls

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/sealift/sealift/hypervisor"
)

// Files of a credentials directory, named as QEMU's tls-creds-x509
// object (and libvirt's migrate_tls_x509_cert_dir) expect them. All five
// are required: any host may be a migration's target (server) and, when
// the VM moves on or back, its source (client).
const (
	CACert     = "ca-cert.pem"     // CA certificate(s) both peers are verified against
	ServerCert = "server-cert.pem" // presented by the target; must name its migration address
	ServerKey  = "server-key.pem"
	ClientCert = "client-cert.pem" // presented by the source (the target verifies it)
	ClientKey  = "client-key.pem"
	// DHParams is optional: without it QEMU generates 2048-bit DH
	// parameters each time it loads server credentials (0.1–0.5 s per
	// PrepareIncoming of the qemu backend). NewDir writes RFC 7919's ffdhe2048.
	DHParams = "dh-params.pem"
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

// Dir is a checked credentials directory.
type Dir struct {
	// Path is the directory.
	Path string
	// Server is the server certificate (ServerCert's leaf).
	Server *x509.Certificate
	// Identity is the client certificate's subject DN, as QEMU's
	// tls-authz compares it (RFC 4514: "CN=host-a"), if the certificate
	// names a host (CA.HostDir); "" for NewDir's shared credentials.
	Identity string
}

// CheckDir checks that dir holds the five credential files, that each
// key matches its certificate and that both certificates chain to the CA
// and are valid now. Errors wrap hypervisor.ErrInvalid and name the file.
func CheckDir(dir string) error {
	_, err := Load(dir)
	return err
}

// Load checks dir as CheckDir does and returns it with its server
// certificate.
func Load(dir string) (Dir, error) {
	bad := func(file string, err error) (Dir, error) {
		return Dir{}, fmt.Errorf("%w: TLS dir %q: %s: %v", hypervisor.ErrInvalid, dir, file, err)
	}
	for _, f := range []string{CACert, ServerCert, ServerKey, ClientCert, ClientKey} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if errors.Is(err, os.ErrNotExist) {
			return Dir{}, fmt.Errorf("%w: TLS dir %q: missing %s", hypervisor.ErrInvalid, dir, f)
		}
		if err != nil {
			return bad(f, err)
		}
		if !fi.Mode().IsRegular() {
			return bad(f, errors.New("not a regular file"))
		}
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return bad(CACert, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return bad(CACert, errors.New("no PEM certificate"))
	}
	td := Dir{Path: dir}
	for _, pair := range []struct {
		cert, key string
		usage     x509.ExtKeyUsage
	}{{ServerCert, ServerKey, x509.ExtKeyUsageServerAuth}, {ClientCert, ClientKey, x509.ExtKeyUsageClientAuth}} {
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
			return bad(pair.cert, fmt.Errorf("not valid against %s: %w", CACert, err))
		}
		if pair.usage == x509.ExtKeyUsageServerAuth {
			td.Server = leaf
		} else if leaf.Subject.CommonName != sharedClientCN {
			td.Identity = leaf.Subject.String()
		}
	}
	return td, nil
}

// NewDir writes a fresh set of migration credentials into dir (created
// 0700 if missing; files 0600, replacing existing ones): a new self-signed
// CA (ECDSA P-256, valid one year; its private key is discarded, so it
// signs nothing else), a server certificate naming serverAddrs (every
// address a target receives migrations on) and a client certificate, both
// signed by it, and DHParams. For tests, labs and users without a
// PKI: give every host the same directory (qemu.WithTLS(dir), or both
// daemons' migrate_tls_x509_cert_dir for libvirt).
func NewDir(dir string, serverAddrs []netip.Addr) error {
	ca, err := NewCA()
	if err != nil {
		return err
	}
	return ca.write(dir, "", serverAddrs)
}

// sharedClientCN is the client certificate's name in NewDir's shared
// credentials: no host's identity.
const sharedClientCN = "sealift migration source"

// CA is a throw-away migration CA (ECDSA P-256, valid one year) that
// signs one credentials directory per host (HostDir): each host then has
// a certificate of its own, and a target can accept a stream from one
// source host only (hypervisor.VM.Identity). For tests, labs and users
// without a PKI; its key lives in memory only.
type CA struct {
	cert *x509.Certificate
	der  []byte
	key  *ecdsa.PrivateKey
}

// NewCA makes a CA.
func NewCA() (*CA, error) {
	now := time.Now()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "sealift migration CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(1, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := signCert(tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, der: der, key: key}, nil
}

// HostDir writes host's credentials into dir, as NewDir does, but signed
// by ca and naming host: the server certificate (CN=host, naming
// serverAddrs, the addresses this host receives migrations on) and the
// client certificate (CN=host: the host's identity, Dir.Identity).
func (ca *CA) HostDir(dir, host string, serverAddrs []netip.Addr) error {
	if host == "" || strings.ContainsAny(host, ",+=\\\"<>;#") || len(host) > 64 {
		return fmt.Errorf("%w: host %q must be 1 to 64 characters without DN special characters", hypervisor.ErrInvalid, host)
	}
	return ca.write(dir, host, serverAddrs)
}

// write writes a credentials directory signed by ca; host "" makes
// NewDir's shared, nameless leaves.
func (ca *CA) write(dir, host string, serverAddrs []netip.Addr) error {
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
		return fmt.Errorf("migtls: dir %q: %w", dir, err)
	}
	now := time.Now()
	serverCN, clientCN := "sealift migration target", sharedClientCN
	if host != "" {
		serverCN, clientCN = host, host
	}
	files := map[string][]byte{CACert: pemBlock("CERTIFICATE", ca.der), DHParams: []byte(ffdhe2048)}
	for _, leaf := range []struct {
		cert, key, cn string
		usage         x509.ExtKeyUsage
		ips           [][]byte
	}{
		{ServerCert, ServerKey, serverCN, x509.ExtKeyUsageServerAuth, ips},
		{ClientCert, ClientKey, clientCN, x509.ExtKeyUsageClientAuth, nil},
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
		der, err := signCert(tmpl, ca.cert, &key.PublicKey, ca.key)
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
	for _, f := range []string{CACert, ServerCert, ServerKey, ClientCert, ClientKey, DHParams} {
		if err := writeFile0600(dir, f, files[f]); err != nil {
			return fmt.Errorf("migtls: dir %q: %s: %w", dir, f, err)
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

// VerifyServerAddr checks that the server certificate names addr, the
// address a source connects to and verifies (QEMU's tls-hostname).
// Errors wrap hypervisor.ErrInvalid.
func (d Dir) VerifyServerAddr(addr netip.Addr) error {
	if err := d.Server.VerifyHostname(addr.String()); err != nil {
		return fmt.Errorf("%w: TLS dir %q: %s does not name migration address %s: %v", hypervisor.ErrInvalid, d.Path, ServerCert, addr, err)
	}
	return nil
}
