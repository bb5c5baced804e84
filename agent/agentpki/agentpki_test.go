package agentpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// pki is a lab CA with a controller "ctl" and agents "host1" and "host2".
type pki struct {
	ca          *CA
	ctl, h1, h2 *Identity
	other       *CA
	otherCtl    *Identity
	expiredCtl  *Identity
	now         time.Time
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{now: time.Now()}
	var err error
	p.ca, err = NewCA("sealift test CA", time.Hour)
	require.NoError(t, err)
	p.other, err = NewCA("other CA", time.Hour)
	require.NoError(t, err)
	from, to := p.now.Add(-time.Minute), p.now.Add(time.Hour)
	p.ctl = issue(t, p.ca, RoleController, "ctl", from, to)
	p.h1 = issue(t, p.ca, RoleAgent, "host1", from, to)
	p.h2 = issue(t, p.ca, RoleAgent, "host2", from, to)
	p.otherCtl = issue(t, p.other, RoleController, "ctl", from, to)
	p.expiredCtl = issue(t, p.ca, RoleController, "ctl", p.now.Add(-2*time.Hour), p.now.Add(-time.Hour))
	return p
}

func issue(t *testing.T, ca *CA, role Role, name string, from, to time.Time) *Identity {
	t.Helper()
	id, err := ca.Issue(role, name, from, to)
	require.NoError(t, err)
	return id
}

// craft signs tmpl with ca, bypassing Issue, to build certificates that only
// our own checks can refuse.
func craft(t *testing.T, ca *CA, tmpl *x509.Certificate) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl.SerialNumber = big.NewInt(time.Now().UnixNano())
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func uris(t *testing.T, ss ...string) []*url.URL {
	t.Helper()
	var out []*url.URL
	for _, s := range ss {
		u, err := url.Parse(s)
		require.NoError(t, err)
		out = append(out, u)
	}
	return out
}

func serverCfg(t *testing.T, caPEM []byte, cert tls.Certificate) *tls.Config {
	t.Helper()
	c, err := ServerConfig(caPEM, cert)
	require.NoError(t, err)
	return c
}

func clientCfg(t *testing.T, caPEM []byte, cert tls.Certificate, agentName string) *tls.Config {
	t.Helper()
	c, err := ClientConfig(caPEM, cert, agentName)
	require.NoError(t, err)
	return c
}

type result struct {
	server, client       tls.ConnectionState
	serverErr, clientErr error
}

// handshake runs a real TLS handshake over loopback TCP. On success the
// server writes one byte and the client reads it, so that a refusal that
// happens after the client's side of a TLS 1.3 handshake finished (client
// certificate checks) reaches the client too, and session tickets arrive.
func handshake(t *testing.T, scfg, ccfg *tls.Config) result {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var r result
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			r.serverErr = err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		s := tls.Server(c, scfg)
		if r.serverErr = s.Handshake(); r.serverErr != nil {
			return
		}
		r.server = s.ConnectionState()
		if _, r.serverErr = s.Write([]byte{'k'}); r.serverErr == nil {
			_, _ = io.Copy(io.Discard, s) // until the client closes
		}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	cl := tls.Client(c, ccfg)
	if r.clientErr = cl.Handshake(); r.clientErr == nil {
		r.client = cl.ConnectionState()
		_, r.clientErr = io.ReadFull(cl, make([]byte, 1))
	}
	cl.Close()
	<-done
	return r
}

func TestHandshakeOK(t *testing.T) {
	p := newPKI(t)
	r := handshake(t, serverCfg(t, p.ca.PEM, p.h1.TLS), clientCfg(t, p.ca.PEM, p.ctl.TLS, "host1"))
	require.NoError(t, r.serverErr)
	require.NoError(t, r.clientErr)
	assert.Equal(t, uint16(tls.VersionTLS13), r.server.Version)
	assert.Equal(t, uint16(tls.VersionTLS13), r.client.Version)

	role, name, err := IdentityOf(r.server.PeerCertificates[0])
	require.NoError(t, err)
	assert.Equal(t, RoleController, role)
	assert.Equal(t, "ctl", name)
	role, name, err = IdentityOf(r.client.PeerCertificates[0])
	require.NoError(t, err)
	assert.Equal(t, RoleAgent, role)
	assert.Equal(t, "host1", name)
}

