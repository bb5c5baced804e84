package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/internal/promtest"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/gobgp"
	"github.com/sealift/sealift/tunnel"
)

// agentBin is the binary under test, built once by TestMain.
var agentBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sealift-agent-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	agentBin = filepath.Join(dir, "sealift-agent")
	build := exec.Command("go", "build", "-o", agentBin, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	code := 1
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building sealift-agent:", err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// testPKI is a throw-away CA with the agent "host-a" and a controller,
// written to files as an operator would install them.
type testPKI struct {
	dir                 string
	ca                  *agentpki.CA
	host, ctl           *agentpki.Identity
	notBefore, notAfter time.Time
}

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := agentpki.NewCA("sealift-test", time.Hour)
	require.NoError(t, err)
	p := &testPKI{dir: t.TempDir(), ca: ca, notBefore: time.Now().Add(-time.Minute), notAfter: time.Now().Add(time.Hour)}
	p.host, err = ca.Issue(agentpki.RoleAgent, "host-a", p.notBefore, p.notAfter)
	require.NoError(t, err)
	p.ctl, err = ca.Issue(agentpki.RoleController, "ctl", p.notBefore, p.notAfter)
	require.NoError(t, err)
	require.NoError(t, ca.WriteFiles(p.dir, p.host, p.ctl))
	return p
}

func (p *testPKI) file(name string) string { return filepath.Join(p.dir, name) }

// tlsArgs are the agent's -ca, -cert and -key.
func (p *testPKI) tlsArgs() []string {
	return []string{"-ca", p.file("ca.pem"), "-cert", p.file("host-a.pem"), "-key", p.file("host-a-key.pem")}
}

// dial connects to the agent host-a at addr as the holder of cert.
func (p *testPKI) dial(t *testing.T, addr string, cert tls.Certificate) *agent.Client {
	t.Helper()
	cfg, err := agentpki.ClientConfig(p.ca.PEM, cert, "host-a")
	require.NoError(t, err)
	c, err := agent.Dial(addr, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

// freeAddr is a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().String()
}

// syncBuffer is the child's stderr, read while it is written.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// proc is a running agent.
type proc struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{} // closed when it has exited
}

// start runs the agent with args; the test's end kills it if it still runs.
func start(t *testing.T, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(agentBin, args...)
	if len(args) >= 2 && args[0] == "\x00netns" { // startIn
		cmd = exec.Command("ip", append([]string{"netns", "exec", args[1], agentBin}, args[2:]...)...)
	}
	p := &proc{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stderr = p.stderr
	require.NoError(t, p.cmd.Start())
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("agent pid %d stderr:\n%s", p.cmd.Process.Pid, p.stderr)
		}
	})
	return p
}

// logLines are the JSON lines the agent logged so far.
func (p *proc) logLines(t *testing.T) []map[string]any {
	t.Helper()
	var lines []map[string]any
	sc := bufio.NewScanner(strings.NewReader(p.stderr.String()))
	for sc.Scan() {
		var m map[string]any
		require.NoError(t, json.Unmarshal(sc.Bytes(), &m), "a log line that is not JSON: %s", sc.Text())
		lines = append(lines, m)
	}
	return lines
}

