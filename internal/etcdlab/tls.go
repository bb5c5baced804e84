package etcdlab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// TLSFiles are the PEM files of a cluster started by StartTLS: the CA
// that signed the members' and the client's certificates, and the
// client's certificate and key (the members ask every client for one).
type TLSFiles struct {
	CA, Cert, Key string
	// server are the members' certificate and key (for 127.0.0.1).
	serverCert, serverKey string
}

// StartTLS is Start with client connections over TLS: the members serve
// https on 127.0.0.1 with a certificate of a CA made for the cluster and
// require a client certificate of that CA. Peers talk plain http (they
// are this process). The files are written in dir.
func StartTLS(t TB, n int, dir string) (*Cluster, TLSFiles, error) {
	t.Helper()
	files, err := WriteTLS(dir)
	if err != nil {
		return nil, files, err
	}
	c, err := startIn(t, n, "127.0.0.1", dir, &files)
	return c, files, err
}

// WriteTLS makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and writes them (and their keys) under dir.
func WriteTLS(dir string) (TLSFiles, error) {
	f := TLSFiles{CA: filepath.Join(dir, "etcd-ca.pem"), Cert: filepath.Join(dir, "etcd-client.pem"),
		Key: filepath.Join(dir, "etcd-client-key.pem"), serverCert: filepath.Join(dir, "etcd-server.pem"),
		serverKey: filepath.Join(dir, "etcd-server-key.pem")}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdlab CA"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return f, err
	}
	if err := writePEM(f.CA, "CERTIFICATE", caDER); err != nil {
		return f, err
	}
	for i, leaf := range []struct {
		cert, key string
		usage     x509.ExtKeyUsage
	}{{f.serverCert, f.serverKey, x509.ExtKeyUsageServerAuth}, {f.Cert, f.Key, x509.ExtKeyUsageClientAuth}} {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return f, err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i + 2)), Subject: pkix.Name{CommonName: "etcdlab"},
			NotBefore: now.Add(-time.Minute), NotAfter: now.Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{leaf.usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return f, err
		}
		kb, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return f, err
		}
		if err := writePEM(leaf.cert, "CERTIFICATE", der); err != nil {
			return f, err
		}
		if err := writePEM(leaf.key, "PRIVATE KEY", kb); err != nil {
			return f, err
		}
	}
	return f, nil
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("etcdlab: %w", err)
	}
	return nil
}