func TestHandshakeResumed(t *testing.T) {
	p := newPKI(t)
	scfg := serverCfg(t, p.ca.PEM, p.h1.TLS)
	ccfg := clientCfg(t, p.ca.PEM, p.ctl.TLS, "host1")
	ccfg.ClientSessionCache = tls.NewLRUClientSessionCache(4)
	// Our checks must run, and pass, on resumed handshakes too.
	var mu sync.Mutex // both sides' checks run at once
	calls := map[string]int{}
	count := func(side string, f func(tls.ConnectionState) error) func(tls.ConnectionState) error {
		return func(cs tls.ConnectionState) error {
			mu.Lock()
			calls[side]++
			mu.Unlock()
			return f(cs)
		}
	}
	scfg.VerifyConnection = count("server", scfg.VerifyConnection)
	ccfg.VerifyConnection = count("client", ccfg.VerifyConnection)
	for i, wantResumed := range []bool{false, true} {
		r := handshake(t, scfg, ccfg)
		require.NoError(t, r.serverErr, "handshake %d", i)
		require.NoError(t, r.clientErr, "handshake %d", i)
		assert.Equal(t, wantResumed, r.server.DidResume, "handshake %d", i)
		assert.Equal(t, wantResumed, r.client.DidResume, "handshake %d", i)
	}
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, map[string]int{"server": 2, "client": 2}, calls)
}