// waitLog waits for the line whose msg is msg and returns it; it fails
// if the agent exits first.
func (p *proc) waitLog(t *testing.T, msg string) map[string]any {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		for _, l := range p.logLines(t) {
			if l["msg"] == msg {
				return l
			}
		}
		select {
		case <-p.done:
			for _, l := range p.logLines(t) { // logged just before exiting
				if l["msg"] == msg {
					return l
				}
			}
			t.Fatalf("the agent exited (%v) before logging %q", p.cmd.ProcessState, msg)
		case <-deadline:
			t.Fatalf("the agent did not log %q in time", msg)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends sig and returns the exit status (-1: killed by a signal).
func (p *proc) stop(t *testing.T, sig syscall.Signal) int {
	t.Helper()
	require.NoError(t, p.cmd.Process.Signal(sig))
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		t.Fatalf("the agent did not exit after %v", sig)
	}
	return p.cmd.ProcessState.ExitCode()
}

// calls waits until the agent has logged at least n calls (its stderr
// reaches us a little after the answer) and returns its call lines.
func (p *proc) calls(t *testing.T, n int) []map[string]any {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var out []map[string]any
		for _, l := range p.logLines(t) {
			if l["msg"] == "call" {
				out = append(out, l)
			}
		}
		if len(out) >= n || time.Now().After(deadline) {
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runAgent runs the agent to completion: its exit status and output.
func runAgent(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	cmd := exec.Command(agentBin, args...)
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("running the agent: %v", err)
	}
	return cmd.ProcessState.ExitCode(), o.String(), e.String()
}

// TestAgentServesAndRecovers: the daemon serves nft and conntrack in a
// namespace over mutual TLS; a fence set through it blocks the VM for
// real and survives both a graceful stop (SIGTERM, exit 0) and a crash
// (SIGKILL): each new run finds it in the kernel, says so in its start
// line, lists it and lifts it.
func TestAgentServesAndRecovers(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	p := newPKI(t)
	addr := freeAddr(t)
	stateDir := filepath.Join(t.TempDir(), "state")
	args := append(p.tlsArgs(), "-listen", addr, "-netns", l.A,
		"-fence", "nft", "-conn", "conntrack", "-routing", "none", "-state-dir", stateDir)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ping := func() int {
		n, _ := lab.Ping(l.Peer, lab.VMAddr, 2, 500*time.Millisecond)
		return n
	}
	spec := fence.Spec{VM: "vm-1", Port: "vm0", Addrs: []netip.Addr{lab.VMAddr}}
	// run starts the agent, checks its start line and returns it with its
	// Fencer (through a new connection).
	run := func(wantFences int) (*proc, fence.Fencer) {
		t.Helper()
		a := start(t, args...)
		line := a.waitLog(t, "sealift-agent started")
		assert.Equal(t, addr, line["listen"])
		assert.Equal(t, l.A, line["netns"])
		assert.Equal(t, "agent/host-a", line["identity"])
		assert.Equal(t, []any{"nft", "conntrack", "none", "none"},
			[]any{line["fence"], line["conn"], line["routing"], line["hypervisor"]})
		assert.EqualValues(t, wantFences, line["fences"], "start line: %v", line)
		f, err := p.dial(t, addr, p.ctl.TLS).Fencer(ctx)
		require.NoError(t, err)
		return a, f
	}

	// First run: fence, list, lift, fence again, SIGTERM.
	a, f := run(0)
	st, err := os.Stat(stateDir)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o700), st.Mode().Perm(), "state dir")
	require.NotZero(t, ping(), "the VM answers before the fence")
	require.NoError(t, f.Fence(ctx, spec))
	assert.Zero(t, ping(), "pings pass the fence")
	fs, err := f.List(ctx)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	assert.Equal(t, spec, fs[0].Spec)
	require.NoError(t, f.Lift(ctx, spec.VM))
	assert.NotZero(t, ping(), "the VM does not answer after the lift")
	conns, err := p.dial(t, addr, p.ctl.TLS).ConnAuditor().List(ctx,
		conn.Selector{Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}})
	assert.NoError(t, err, "the conntrack auditor is served")
	assert.Empty(t, conns)
	calls := a.calls(t, 1)
	require.NotEmpty(t, calls, "the per-call log")
	assert.Equal(t, "controller/ctl", calls[0]["caller"])
	require.NoError(t, f.Fence(ctx, spec))
	assert.Equal(t, 0, a.stop(t, syscall.SIGTERM), "exit status after SIGTERM")
	a.waitLog(t, "sealift-agent stopped")

	// Second run: finds the fence a graceful stop left; SIGKILL.
	a, f = run(1)
	assert.Zero(t, ping(), "the fence outlived the agent")
	fs, err = f.List(ctx)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	assert.Equal(t, spec, fs[0].Spec)
	assert.Equal(t, -1, a.stop(t, syscall.SIGKILL))

	// Third run: finds the fence a crash left, names its VM, lifts it.
	a, f = run(1)
	assert.Equal(t, []any{"vm-1"}, a.waitLog(t, "sealift-agent started")["fenced_vms"])
	fs, err = f.List(ctx)
	require.NoError(t, err)
	require.Len(t, fs, 1)
	assert.Equal(t, spec, fs[0].Spec)
	assert.Zero(t, ping(), "the fence outlived the crash")
	require.NoError(t, f.Lift(ctx, spec.VM))
	assert.NotZero(t, ping(), "the VM does not answer after the lift")
	assert.Equal(t, 0, a.stop(t, syscall.SIGTERM))
}

