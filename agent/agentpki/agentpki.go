// Package agentpki holds the certificates and TLS configurations of the
// mutual-TLS link between the sealift controller and its per-host agents.
//
// Identity: every certificate carries exactly one URI SAN
// "sealift://<role>/<name>" (see IdentityURI and IdentityOf). Agent
// certificates also carry name as a DNS SAN and have ExtKeyUsageServerAuth
// only; controller certificates have ExtKeyUsageClientAuth only.
//
// ServerConfig (the agent's side), ClientConfig (the controller's side) and
// LoadFiles are meant for production: they take PEM from the operator's CA,
// allow TLS 1.3 only, and refuse a peer whose identity is not the expected
// one with an error wrapping ErrRefused.
//
// CA, NewCA, Issue and WriteFiles mint a throw-away CA and certificates for
// labs and tests. They are NOT FOR PRODUCTION: the CA key lives in memory,
// nothing is revoked and nothing is audited. Use the operator's CA instead.
package agentpki

import (
	"crypto"
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
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Role is the part a certificate's holder plays on the link.
type Role string

// The roles of the link.
const (
	RoleController Role = "controller"
	RoleAgent      Role = "agent"
)

const uriScheme = "sealift"

// ErrRefused is wrapped by the handshake errors of ServerConfig and
// ClientConfig when the peer's certificate is valid but its identity, role or
// key usage is not the expected one.
var ErrRefused = errors.New("agentpki: peer refused")

// IdentityURI returns the URI SAN "sealift://<role>/<name>" that carries an
// identity. It does not validate its arguments; Issue does.
func IdentityURI(role Role, name string) string {
	return uriScheme + "://" + string(role) + "/" + name
}

// IdentityOf returns the role and name from cert's single sealift:// URI SAN
// (URI SANs of other schemes are ignored). It fails if there is none,
// several, or if it is not exactly IdentityURI of a role and a valid name.
func IdentityOf(cert *x509.Certificate) (Role, string, error) {
	if cert == nil {
		return "", "", errors.New("agentpki: cert: nil certificate")
	}
	var ids []*url.URL
	for _, u := range cert.URIs {
		if u.Scheme == uriScheme {
			ids = append(ids, u)
		}
	}
	if len(ids) != 1 {
		return "", "", fmt.Errorf("agentpki: certificate %q has %d sealift:// URI SANs, want 1", cert.Subject.CommonName, len(ids))
	}
	u := ids[0]
	role, name := Role(u.Host), strings.TrimPrefix(u.Path, "/")
	// Canonical form only: no port, user, query, fragment or escapes.
	if checkRole(role) != nil || checkName("name", name) != nil || u.String() != IdentityURI(role, name) {
		return "", "", fmt.Errorf("agentpki: certificate %q: malformed identity URI %.80q", cert.Subject.CommonName, u.String())
	}
	return role, name, nil
}

// CA is a throw-away certificate authority (ECDSA P-256 key from
// crypto/rand) for labs and tests. NOT FOR PRODUCTION.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	PEM  []byte // the CA certificate, PEM
}

// NewCA mints a self-signed CA named name (its common name, 1..64 printable
// characters), valid from a minute ago (clock skew) for validFor.
// NOT FOR PRODUCTION.
func NewCA(name string, validFor time.Duration) (*CA, error) {
	if len(name) == 0 || len(name) > 64 || strings.IndexFunc(name, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return nil, fmt.Errorf("agentpki: name %.80q: want 1..64 printable characters", name)
	}
	if validFor <= 0 {
		return nil, fmt.Errorf("agentpki: validFor %v: must be positive", validFor)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(validFor),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	key, cert, der, err := sign(tmpl, nil, nil)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: pemBlock("CERTIFICATE", der)}, nil
}

// Identity is an issued certificate with its private key.
type Identity struct {
	Role    Role
	Name    string
	Cert    *x509.Certificate
	CertPEM []byte
	KeyPEM  []byte          // PKCS#8 PEM
	TLS     tls.Certificate // ready for tls.Config.Certificates
}

