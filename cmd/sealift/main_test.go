package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nshv"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// TestMigrateThroughAgents: `sealift migrate` with a configuration of two
// environments, each an agent (in this process, over mutual TLS on
// loopback, with real nft, conntrack and WireGuard ends, and nshv's
// namespace VM), moves the VM and exits 0; the report names the link;
// `sealift recover` then finds nothing to do. Bad input exits 2 naming it.
func TestMigrateThroughAgents(t *testing.T) {
	lab.RequireRoot(t)
	w := newAgentsWorld(t, nil)
	l, hv, path := w.l, w.hv, w.path

	ctx := context.Background()
	var out, errs bytes.Buffer
	code := run(ctx, []string{"migrate", "-config", path, "-vm", "vm1", "-from", "secure", "-to", "cloud",
		"-addr", lab.VMAddr.String() + "/32", "-peer", lab.PeerAddr.String() + "/32"}, &out, &errs)
	require.Equal(t, exitOK, code, "stdout: %s\nstderr: %s", out.String(), errs.String())
	assert.Contains(t, out.String(), "vm1")
	assert.Contains(t, out.String(), "completed")
	assert.Contains(t, errs.String(), "block 330 migrate done")
	// The hook's calls, timed by the controller: the source's fence and
	// both link ends' activation.
	assert.Regexp(t, `switchover rpc: /sealift\.agent\.v1\.Fencer/Fence \S+ [0-9.]+[µm]?s\n`, errs.String())
	assert.Regexp(t, `(?s)(switchover rpc: /sealift\.agent\.v1\.LinkEnd/Activate .*){2}switchover rpc: 3 calls\n`, errs.String())
	assert.Equal(t, l.B, hv.At())
	n, err := lab.Ping(l.Peer, lab.VMAddr, 3, 2*time.Second)
	require.NoError(t, err)
	assert.Equal(t, 3, n)

	out.Reset()
	errs.Reset()
	assert.Equal(t, exitOK, run(ctx, []string{"recover", "-config", path}, &out, &errs), "%s", errs.String())
	assert.Empty(t, strings.TrimSpace(out.String()), "nothing left to recover")

	// status: the migration, from the journal.
	out.Reset()
	require.Equal(t, exitOK, run(ctx, []string{"status", "-config", path, "-json"}, &out, &errs), "%s", errs.String())
	var sts []MigrationStatus
	require.NoError(t, json.Unmarshal(out.Bytes(), &sts), "%s", out.String())
	if assert.Len(t, sts, 1) {
		assert.Equal(t, "vm1", sts[0].VM)
		assert.Equal(t, "completed", sts[0].State)
		assert.Equal(t, "secure", sts[0].From)
	}
	// inspect: what each host's agent holds after the move — B: the
	// VM's fence, open to its link's device, and the link's remote end;
	// A: the secure end, no fence.
	ins := func(host string) HostState {
		t.Helper()
		out.Reset()
		require.Equal(t, exitOK, run(ctx, []string{"inspect", "-config", path, "-json", host}, &out, &errs), "%s", errs.String())
		var st HostState
		require.NoError(t, json.Unmarshal(out.Bytes(), &st), "%s", out.String())
		return st
	}
	stB, stA := ins("host-b"), ins("host-a")
	if assert.Len(t, stB.Fences, 1) && assert.Len(t, stB.Links, 1) {
		assert.Equal(t, "vm1", stB.Fences[0].VM)
		assert.Equal(t, []string{stB.Links[0].Device}, stB.Fences[0].AllowVia, "B's fence is open to the link only")
		assert.Equal(t, "remote", stB.Links[0].Role)
		assert.True(t, stB.Links[0].Active)
	}
	assert.Empty(t, stA.Fences, "A's fence was lifted")
	if assert.Len(t, stA.Links, 1) {
		assert.Equal(t, "secure", stA.Links[0].Role)
		assert.Equal(t, stB.Links[0].ID, stA.Links[0].ID)
	}
	out.Reset()
	require.Equal(t, exitOK, run(ctx, []string{"inspect", "-config", path, "host-b"}, &out, &errs), "%s", errs.String())
	assert.Regexp(t, `(?m)^vm1 +\S+ +`+stB.Links[0].Device, out.String(), "the fence table")
	out.Reset()
	require.Equal(t, exitOK, run(ctx, []string{"completion", "bash"}, &out, &errs))
	assert.Contains(t, out.String(), "complete -F _sealift sealift")

	errs.Reset()
	assert.Equal(t, exitRefused, run(ctx, []string{"migrate", "-config", path, "-vm", "vm1", "-from", "cloud", "-to", "nowhere",
		"-addr", "10.1.0.10/32", "-peer", "10.1.0.20/32"}, &out, &errs), "a plan the Migrator refuses")
	assert.Contains(t, errs.String(), `plan refused`)
	assert.Contains(t, errs.String(), `"nowhere"`)
	errs.Reset()
	assert.Equal(t, exitRefused, run(ctx, []string{"migrate", "-config", path, "-vm", "vm1", "-from", "cloud", "-to", "secure",
		"-addr", "10.1.0.10/32", "-peer", "10.2.0.0/24", "-link", "gre"}, &out, &errs), "a link kind the Migrator has no linker for")
	assert.Contains(t, errs.String(), `"gre"`)
	// batch: a batch needs the source's routing core, which this
	// configuration lacks: refused before anything is touched.
	errs.Reset()
	assert.Equal(t, exitRefused, run(ctx, []string{"batch", "-config", path, "-from", "cloud", "-to", "secure", "-subnet", "10.1.0.0/24",
		"-vm", "vm1=10.1.0.10/32", "-vm", "vm9=10.1.0.19/32", "-peer", "10.2.0.0/24"}, &out, &errs), "a batch without a routing core")
	assert.Contains(t, errs.String(), `batch refused`)
	assert.Contains(t, errs.String(), `no routing Core`)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"batch", "-config", path, "-from", "cloud", "-to", "secure", "-vm", "vm1=10.1.0.10/32"}, "-subnet is required"},
		{[]string{"batch", "-config", path, "-from", "cloud", "-to", "secure", "-subnet", "10.1.0.0/24", "-vm", "vm1"}, `-vm "vm1": want NAME=PREFIXES`},
		{[]string{"batch", "-config", path, "-from", "cloud", "-to", "secure", "-subnet", "10.1.0.0/24", "-vm", "vm1=10.1.0.x"}, `-vm vm1 "10.1.0.x"`},
		{[]string{"batch", "-config", path, "-from", "cloud", "-to", "secure", "-subnet", "10.1.0.0/24"}, "-vm NAME=PREFIXES is required"},
		{[]string{"migrate", "-config", path, "-vm", "vm1", "-from", "cloud", "-to", "secure", "-addr", "10.1.0.x/32"}, `-addr "10.1.0.x/32"`},
		{[]string{"migrate", "-vm", "vm1"}, "-config is required"},
		{[]string{"migrate", "-config", path, "-vm", "vm1", "-from", "cloud", "-to", "secure", "-addr", "10.1.0.10/32", "-members", "vm2"}, `-members "vm2": only with -subnet`},
		{[]string{"migrate", "-config", path, "-vm", "vm1", "-from", "cloud", "-to", "secure", "-addr", "10.1.0.10/32", "-subnet", "10.1.0.0/24", "-via", "10.9.9"}, `-via "10.9.9"`},
		{[]string{"teleport"}, `unknown command "teleport"`},
		{[]string{"inspect", "-config", path, "host-z"}, `host "host-z" is not in the configuration (hosts: host-a, host-b)`},
		{[]string{"inspect", "-config", path}, "usage: sealift inspect"},
		{[]string{"recover", "-config", path, "extra"}, `unexpected argument "extra"`},
		{[]string{"completion", "zsh"}, "usage: sealift completion bash"},
	} {
		errs.Reset()
		assert.Equal(t, exitUsage, run(ctx, c.args, &out, &errs), "%v", c.args)
		assert.Contains(t, errs.String(), c.want, "%v", c.args)
	}
	out.Reset()
	assert.Equal(t, exitOK, run(ctx, []string{"version"}, &out, &errs))
	assert.True(t, strings.HasPrefix(out.String(), "sealift "))
}