// TestAgentRefusesAnotherCA: a controller certificate from another CA
// never reaches a method (no call is logged), while the operator's
// controller is served.
func TestAgentRefusesAnotherCA(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	p := newPKI(t)
	addr := freeAddr(t)
	a := start(t, append(p.tlsArgs(), "-listen", addr, "-netns", l.A, "-state-dir", t.TempDir())...)
	a.waitLog(t, "sealift-agent started")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	other, err := agentpki.NewCA("other", time.Hour)
	require.NoError(t, err)
	stranger, err := other.Issue(agentpki.RoleController, "stranger", p.notBefore, p.notAfter)
	require.NoError(t, err)
	cfg, err := agentpki.ClientConfig(p.ca.PEM, stranger.TLS, "host-a")
	require.NoError(t, err)
	// Present it even though the agent asks for certificates of its CA
	// (Go's client would otherwise send none).
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &stranger.TLS, nil }
	c, err := agent.Dial(addr, cfg)
	require.NoError(t, err)
	defer c.Close()
	_, err = c.Fencer(ctx)
	require.Error(t, err, "a controller of another CA was served")
	t.Logf("refused: %v", err) // the server's alert, or a broken pipe

	_, err = p.dial(t, addr, p.ctl.TLS).Fencer(ctx)
	require.NoError(t, err)
	// The log is in order: a call of the stranger's would come first
	// (logged as controller/stranger).
	calls := a.calls(t, 1)
	require.Len(t, calls, 1, "a refused client reached a method")
	assert.Equal(t, "controller/ctl", calls[0]["caller"])
	assert.Equal(t, 0, a.stop(t, syscall.SIGTERM))
}

func TestVersion(t *testing.T) {
	code, out, _ := runAgent(t, "-version")
	assert.Equal(t, 0, code)
	assert.Regexp(t, `^sealift-agent \S+\n$`, out)
}

// TestBadInvocations: bad flags exit 2 naming the flag and the value;
// TLS file problems exit 1 naming the file, never printing a key. None
// of these needs root: the agent stops before touching the host.
func TestBadInvocations(t *testing.T) {
	p := newPKI(t)
	base := append(p.tlsArgs(), "-listen", "127.0.0.1:1", "-state-dir", t.TempDir())
	with := func(extra ...string) []string { return append(slices.Clone(base), extra...) }
	without := func(flags ...string) []string {
		var out []string
		for i := 0; i < len(base); i += 2 {
			if !slices.Contains(flags, base[i]) {
				out = append(out, base[i], base[i+1])
			}
		}
		return out
	}
	keyPEM, err := os.ReadFile(p.file("host-a-key.pem"))
	require.NoError(t, err)
	keyBody := strings.Split(string(keyPEM), "\n")[1] // the first line of base64

	for _, c := range []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"bad -fence", with("-fence", "nftx"), 2, []string{`sealift-agent: -fence "nftx": want none, nft or linkstate`}},
		{"bad -conn", with("-conn", "pcap"), 2, []string{`-conn "pcap": want none, conntrack or sockdiag`}},
		{"bad -hypervisor", with("-hypervisor", "xen"), 2, []string{`-hypervisor "xen": want none, qemu or libvirt`}},
		{"bad -listen", append(without("-listen"), "-listen", "localhost"), 2, []string{`-listen "localhost": want HOST:PORT`}},
		{"bad -metrics-listen", with("-metrics-listen", "9090"), 2, []string{`-metrics-listen "9090": want HOST:PORT`}},
		{"-metrics-listen on -listen", with("-metrics-listen", "127.0.0.1:1"), 2, []string{`-metrics-listen "127.0.0.1:1": the same address as -listen`}},
		{"missing -cert", without("-cert"), 2, []string{"-cert is required"}},
		{"missing -listen", without("-listen"), 2, []string{"-listen is required"}},
		{"unknown flag", with("-plaintext"), 2, []string{"-plaintext"}},
		{"libvirt without URI", with("-hypervisor", "libvirt"), 2, []string{"-libvirt-uri is required"}},
		{"-qemu-dir without qemu", with("-qemu-dir", "/x"), 2, []string{`-qemu-dir "/x": only with -hypervisor qemu`}},
		{"-bgp-as without gobgp", with("-bgp-as", "65001"), 2, []string{`-bgp-as "65001": only with -routing gobgp`}},
		{"bad -bgp-neighbors", with("-routing", "gobgp", "-bgp-as", "65001", "-bgp-router-id", "10.0.0.1", "-bgp-neighbors", "10.0.0.2:65002"), 2,
			[]string{`-bgp-neighbors "10.0.0.2:65002": "10.0.0.2:65002": want ADDR=ASN`}},
		{"gobgp without an AS", with("-routing", "gobgp", "-bgp-router-id", "10.0.0.1"), 2, []string{`-bgp-as "": want an AS number`}},
		{"bad -qemu-migration-addr", with("-hypervisor", "qemu", "-qemu-migration-addr", "10.0.0"), 2,
			[]string{`-qemu-migration-addr "10.0.0": not an IP address`}},
		{"missing -cert file", append(without("-cert"), "-cert", p.file("nope.pem")), 1, []string{p.file("nope.pem")}},
		{"missing -ca file", append(without("-ca"), "-ca", p.file("nope-ca.pem")), 1, []string{p.file("nope-ca.pem")}},
		{"cert and key swapped", append(without("-cert", "-key"), "-cert", p.file("host-a-key.pem"), "-key", p.file("host-a.pem")),
			1, []string{p.file("host-a-key.pem"), p.file("host-a.pem")}},
		{"a controller certificate", append(without("-cert", "-key"), "-cert", p.file("ctl.pem"), "-key", p.file("ctl-key.pem")),
			1, []string{p.file("ctl.pem"), "want an agent certificate"}},
		{"a namespace that does not exist", with("-netns", "sealift-no-such-ns"), 1, []string{"-netns", "sealift-no-such-ns"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, out, errOut := runAgent(t, c.args...)
			assert.Equal(t, c.code, code, "%s", errOut)
			assert.Empty(t, out)
			for _, w := range c.want {
				// JSON log lines escape quotes; the usage errors are plain.
				assert.Contains(t, strings.ReplaceAll(errOut, `\"`, `"`), w)
			}
			assert.NotContains(t, errOut, keyBody, "key material printed")
			assert.NotContains(t, errOut, "PRIVATE KEY")
		})
	}
}

