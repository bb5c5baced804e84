package agentpki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
)

// ServerConfig is the agent's side: TLS 1.3 only, cert as its certificate,
// client certificates required and verified against caPEM, and the client's
// leaf must carry ExtKeyUsageClientAuth and identity role "controller", else
// the handshake fails with an error wrapping ErrRefused that says which
// role/name was presented and what is wanted.
func ServerConfig(caPEM []byte, cert tls.Certificate) (*tls.Config, error) {
	c, pool, err := baseConfig(caPEM, cert)
	if err != nil {
		return nil, err
	}
	c.ClientAuth, c.ClientCAs = tls.RequireAndVerifyClientCert, pool
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		return checkPeer(cs, "client", x509.ExtKeyUsageClientAuth, RoleController, "")
	}
	return c, nil
}

// ClientConfig is the controller's side for one agent: TLS 1.3 only, cert as
// its certificate, the server verified against caPEM with ServerName
// agentName, and the server's leaf must carry ExtKeyUsageServerAuth and
// identity (agent, agentName). An agent certificate for another host, or a
// controller certificate presented as a server, fails the handshake.
func ClientConfig(caPEM []byte, cert tls.Certificate, agentName string) (*tls.Config, error) {
	if err := checkName("agentName", agentName); err != nil {
		return nil, err
	}
	c, pool, err := baseConfig(caPEM, cert)
	if err != nil {
		return nil, err
	}
	c.RootCAs, c.ServerName = pool, agentName
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		return checkPeer(cs, "server", x509.ExtKeyUsageServerAuth, RoleAgent, agentName)
	}
	return c, nil
}

func baseConfig(caPEM []byte, cert tls.Certificate) (*tls.Config, *x509.CertPool, error) {
	pool, err := parseCAs(caPEM)
	if err != nil {
		return nil, nil, err
	}
	if len(cert.Certificate) == 0 || cert.PrivateKey == nil {
		return nil, nil, errors.New("agentpki: cert: want a certificate and its private key")
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		MaxVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
	}, pool, nil
}

// LoadFiles reads a CA PEM file and a certificate/key pair (for daemons and
// the CLI).
func LoadFiles(caFile, certFile, keyFile string) (caPEM []byte, cert tls.Certificate, err error) {
	caPEM, err = os.ReadFile(caFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("agentpki: caFile: %w", err)
	}
	if _, err := parseCAs(caPEM); err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("agentpki: caFile %q: %w", caFile, err)
	}
	// tls.LoadX509KeyPair's errors name the problem, never the key's bytes.
	cert, err = tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, tls.Certificate{}, fmt.Errorf("agentpki: certFile %q, keyFile %q: %w", certFile, keyFile, err)
	}
	return caPEM, cert, nil
}

// checkPeer runs in VerifyConnection, after the standard chain, expiry and
// (client side) host name verification, for full and resumed handshakes.
// wantName is empty when any name is acceptable.
func checkPeer(cs tls.ConnectionState, side string, eku x509.ExtKeyUsage, wantRole Role, wantName string) error {
	want := string(wantRole)
	if wantName != "" {
		want += "/" + wantName
	}
	if len(cs.PeerCertificates) == 0 || len(cs.VerifiedChains) == 0 {
		return fmt.Errorf("%w: %s presented no verified certificate, want %s", ErrRefused, side, want)
	}
	leaf := cs.PeerCertificates[0]
	role, name, err := IdentityOf(leaf)
	if err != nil {
		return fmt.Errorf("%w: %s presented no valid identity (%v), want %s", ErrRefused, side, err, want)
	}
	if role != wantRole || (wantName != "" && name != wantName) {
		return fmt.Errorf("%w: %s presented %s/%s, want %s", ErrRefused, side, role, name, want)
	}
	if !slices.Contains(leaf.ExtKeyUsage, eku) {
		return fmt.Errorf("%w: %s presented %s/%s without the %s authentication extended key usage", ErrRefused, side, role, name, side)
	}
	return nil
}

// parseCAs returns the pool of the certificates in caPEM, or an error if
// there is none.
func parseCAs(caPEM []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("agentpki: caPEM (%d bytes): no valid CERTIFICATE block", len(caPEM))
	}
	return pool, nil
}