// agentsWorld: two environments (A, B), each an agent in this process
// over mutual TLS on loopback with real nft, conntrack and WireGuard
// ends, nshv's namespace VM at A, an idle neighbour at B, and the
// controller's configuration file.
type agentsWorld struct {
	l    *lab.Lab
	hv   *nshv.Cluster
	path string
}

func newAgentsWorld(t *testing.T, agentOpts func(host string) []agent.Option) *agentsWorld {
	l := lab.New(t)
	nb := l.Prefix + "-nbb"
	require.NoError(t, l.AddHost(nb))
	require.NoError(t, l.Endpoint(nb, l.B, "nb0", "br0", "10.1.0.30/24", lab.Gateway))
	hv := nshv.New("vm1", l.VM, "eth0")
	a, b := hv.Host(l.A, "vm0", "br0"), hv.Host(l.B, "vmb0", "br0")
	require.NoError(t, hv.Start(a))

	dir := t.TempDir()
	ca, err := agentpki.NewCA("test", time.Hour)
	require.NoError(t, err)
	now := time.Now()
	ctl, err := ca.Issue(agentpki.RoleController, "ctl", now.Add(-time.Minute), now.Add(time.Hour))
	require.NoError(t, err)
	require.NoError(t, ca.WriteFiles(dir, ctl))
	cfg := Config{Journal: filepath.Join(dir, "journal.db"), Environments: map[string]EnvConfig{}}
	cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key = filepath.Join(dir, "ca.pem"), filepath.Join(dir, "ctl.pem"), filepath.Join(dir, "ctl-key.pem")
	for _, h := range []struct {
		env, name, ns string
		hv            hypervisor.Hypervisor
		underlay      string
	}{{"secure", "host-a", l.A, a, lab.AUplink.String()}, {"cloud", "host-b", l.B, b, lab.BUnderlay.String()}} {
		id, err := ca.Issue(agentpki.RoleAgent, h.name, now.Add(-time.Minute), now.Add(time.Hour))
		require.NoError(t, err)
		scfg, err := agentpki.ServerConfig(ca.PEM, id.TLS)
		require.NoError(t, err)
		opts := []agent.Option{agent.WithHypervisor(h.hv), agent.WithFencer(nft.New(nft.WithHost(h.ns))),
			agent.WithConnAuditor(conntrack.New(conntrack.WithHost(h.ns))),
			agent.WithLinkEnd(wireguard.NewEnd(h.ns, wireguard.WithBackend(wireguard.Userspace)))}
		if agentOpts != nil {
			opts = append(opts, agentOpts(h.name)...)
		}
		s, err := agent.NewServer(scfg, opts...)
		require.NoError(t, err)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		go func() { _ = s.Serve(ln) }()
		t.Cleanup(s.Stop)
		cfg.Environments[h.env] = EnvConfig{Agent: ln.Addr().String(), Host: h.name, Underlay: h.underlay}
	}
	path := filepath.Join(dir, "sealift.json")
	b2, err := json.Marshal(cfg)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(path, b2, 0o600))
	return &agentsWorld{l: l, hv: hv, path: path}
}