func TestHandshakeRefused(t *testing.T) {
	p := newPKI(t)
	var (
		unknownCA  x509.UnknownAuthorityError
		invalid    x509.CertificateInvalidError
		hostname   x509.HostnameError
		onServer   = true
		onClient   = false
		invalidFor = func(reason x509.InvalidReason) func(*testing.T, error) {
			return func(t *testing.T, err error) {
				require.ErrorAs(t, err, &invalid)
				assert.Equal(t, reason, invalid.Reason, "%v", err)
			}
		}
	)
	tests := []struct {
		name      string
		scfg      *tls.Config
		ccfg      *tls.Config
		serverChk bool // which side checks and must report the reason
		check     func(*testing.T, error)
	}{{
		name: "client without certificate",
		scfg: serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg: func() *tls.Config {
			c := clientCfg(t, p.ca.PEM, p.ctl.TLS, "host1")
			c.Certificates = nil
			return c
		}(),
		serverChk: onServer,
		check:     func(t *testing.T, err error) { assert.ErrorContains(t, err, "didn't provide a certificate") },
	}, {
		// crypto/tls would send no certificate not issued by one of the
		// server's acceptable CAs; a hostile client sends it anyway.
		name: "client certificate from another CA",
		scfg: serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg: func() *tls.Config {
			c := clientCfg(t, p.ca.PEM, p.otherCtl.TLS, "host1")
			c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &p.otherCtl.TLS, nil }
			return c
		}(),
		serverChk: onServer,
		check:     func(t *testing.T, err error) { assert.ErrorAs(t, err, &unknownCA) },
	}, {
		name:      "agent certificate used as client",
		scfg:      serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg:      clientCfg(t, p.ca.PEM, p.h2.TLS, "host1"),
		serverChk: onServer,
		check:     invalidFor(x509.IncompatibleUsage),
	}, {
		name:      "expired controller certificate",
		scfg:      serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg:      clientCfg(t, p.ca.PEM, p.expiredCtl.TLS, "host1"),
		serverChk: onServer,
		check:     invalidFor(x509.Expired),
	}, {
		name:      "controller certificate presented by the server",
		scfg:      serverCfg(t, p.ca.PEM, p.ctl.TLS),
		ccfg:      clientCfg(t, p.ca.PEM, p.ctl.TLS, "ctl"),
		serverChk: onClient,
		check:     func(t *testing.T, err error) { assert.ErrorAs(t, err, &hostname) },
	}, {
		name:      "agent name differs from agentName",
		scfg:      serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg:      clientCfg(t, p.ca.PEM, p.ctl.TLS, "host2"),
		serverChk: onClient,
		check: func(t *testing.T, err error) {
			require.ErrorAs(t, err, &hostname)
			assert.Equal(t, "host2", hostname.Host)
		},
	}, {
		name: "TLS 1.2-only client",
		scfg: serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg: func() *tls.Config {
			c := clientCfg(t, p.ca.PEM, p.ctl.TLS, "host1")
			c.MinVersion, c.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
			return c
		}(),
		serverChk: onServer,
		check:     func(t *testing.T, err error) { assert.ErrorContains(t, err, "unsupported versions") },
	}, {
		// The rest pass the standard verification; only our checks refuse them.
		name: "client with client-auth usage but agent role",
		scfg: serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg: clientCfg(t, p.ca.PEM, craft(t, p.ca, &x509.Certificate{
			URIs:        uris(t, "sealift://agent/rogue"),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}), "host1"),
		serverChk: onServer,
		check:     refused(`client presented agent/rogue, want controller`),
	}, {
		name: "controller identity with any-usage instead of client-auth",
		scfg: serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg: clientCfg(t, p.ca.PEM, craft(t, p.ca, &x509.Certificate{
			URIs:        uris(t, "sealift://controller/ctl"),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
		}), "host1"),
		serverChk: onServer,
		check:     refused("controller/ctl", "client authentication"),
	}, {
		name: "client without identity URI",
		scfg: serverCfg(t, p.ca.PEM, p.h1.TLS),
		ccfg: clientCfg(t, p.ca.PEM, craft(t, p.ca, &x509.Certificate{
			Subject:     pkix.Name{CommonName: "anon"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		}), "host1"),
		serverChk: onServer,
		check:     refused("no valid identity", "want controller"),
	}, {
		name: "server with DNS name host1 but identity agent/host2",
		scfg: serverCfg(t, p.ca.PEM, craft(t, p.ca, &x509.Certificate{
			DNSNames:    []string{"host1"},
			URIs:        uris(t, "sealift://agent/host2"),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})),
		ccfg:      clientCfg(t, p.ca.PEM, p.ctl.TLS, "host1"),
		serverChk: onClient,
		check:     refused("server presented agent/host2, want agent/host1"),
	}, {
		name: "server with server-auth usage but controller role",
		scfg: serverCfg(t, p.ca.PEM, craft(t, p.ca, &x509.Certificate{
			DNSNames:    []string{"host1"},
			URIs:        uris(t, "sealift://controller/host1"),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		})),
		ccfg:      clientCfg(t, p.ca.PEM, p.ctl.TLS, "host1"),
		serverChk: onClient,
		check:     refused("server presented controller/host1, want agent/host1"),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := handshake(t, tt.scfg, tt.ccfg)
			// The connection is unusable on both sides; the checking side says why.
			require.Error(t, r.serverErr, "server")
			require.Error(t, r.clientErr, "client")
			if tt.serverChk {
				tt.check(t, r.serverErr)
			} else {
				tt.check(t, r.clientErr)
			}
		})
	}
}

func refused(substr ...string) func(*testing.T, error) {
	return func(t *testing.T, err error) {
		require.ErrorIs(t, err, ErrRefused)
		for _, s := range substr {
			assert.ErrorContains(t, err, s)
		}
	}
}