// TestParseFlags checks the defaults and that -version needs nothing else.
func TestParseFlags(t *testing.T) {
	c, err := parseFlags([]string{"-version"}, &bytes.Buffer{})
	require.NoError(t, err)
	assert.True(t, c.version)

	c, err = parseFlags([]string{"-listen", ":7443", "-ca", "a", "-cert", "b", "-key", "c"}, &bytes.Buffer{})
	require.NoError(t, err)
	assert.Equal(t, config{listen: ":7443", caFile: "a", certFile: "b", keyFile: "c", hypervisor: "none",
		fence: "nft", conn: "conntrack", routing: "none", link: "none", stateDir: "/var/lib/sealift-agent"}, c)

	var help bytes.Buffer
	_, err = parseFlags([]string{"-help"}, &help)
	assert.ErrorIs(t, err, flag.ErrHelp)
	assert.Contains(t, help.String(), "-link wireguard serves this host's WireGuard link ends")
}

// TestAgentBGPDialsFromItsNamespace: an agent started inside the routing
// core's namespace with -routing gobgp runs its BGP speaker there, so the
// speaker dials its neighbour itself — B's speaker here is passive and
// nothing bridges the session — and the agent serves its routes: Wait
// returns on B's announcement, which -bgp-fib-metric installs in the
// core's kernel table.
func TestAgentBGPDialsFromItsNamespace(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	p := newPKI(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// A direct link between the core and B (eBGP: one hop).
	coreAddr, bAddr := netip.MustParseAddr("100.65.0.1"), netip.MustParseAddr("100.65.0.2")
	require.NoError(t, lab.Veth(l.Core, "bgp0", coreAddr.String()+"/30", l.B, "bgp0", bAddr.String()+"/30"))
	b, err := gobgp.New(ctx, gobgp.WithHost(l.B), gobgp.WithSpeaker(gobgp.Speaker{AS: 65002, RouterID: bAddr,
		ListenAddrs: []netip.Addr{bAddr}, Neighbors: []gobgp.Neighbor{{Address: coreAddr, AS: 65001, Passive: true}}}))
	require.NoError(t, err)
	t.Cleanup(func() { b.Close(context.Background()) })

	listen := "127.0.0.1:7443" // the core's own loopback
	a := startIn(t, l.Core, append(p.tlsArgs(), "-listen", listen, "-state-dir", t.TempDir(), "-fence", "none", "-conn", "none",
		"-routing", "gobgp", "-bgp-as", "65001", "-bgp-router-id", coreAddr.String(), "-bgp-listen", coreAddr.String(),
		"-bgp-neighbors", bAddr.String()+"=65002", "-bgp-fib-metric", "20")...)
	line := a.waitLog(t, "sealift-agent started")
	assert.Equal(t, "gobgp", line["routing"])

	cfg, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, "host-a")
	require.NoError(t, err)
	c, err := agent.Dial(listen, cfg, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
		var conn net.Conn
		err := nsutil.Do(l.Core, func() (err error) {
			var d net.Dialer
			conn, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return conn, err
	}))
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })

	prefix := netip.MustParsePrefix("10.1.0.0/24")
	waited := make(chan error, 1)
	go func() {
		_, err := c.RouteWatcher().Wait(ctx, routing.Expect{Prefix: prefix, Via: bAddr})
		waited <- err
	}()
	require.NoError(t, b.Announce(ctx, prefix, bAddr))
	select {
	case err := <-waited:
		require.NoError(t, err)
	case <-ctx.Done():
		t.Fatal("Wait did not return after B's announcement")
	}
	// The session is the agent's: a TCP connection from the core's
	// address to B's port 179 (B's speaker is passive).
	out, err := lab.Exec(l.Core, "ss", "-Htn", "state", "established", "dst", bAddr.String(), "dport", "= :179")
	require.NoError(t, err, "%s", out)
	assert.Contains(t, string(out), coreAddr.String()+":", "no session dialled from the core: %s", out)
	out, err = lab.Exec(l.Core, "ip", "route", "show", prefix.String())
	require.NoError(t, err)
	assert.Contains(t, string(out), "via "+bAddr.String(), "B's route in the core's kernel table")
	assert.Contains(t, string(out), "metric 20")
	assert.Equal(t, 0, a.stop(t, syscall.SIGTERM))
}