// Issue signs a new ECDSA P-256 key pair for role/name, valid from notBefore
// to notAfter (tests use it to make expired certificates). name must be
// 1..253 characters of [a-z0-9.-]. NOT FOR PRODUCTION.
func (ca *CA) Issue(role Role, name string, notBefore, notAfter time.Time) (*Identity, error) {
	if ca == nil || ca.Cert == nil || ca.Key == nil {
		return nil, errors.New("agentpki: ca: missing certificate or key")
	}
	if err := errors.Join(checkRole(role), checkName("name", name)); err != nil {
		return nil, err
	}
	if notBefore.IsZero() || notAfter.IsZero() || !notAfter.After(notBefore) {
		return nil, fmt.Errorf("agentpki: notBefore %s, notAfter %s: want non-zero times, notAfter after notBefore",
			notBefore.Format(time.RFC3339), notAfter.Format(time.RFC3339))
	}
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		URIs:                  []*url.URL{{Scheme: uriScheme, Host: string(role), Path: "/" + name}},
	}
	if role == RoleAgent {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{name}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	key, cert, der, err := sign(tmpl, ca.Cert, ca.Key)
	if err != nil {
		return nil, err
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("agentpki: encoding key for %s/%s: %w", role, name, err)
	}
	return &Identity{
		Role:    role,
		Name:    name,
		Cert:    cert,
		CertPEM: pemBlock("CERTIFICATE", der),
		KeyPEM:  pemBlock("PRIVATE KEY", pkcs8),
		TLS:     tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert},
	}, nil
}

// WriteFiles writes ca.pem, and <name>.pem and <name>-key.pem for each
// identity, into dir (created 0700 if missing), for daemons that read files.
// Keys are 0600, certificates 0644; each file is replaced atomically.
func (ca *CA) WriteFiles(dir string, ids ...*Identity) error {
	if ca == nil || len(ca.PEM) == 0 {
		return errors.New("agentpki: ca: missing PEM")
	}
	seen := map[string]bool{"ca": true} // ca.pem is taken
	for i, id := range ids {
		if id == nil || len(id.CertPEM) == 0 || len(id.KeyPEM) == 0 {
			return fmt.Errorf("agentpki: ids[%d]: missing certificate or key PEM", i)
		}
		if err := checkName(fmt.Sprintf("ids[%d].Name", i), id.Name); err != nil {
			return err
		}
		if seen[id.Name] {
			return fmt.Errorf("agentpki: ids[%d].Name %q: file name already used", i, id.Name)
		}
		seen[id.Name] = true
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("agentpki: dir: %w", err)
	}
	err := writeFile(filepath.Join(dir, "ca.pem"), ca.PEM, 0o644)
	for _, id := range ids {
		if err == nil {
			err = writeFile(filepath.Join(dir, id.Name+".pem"), id.CertPEM, 0o644)
		}
		if err == nil {
			err = writeFile(filepath.Join(dir, id.Name+"-key.pem"), id.KeyPEM, 0o600)
		}
	}
	return err
}

// writeFile replaces path by a temporary file created 0600, so that a key is
// never readable by others, even briefly, whatever the file was before.
func writeFile(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".agentpki-*")
	if err == nil {
		defer os.Remove(tmp.Name()) // no-op after the rename
		_, err = tmp.Write(data)
		if err == nil {
			err = tmp.Chmod(perm)
		}
		if cerr := tmp.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp.Name(), path)
		}
	}
	if err != nil {
		return fmt.Errorf("agentpki: writing %s: %w", path, err)
	}
	return nil
}

// sign makes a new ECDSA P-256 key and a certificate for it from tmpl,
// signed by parent's key, or self-signed if parent is nil.
func sign(tmpl, parent *x509.Certificate, parentKey crypto.Signer) (*ecdsa.PrivateKey, *x509.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("agentpki: key for %q: %w", tmpl.Subject.CommonName, err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("agentpki: serial number: %w", err)
	}
	tmpl.SerialNumber = serial.Add(serial, big.NewInt(1)) // positive, at most 128 bits
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("agentpki: signing %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("agentpki: parsing %q: %w", tmpl.Subject.CommonName, err)
	}
	return key, cert, der, nil
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

func checkRole(role Role) error {
	if role != RoleController && role != RoleAgent {
		return fmt.Errorf("agentpki: role %.80q: want %q or %q", role, RoleController, RoleAgent)
	}
	return nil
}

// checkName reports whether name is 1..253 characters of [a-z0-9.-]; field
// names the argument in the error.
func checkName(field, name string) error {
	ok := len(name) >= 1 && len(name) <= 253 && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789.-") == ""
	if !ok {
		return fmt.Errorf("agentpki: %s %.80q: want 1..253 characters of [a-z0-9.-]", field, name)
	}
	return nil
}