func TestIdentity(t *testing.T) {
	p := newPKI(t)
	assert.Equal(t, "sealift://agent/host1", IdentityURI(RoleAgent, "host1"))
	assert.Equal(t, "sealift://controller/ctl", IdentityURI(RoleController, "ctl"))

	for _, id := range []*Identity{p.ctl, p.h1} {
		role, name, err := IdentityOf(id.Cert)
		require.NoError(t, err)
		assert.Equal(t, id.Role, role)
		assert.Equal(t, id.Name, name)
		require.Len(t, id.Cert.URIs, 1)
		assert.Equal(t, IdentityURI(id.Role, id.Name), id.Cert.URIs[0].String())
		_, err = id.Cert.Verify(x509.VerifyOptions{Roots: pool(p.ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		assert.NoError(t, err)
	}
	assert.Equal(t, []string{"host1"}, p.h1.Cert.DNSNames)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, p.h1.Cert.ExtKeyUsage)
	assert.Empty(t, p.ctl.Cert.DNSNames)
	assert.Equal(t, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, p.ctl.Cert.ExtKeyUsage)
	assert.True(t, p.ca.Cert.IsCA)

	// URI SANs of other schemes are ignored.
	role, name, err := IdentityOf(&x509.Certificate{URIs: uris(t, "spiffe://example.org/x", "sealift://agent/a.b-c")})
	require.NoError(t, err)
	assert.Equal(t, RoleAgent, role)
	assert.Equal(t, "a.b-c", name)

	_, _, err = IdentityOf(nil)
	assert.Error(t, err)
	for _, tt := range []struct {
		uris []string
		want string
	}{
		{nil, "has 0 sealift:// URI SANs"},
		{[]string{"https://agent/host1"}, "has 0 sealift:// URI SANs"},
		{[]string{"sealift://agent/a", "sealift://agent/b"}, "has 2 sealift:// URI SANs"},
		{[]string{"sealift://admin/x"}, "malformed"},
		{[]string{"sealift://agent/Host1"}, "malformed"},
		{[]string{"sealift://agent/a/b"}, "malformed"},
		{[]string{"sealift://agent/"}, "malformed"},
		{[]string{"sealift://agent"}, "malformed"},
		{[]string{"sealift://agent:1/x"}, "malformed"},
		{[]string{"sealift://u@agent/x"}, "malformed"},
		{[]string{"sealift://agent/x?y"}, "malformed"},
		{[]string{"sealift://agent/x#y"}, "malformed"},
		{[]string{"sealift:agent/x"}, "malformed"},
		{[]string{"sealift://agent/%61"}, "malformed"},
		{[]string{"sealift://agent/x?"}, "malformed"},
	} {
		_, _, err := IdentityOf(&x509.Certificate{URIs: uris(t, tt.uris...)})
		assert.ErrorContains(t, err, tt.want, "%q", tt.uris)
	}
}

func pool(ca *CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func TestIssueErrors(t *testing.T) {
	ca, err := NewCA("lab", time.Hour)
	require.NoError(t, err)
	now := time.Now()
	_, err = ca.Issue(RoleAgent, strings.Repeat("a", 253), now, now.Add(time.Hour))
	assert.NoError(t, err)

	for _, tt := range []struct {
		role     Role
		name     string
		from, to time.Time
		want     string
	}{
		{"admin", "x", now, now.Add(time.Hour), `role "admin"`},
		{"", "x", now, now.Add(time.Hour), `role ""`},
		{RoleAgent, "", now, now.Add(time.Hour), `name ""`},
		{RoleAgent, "Host1", now, now.Add(time.Hour), `name "Host1"`},
		{RoleAgent, "a_b", now, now.Add(time.Hour), `name "a_b"`},
		{RoleAgent, "a/b", now, now.Add(time.Hour), `name "a/b"`},
		{RoleController, "a b", now, now.Add(time.Hour), `name "a b"`},
		{RoleAgent, strings.Repeat("a", 254), now, now.Add(time.Hour), `name "aaaa`},
		{RoleAgent, "x", now, now, "notAfter"},
		{RoleAgent, "x", now, now.Add(-time.Hour), "notAfter"},
		{RoleAgent, "x", time.Time{}, now, "notBefore"},
	} {
		id, err := ca.Issue(tt.role, tt.name, tt.from, tt.to)
		assert.Nil(t, id)
		assert.ErrorContains(t, err, tt.want)
	}
	_, err = (*CA)(nil).Issue(RoleAgent, "x", now, now.Add(time.Hour))
	assert.Error(t, err)

	_, err = NewCA("", time.Hour)
	assert.ErrorContains(t, err, `name ""`)
	_, err = NewCA("lab", 0)
	assert.ErrorContains(t, err, "validFor 0s")
}

func TestConfigErrors(t *testing.T) {
	p := newPKI(t)
	for _, bad := range [][]byte{nil, []byte("garbage"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2}})} {
		_, err := ServerConfig(bad, p.h1.TLS)
		assert.ErrorContains(t, err, "caPEM")
		_, err = ClientConfig(bad, p.ctl.TLS, "host1")
		assert.ErrorContains(t, err, "caPEM")
	}
	_, err := ServerConfig(p.ca.PEM, tls.Certificate{})
	assert.ErrorContains(t, err, "cert")
	_, err = ClientConfig(p.ca.PEM, tls.Certificate{}, "host1")
	assert.ErrorContains(t, err, "cert")
	_, err = ClientConfig(p.ca.PEM, p.ctl.TLS, "Host_1")
	assert.ErrorContains(t, err, `agentName "Host_1"`)

	c, err := ServerConfig(p.ca.PEM, p.h1.TLS)
	require.NoError(t, err)
	assert.Equal(t, tls.RequireAndVerifyClientCert, c.ClientAuth)
	assert.Equal(t, uint16(tls.VersionTLS13), c.MinVersion)
}

func TestWriteAndLoadFiles(t *testing.T) {
	p := newPKI(t)
	dir := filepath.Join(t.TempDir(), "pki")
	require.NoError(t, os.MkdirAll(dir, 0o700))
	// A key file left world-readable must come out 0600.
	require.NoError(t, os.WriteFile(filepath.Join(dir, "host1-key.pem"), []byte("old"), 0o644))
	require.NoError(t, p.ca.WriteFiles(dir, p.ctl, p.h1))

	for name, perm := range map[string]os.FileMode{
		"ca.pem": 0o644, "ctl.pem": 0o644, "ctl-key.pem": 0o600, "host1.pem": 0o644, "host1-key.pem": 0o600,
	} {
		fi, err := os.Stat(filepath.Join(dir, name))
		require.NoError(t, err, name)
		assert.Equal(t, perm, fi.Mode().Perm(), name)
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 5, "no temporary files left")

	block, _ := pem.Decode(p.h1.KeyPEM)
	require.NotNil(t, block)
	assert.Equal(t, "PRIVATE KEY", block.Type)
	_, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	require.NoError(t, err)

	load := func(name string) ([]byte, tls.Certificate) {
		caPEM, cert, err := LoadFiles(filepath.Join(dir, "ca.pem"), filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem"))
		require.NoError(t, err)
		return caPEM, cert
	}
	caPEM, agentCert := load("host1")
	assert.Equal(t, p.ca.PEM, caPEM)
	_, ctlCert := load("ctl")
	r := handshake(t, serverCfg(t, caPEM, agentCert), clientCfg(t, caPEM, ctlCert, "host1"))
	require.NoError(t, r.serverErr)
	require.NoError(t, r.clientErr)

	// Errors name the file, never the key material.
	_, _, err = LoadFiles(filepath.Join(dir, "missing.pem"), filepath.Join(dir, "ctl.pem"), filepath.Join(dir, "ctl-key.pem"))
	assert.ErrorContains(t, err, "caFile")
	_, _, err = LoadFiles(filepath.Join(dir, "ctl-key.pem"), filepath.Join(dir, "ctl.pem"), filepath.Join(dir, "ctl-key.pem"))
	assert.ErrorContains(t, err, "caFile")
	_, _, err = LoadFiles(filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ctl.pem"), filepath.Join(dir, "host1-key.pem"))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "keyFile")
	keyBody := strings.Split(string(p.h1.KeyPEM), "\n")[1]
	assert.NotContains(t, err.Error(), keyBody)

	assert.ErrorContains(t, p.ca.WriteFiles(dir, p.h1, p.h1), `"host1"`)
	ca := issue(t, p.ca, RoleAgent, "ca", time.Now(), time.Now().Add(time.Hour))
	assert.ErrorContains(t, p.ca.WriteFiles(dir, ca), `"ca"`)
	assert.Error(t, p.ca.WriteFiles(dir, nil))
	assert.Error(t, p.ca.WriteFiles(dir, &Identity{Name: "../x", CertPEM: []byte("c"), KeyPEM: []byte("k")}))
}