// startIn starts the agent inside namespace ns (as an operator would:
// ip netns exec), so that everything it opens lives there.
func startIn(t *testing.T, ns string, args ...string) *proc {
	t.Helper()
	return start(t, append([]string{"\x00netns", ns}, args...)...)
}

// TestAgentServesBothLinkKinds: -link wireguard,ipsec serves a host's
// WireGuard and XFRM ends side by side: each link opens on its kind's
// end (an XFRM end installs its blocking policies: ESP itself is not
// needed to open), both are listed, and both close.
func TestAgentServesBothLinkKinds(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	p := newPKI(t)
	addr := freeAddr(t)
	a := start(t, append(p.tlsArgs(), "-listen", addr, "-netns", l.A, "-fence", "none", "-conn", "none",
		"-link", "wireguard,ipsec", "-state-dir", t.TempDir())...)
	started := a.waitLog(t, "sealift-agent started")
	assert.Equal(t, "wireguard,ipsec", started["link"])
	assert.EqualValues(t, 0, started["link_ends"])
	ends := p.dial(t, addr, p.ctl.TLS).LinkEnd()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, c := range []struct {
		id   string
		kind tunnel.Kind
		peer string
	}{{"w1", tunnel.WireGuard, "10.2.0.0/24"}, {"x1", tunnel.IPsec, "10.3.0.0/24"}} {
		spec := tunnel.Spec{ID: c.id, Kind: c.kind,
			Secure: tunnel.End{Host: "host-a", Underlay: lab.AUplink, Protected: []netip.Prefix{netip.MustParsePrefix(c.peer)}},
			Remote: tunnel.End{Host: "host-b", Underlay: lab.BUnderlay, Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}}
		st, err := ends.Open(ctx, spec, tunnel.SecureRole)
		require.NoError(t, err, "%s", c.kind)
		assert.NotEmpty(t, st.Public.Key, "%s: its public key", c.kind)
	}
	ls, err := ends.List(ctx)
	require.NoError(t, err)
	kinds := map[string]tunnel.Kind{}
	for _, e := range ls {
		kinds[e.Spec.ID] = e.Spec.Kind
	}
	assert.Equal(t, map[string]tunnel.Kind{"w1": tunnel.WireGuard, "x1": tunnel.IPsec}, kinds)
	out, err := lab.Exec(l.A, "ip", "xfrm", "policy")
	require.NoError(t, err)
	assert.Contains(t, string(out), "10.3.0.0/24", "the XFRM end's policies")
	for _, id := range []string{"w1", "x1"} {
		require.NoError(t, ends.Close(ctx, id))
	}
	ls, err = ends.List(ctx)
	require.NoError(t, err)
	assert.Empty(t, ls)
	out, err = lab.Exec(l.A, "ip", "xfrm", "policy")
	require.NoError(t, err)
	assert.NotContains(t, string(out), "10.3.0.0/24", "the XFRM end's policies after Close")
}

