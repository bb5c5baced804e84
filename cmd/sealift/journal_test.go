package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/etcdlab"
	"github.com/sealift/sealift/migration"
)

// TestEtcdOverTLS: with "etcd": {"tls": ...} the controller's journal
// talks to a cluster that serves only TLS and asks for a client
// certificate: a migration journaled through it is what `sealift status`
// (over TLS too) lists. Without the client certificate, without TLS, or
// trusting another CA, the same cluster is refused: an error, not a
// silent plain connection.
func TestEtcdOverTLS(t *testing.T) {
	dir := t.TempDir()
	c, files, err := etcdlab.StartTLS(t, 1, dir)
	require.NoError(t, err)
	config := func(name string, tls map[string]string) string {
		etcd := map[string]any{"endpoints": c.Endpoints(), "ttl": "3s"}
		if tls != nil {
			etcd["tls"] = tls
		}
		b, err := json.Marshal(map[string]any{"etcd": etcd, "environments": map[string]any{}})
		require.NoError(t, err)
		path := filepath.Join(dir, name+".json")
		require.NoError(t, os.WriteFile(path, b, 0o600))
		return path
	}
	good := config("good", map[string]string{"ca": files.CA, "cert": files.Cert, "key": files.Key})

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cfg, err := loadConfig(good)
	require.NoError(t, err)
	j, err := openJournal(ctx, cfg, good, "ctl-tls", slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	rec := migration.Record{ID: "m-tls", Plan: migration.Plan{VM: "vm1", From: "secure", To: "cloud"}, Started: time.Now()}
	require.NoError(t, j.Create(ctx, rec))
	require.NoError(t, j.Finish(ctx, rec.ID, migration.Completed, ""))
	require.NoError(t, j.Close())

	var out, errs bytes.Buffer
	require.Equal(t, exitOK, run(ctx, []string{"status", "-config", good, "-json"}, &out, &errs), "%s", errs.String())
	assert.Contains(t, out.String(), `"m-tls"`)

	// Another CA: it signed nothing the cluster shows.
	other, err := etcdlab.WriteTLS(t.TempDir())
	require.NoError(t, err)
	for _, c := range []struct {
		name   string
		tls    map[string]string
		reason string
	}{
		{"plain", nil, "the endpoint is https and etcd.tls is not set"},
		{"no-client-cert", map[string]string{"ca": files.CA}, "certificate required"},
		{"other-ca", map[string]string{"ca": other.CA, "cert": files.Cert, "key": files.Key}, "certificate signed by unknown authority"},
	} {
		t.Run(c.name, func(t *testing.T) {
			path := config(c.name, c.tls)
			var out, errs bytes.Buffer
			start := time.Now()
			code := run(context.Background(), []string{"status", "-config", path}, &out, &errs)
			took := time.Since(start)
			assert.Equal(t, exitError, code, "stdout %s\nstderr %s", out.String(), errs.String())
			assert.NotContains(t, out.String(), "m-tls")
			// One line, with the reason, within the probe's bound (not a
			// retry loop that runs until someone interrupts it).
			assert.Contains(t, errs.String(), c.reason)
			assert.Equal(t, 1, strings.Count(strings.TrimSpace(errs.String()), "\n")+1, "stderr: %s", errs.String())
			assert.Less(t, took, 3*etcdProbeTimeout, "refused after %s", took)
		})
	}
}
