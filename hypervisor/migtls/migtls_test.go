package migtls_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
)

var (
	addrA     = netip.MustParseAddr("10.255.1.1")
	addrB     = netip.MustParseAddr("203.0.113.1")
	hostAddrs = []netip.Addr{addrA, addrB}
	required  = []string{migtls.CACert, migtls.ServerCert, migtls.ServerKey, migtls.ClientCert, migtls.ClientKey}
)

func newDir(t *testing.T, addrs []netip.Addr) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "tls")
	require.NoError(t, migtls.NewDir(dir, addrs))
	return dir
}

// TestNewDir checks NewDir's output: the files (0600), a server
// certificate naming exactly the given addresses, a fresh CA per call.
func TestNewDir(t *testing.T) {
	dir := newDir(t, hostAddrs)
	for _, f := range append(required, migtls.DHParams) {
		fi, err := os.Stat(filepath.Join(dir, f))
		require.NoError(t, err)
		assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm(), f)
	}
	require.NoError(t, migtls.CheckDir(dir))
	d, err := migtls.Load(dir)
	require.NoError(t, err)
	assert.Equal(t, dir, d.Path)
	srv := readCert(t, filepath.Join(dir, migtls.ServerCert))
	require.Len(t, srv.IPAddresses, 2)
	assert.True(t, srv.IPAddresses[0].Equal(addrA.AsSlice()) && srv.IPAddresses[1].Equal(addrB.AsSlice()), "server certificate names %v", srv.IPAddresses)
	assert.Equal(t, srv.Raw, d.Server.Raw, "Load returns the server certificate")
	assert.NoError(t, d.VerifyServerAddr(addrB))
	err = d.VerifyServerAddr(netip.MustParseAddr("10.9.9.9"))
	assert.ErrorIs(t, err, hypervisor.ErrInvalid, "the server certificate accepts an address it was not made for")
	assert.ErrorContains(t, err, migtls.ServerCert)
	assert.ErrorContains(t, err, "10.9.9.9")

	other := newDir(t, hostAddrs)
	assert.NotEqual(t, readCert(t, filepath.Join(dir, migtls.CACert)).Raw, readCert(t, filepath.Join(other, migtls.CACert)).Raw,
		"two NewDir calls made the same CA")

	// Writing again replaces the set.
	require.NoError(t, migtls.NewDir(dir, hostAddrs))
	assert.NotEqual(t, srv.Raw, readCert(t, filepath.Join(dir, migtls.ServerCert)).Raw)
	require.NoError(t, migtls.CheckDir(dir))
}

func TestNewDirInvalid(t *testing.T) {
	for _, tc := range []struct {
		dir   string
		addrs []netip.Addr
		want  string
	}{
		{"", hostAddrs, "TLS dir is empty"},
		{t.TempDir(), nil, "serverAddrs is empty"},
		{t.TempDir(), []netip.Addr{addrA, {}}, "serverAddrs[1]"},
		{t.TempDir(), []netip.Addr{netip.MustParseAddr("fe80::1%eth0")}, "serverAddrs[0]"},
	} {
		err := migtls.NewDir(tc.dir, tc.addrs)
		assert.ErrorIs(t, err, hypervisor.ErrInvalid, "NewDir(%q, %v)", tc.dir, tc.addrs)
		assert.ErrorContains(t, err, tc.want)
	}
}

// TestCheckDir: bad credential directories are refused, naming the file.
func TestCheckDir(t *testing.T) {
	dir := newDir(t, hostAddrs)
	other := newDir(t, hostAddrs)
	for _, f := range required {
		d := copyDir(t, dir)
		require.NoError(t, os.Remove(filepath.Join(d, f)))
		err := migtls.CheckDir(d)
		assert.ErrorIs(t, err, hypervisor.ErrInvalid, "without %s", f)
		assert.ErrorContains(t, err, "missing "+f)
	}
	noDH := copyDir(t, dir)
	require.NoError(t, os.Remove(filepath.Join(noDH, migtls.DHParams)))
	assert.NoError(t, migtls.CheckDir(noDH), "DH parameters are optional")

	for _, tc := range []struct {
		name string
		copy [][2]string // from (in dir or other), to (in the copy)
		want string
	}{
		{"server key of another certificate", [][2]string{{filepath.Join(dir, migtls.ClientKey), migtls.ServerKey}}, migtls.ServerKey},
		{"certificates of another CA", [][2]string{{filepath.Join(other, migtls.CACert), migtls.CACert}}, migtls.CACert},
		{"client certificate as server certificate", [][2]string{
			{filepath.Join(dir, migtls.ClientCert), migtls.ServerCert},
			{filepath.Join(dir, migtls.ClientKey), migtls.ServerKey}}, migtls.ServerCert},
		{"no certificate in the CA file", [][2]string{{filepath.Join(dir, migtls.ServerKey), migtls.CACert}}, migtls.CACert},
	} {
		d := copyDir(t, dir)
		for _, c := range tc.copy {
			mustCopy(t, c[0], filepath.Join(d, c[1]))
		}
		err := migtls.CheckDir(d)
		assert.ErrorIs(t, err, hypervisor.ErrInvalid, tc.name)
		assert.ErrorContains(t, err, tc.want, tc.name)
	}
	d := copyDir(t, dir)
	require.NoError(t, os.Remove(filepath.Join(d, migtls.ClientCert)))
	require.NoError(t, os.Mkdir(filepath.Join(d, migtls.ClientCert), 0o700))
	err := migtls.CheckDir(d)
	assert.ErrorIs(t, err, hypervisor.ErrInvalid)
	assert.ErrorContains(t, err, migtls.ClientCert+": not a regular file")
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	blk, _ := pem.Decode(b)
	require.NotNil(t, blk, "%s: no PEM block", path)
	c, err := x509.ParseCertificate(blk.Bytes)
	require.NoError(t, err)
	return c
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	ents, err := os.ReadDir(src)
	require.NoError(t, err)
	for _, e := range ents {
		mustCopy(t, filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()))
	}
	return dst
}

func mustCopy(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(to, b, 0o600))
}

// TestHostDir: a CA signs one directory per host; each loads with the
// host's identity (its client certificate's DN), both chain to the same
// CA, and NewDir's shared credentials have no identity. Bad host names
// are refused naming the value.
func TestHostDir(t *testing.T) {
	ca, err := migtls.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	addrs := []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	for _, host := range []string{"host-a", "host-b"} {
		dir := filepath.Join(t.TempDir(), host)
		if err := ca.HostDir(dir, host, addrs); err != nil {
			t.Fatal(err)
		}
		d, err := migtls.Load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if d.Identity != "CN="+host || d.Server.Subject.CommonName != host {
			t.Errorf("%s: identity %q, server CN %q", host, d.Identity, d.Server.Subject.CommonName)
		}
	}
	shared := t.TempDir()
	if err := migtls.NewDir(shared, addrs); err != nil {
		t.Fatal(err)
	}
	if d, err := migtls.Load(shared); err != nil || d.Identity != "" {
		t.Errorf("NewDir: identity %q, %v; want none", d.Identity, err)
	}
	for _, bad := range []string{"", "a,b", "CN=x", strings.Repeat("h", 65)} {
		err := ca.HostDir(t.TempDir(), bad, addrs)
		if !errors.Is(err, hypervisor.ErrInvalid) || !strings.Contains(err.Error(), fmt.Sprintf("%q", bad)) {
			t.Errorf("HostDir(%q): %v, want ErrInvalid naming it", bad, err)
		}
	}
}