// scrape GETs the agent's /metrics and returns its samples by series
// ("name{labels}" as exposed) and the text.
func scrape(t *testing.T, addr string) (map[string]float64, string) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	out, err := promtest.Lines(body)
	require.NoError(t, err)
	return out, string(body)
}

// TestAgentServesMetrics: with -metrics-listen the agent serves
// Prometheus metrics over plain HTTP (its start line names the address):
// a fence set and a link end opened through the agent, and a call it
// refused, are there with their values, next to the Go runtime's; other
// paths are 404; the server stops with the agent.
func TestAgentServesMetrics(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	p := newPKI(t)
	addr, maddr := freeAddr(t), freeAddr(t)
	a := start(t, append(p.tlsArgs(), "-listen", addr, "-metrics-listen", maddr, "-netns", l.A, "-fence", "nft", "-conn", "none",
		"-link", "wireguard", "-state-dir", t.TempDir())...)
	assert.Equal(t, maddr, a.waitLog(t, "sealift-agent started")["metrics_listen"])
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := p.dial(t, addr, p.ctl.TLS)
	f, err := c.Fencer(ctx)
	require.NoError(t, err)
	spec := fence.Spec{VM: "vm-1", Port: "vm0", Addrs: []netip.Addr{lab.VMAddr}}
	require.NoError(t, f.Fence(ctx, spec))
	t.Cleanup(func() { _ = f.Lift(context.Background(), spec.VM) })
	link := tunnel.Spec{ID: "m1", Kind: tunnel.WireGuard,
		Secure: tunnel.End{Host: "host-a", Underlay: lab.AUplink, Protected: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}},
		Remote: tunnel.End{Host: "host-b", Underlay: lab.BUnderlay, Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}}
	ends := c.LinkEnd()
	_, err = ends.Open(ctx, link, tunnel.SecureRole)
	require.NoError(t, err)
	t.Cleanup(func() { _ = ends.Close(context.Background(), link.ID) })
	ccfg, err := agentpki.ClientConfig(p.ca.PEM, p.ctl.TLS, "host-a")
	require.NoError(t, err)
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(ccfg)))
	require.NoError(t, err)
	defer cc.Close()
	_, err = agentpb.NewFencerClient(cc).Lift(ctx, &agentpb.LiftRequest{}) // no VM: refused
	require.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)

	got, text := scrape(t, maddr)
	for series, want := range map[string]float64{
		`sealift_agent_fences`: 1,
		`sealift_agent_link_ends{active="false",kind="wireguard",role="secure"}`:                                  1,
		`sealift_agent_link_ends{active="true",kind="wireguard",role="secure"}`:                                   0,
		`sealift_agent_rpc_duration_seconds_count{code="OK",method="/sealift.agent.v1.Fencer/Fence"}`:             1,
		`sealift_agent_rpc_duration_seconds_count{code="OK",method="/sealift.agent.v1.LinkEnd/Open"}`:             1,
		`sealift_agent_rpc_duration_seconds_count{code="InvalidArgument",method="/sealift.agent.v1.Fencer/Lift"}`: 1,
		`sealift_agent_rpc_duration_seconds_count{code="OK",method="/sealift.agent.v1.Fencer/Lift"}`:              0,
		`sealift_agent_collector_success{collector="fences"}`:                                                     1,
		`sealift_agent_collector_success{collector="link_ends"}`:                                                  1,
	} {
		v, ok := got[series]
		if assert.True(t, ok, "no series %s in:\n%s", series, text) {
			assert.Equal(t, want, v, series)
		}
	}
	assert.Contains(t, text, "go_goroutines ")
	assert.Contains(t, text, "process_start_time_seconds ")
	assert.NotContains(t, text, "sealift_agent_link_bytes_total", "no active end: no counters")
	resp, err := http.Get("http://" + maddr + "/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusNotFound, resp.StatusCode)

	require.NoError(t, f.Lift(ctx, spec.VM))
	require.NoError(t, ends.Close(ctx, link.ID))
	got, _ = scrape(t, maddr)
	assert.Equal(t, 0.0, got["sealift_agent_fences"], "after the lift")
	assert.Equal(t, 0.0, got[`sealift_agent_link_ends{active="false",kind="wireguard",role="secure"}`], "after the close")
	assert.Equal(t, 0, a.stop(t, syscall.SIGTERM))
	_, err = http.Get("http://" + maddr + "/metrics")
	assert.Error(t, err, "the metrics server outlived the agent")
}
