package main

// The remote lab (issue 12, item 7): hosts A, B and the routing core
// each run sealift-agent as a process of its own inside their namespace;
// the controller, `sealift migrate`, runs in a namespace of its own (ctl)
// and reaches the agents over a management network (point-to-point
// links from ctl, nothing on the wan) with mutual TLS. The controller
// holds no link device, no key and no QEMU: the guests' QEMUs belong to
// the agents (the lab boots the source guest and hands it over, as a VM
// manager would), the WireGuard devices live in the agents' processes.
// Everything else — peers, pingers, captures, baselines, verdicts — is
// the in-process lab's, so the figures compare.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"google.golang.org/grpc"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/hypervisor/qemu/qmp"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/routing/gobgp"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

const agentPort = 7443

// agentProc is one sealift-agent process of the remote lab.
type agentProc struct {
	name, ns string // its host name (certificate identity) and namespace
	addr     netip.Addr
	dir      string // its state dir
	cmd      *exec.Cmd
	exited   chan struct{}
	client   *agent.Client // the lab's own client (an observer), dialled from ctl
}

func (p *agentProc) listen() string {
	return netip.AddrPortFrom(p.addr, agentPort).String()
}

func (p *agentProc) qemuDir() string { return filepath.Join(p.dir, "qemu") }

// remote is the remote lab's controller side.
type remote struct {
	ctl     string // the controller's namespace
	bin     string // where sealift and sealift-agent are built
	pki     string
	agents  map[string]*agentProc // by host name: host-a, host-b, core
	config  string                // the controller's configuration file
	journal string
	etcd    []string     // -standby: the etcd cluster's endpoints (else the bbolt journal)
	ctlOut  bytes.Buffer // everything the controller printed on stdout (its reports)
	// secureDevices: the cloud's own encrypting devices (the site VPN's).
	secureDevices []string
}

// remoteHosts are the agents: host name, lab namespace, management
// address (ctl holds .1 of each /30).
func (w *world) remoteHosts() []*agentProc {
	return []*agentProc{
		{name: "host-a", ns: w.l.A, addr: netip.MustParseAddr("10.250.1.2")},
		{name: "host-b", ns: w.l.B, addr: netip.MustParseAddr("10.250.2.2")},
		{name: "core", ns: w.l.Core, addr: netip.MustParseAddr("10.250.3.2")},
	}
}

// startRemote builds the management network, the binaries and the PKI.
// The agents start later (startAgents), once the guests they take over
// exist.
func (w *world) startRemote(ctx context.Context, t lab.TB) error {
	r := &remote{ctl: w.l.Prefix + "-ctl", bin: filepath.Join(w.dir, "bin"), pki: filepath.Join(w.dir, "pki"),
		agents: map[string]*agentProc{}, config: filepath.Join(w.dir, "sealift.json"), journal: filepath.Join(w.dir, "ctl-journal.db")}
	w.rm = r
	if err := w.l.AddHost(r.ctl); err != nil {
		return err
	}
	for i, p := range w.remoteHosts() {
		p.dir = filepath.Join(w.dir, "agent-"+p.name)
		ctlAddr := fmt.Sprintf("10.250.%d.1/30", i+1)
		if err := lab.Veth(r.ctl, "m"+strconv.Itoa(i+1), ctlAddr, p.ns, "mgmt0", p.addr.String()+"/30"); err != nil {
			return fmt.Errorf("management link to %s: %w", p.name, err)
		}
		r.agents[p.name] = p
	}
	w.log.Info("building sealift and sealift-agent")
	if err := buildBinaries(ctx, r.bin); err != nil {
		return err
	}
	ca, err := agentpki.NewCA("sealift-lab", 24*time.Hour)
	if err != nil {
		return err
	}
	now := time.Now()
	var ids []*agentpki.Identity
	for _, n := range []struct {
		role agentpki.Role
		name string
	}{{agentpki.RoleController, "ctl"}, {agentpki.RoleController, "lab"},
		{agentpki.RoleAgent, "host-a"}, {agentpki.RoleAgent, "host-b"}, {agentpki.RoleAgent, "core"}} {
		id, err := ca.Issue(n.role, n.name, now.Add(-time.Minute), now.Add(24*time.Hour))
		if err != nil {
			return err
		}
		ids = append(ids, id)
	}
	if err := ca.WriteFiles(r.pki, ids...); err != nil {
		return err
	}
	return w.writeControllerConfig()
}

// buildBinaries builds the controller and the agent (without libvirt:
// the remote lab drives QEMU).
func buildBinaries(ctx context.Context, dir string) error {
	gobin, err := exec.LookPath("go")
	if err != nil { // not on PATH: the toolchain this lab was built with
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	gomod, err := exec.CommandContext(ctx, gobin, "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %w", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(gomod)))
	cmd := exec.CommandContext(ctx, gobin, "build", "-tags", "nolibvirt", "-o", dir+"/", "./cmd/sealift", "./cmd/sealift-agent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/sealift ./cmd/sealift-agent: %w: %s", err, out)
	}
	return nil
}

// controllerConfig is cmd/sealift's configuration file (its JSON).
type controllerConfig struct {
	TLS struct {
		CA   string `json:"ca"`
		Cert string `json:"cert"`
		Key  string `json:"key"`
	} `json:"tls"`
	Journal      string                    `json:"journal,omitempty"`
	Etcd         map[string]any            `json:"etcd,omitempty"`
	Environments map[string]map[string]any `json:"environments"`
}

func (w *world) writeControllerConfig() error {
	r := w.rm
	var c controllerConfig
	c.TLS.CA, c.TLS.Cert, c.TLS.Key = filepath.Join(r.pki, "ca.pem"), filepath.Join(r.pki, "ctl.pem"), filepath.Join(r.pki, "ctl-key.pem")
	c.Journal = r.journal
	if r.etcd != nil { // -standby: a journal the controllers share
		c.Journal, c.Etcd = "", map[string]any{"endpoints": r.etcd, "ttl": leaseTTL.String()}
	}
	a, b, core := r.agents["host-a"], r.agents["host-b"], r.agents["core"]
	c.Environments = map[string]map[string]any{
		"secure": {"agent": a.listen(), "host": a.name, "underlay": w.underA().String(),
			"core": map[string]any{"agent": core.listen(), "host": core.name, "underlay": w.underCore().String()}},
		"cloud": {"agent": b.listen(), "host": b.name, "underlay": w.underB().String(), "secure_devices": r.secureDevices},
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(r.config, data, 0o600)
}

// agentArgs are each agent's flags: A and B serve QEMU (their own
// credentials for the migration stream), nft, conntrack and WireGuard
// link ends; the core serves its routing table and link ends.
func (w *world) agentArgs(p *agentProc) []string {
	r := w.rm
	args := []string{"-listen", p.listen(), "-ca", filepath.Join(r.pki, "ca.pem"),
		"-cert", filepath.Join(r.pki, p.name+".pem"), "-key", filepath.Join(r.pki, p.name+"-key.pem"),
		"-state-dir", p.dir, "-link", "wireguard", "-metrics-listen", p.metricsAddr()}
	switch p.name {
	case "host-a":
		return append(args, "-hypervisor", "qemu", "-qemu-dir", p.qemuDir(), "-qemu-tls", w.tlsDirA,
			"-qemu-migration-addr", w.underA().String(), "-fence", "nft", "-conn", "conntrack")
	case "host-b":
		return append(args, "-hypervisor", "qemu", "-qemu-dir", p.qemuDir(), "-qemu-tls", w.tlsDirB,
			"-qemu-migration-addr", w.underB().String(), "-fence", "nft", "-conn", "conntrack")
	default:
		args = append(args, "-fence", "none", "-conn", "none")
		if w.opts.Subnet { // the core's BGP speaker, in its agent, peering with B over the site link
			return append(args, "-routing", "gobgp", "-bgp-as", "65001", "-bgp-router-id", coreSite.String(),
				"-bgp-listen", coreSite.String(), "-bgp-neighbors", bSite.String()+"=65002", "-bgp-fib-metric", "20")
		}
		return append(args, "-routing", "netlinkroute")
	}
}

// remoteSubnet builds, for the subnet scenario, what is the operator's
// and not sealift's: the site VPN between the core and B (WireGuard
// devices of the lab's process) and B's BGP speaker (the target
// environment's routing: it announces the subnet once the Migrator
// watches the core). The core's speaker is its agent's.
func (w *world) remoteSubnet(ctx context.Context, t lab.TB) error {
	w.wg = wireguard.New(wireguard.WithStateDir(filepath.Join(w.dir, "wg")), wireguard.WithLogger(w.log))
	w.links = map[tunnel.Kind]tunnel.SecureLinker{tunnel.WireGuard: w.wg}
	t.Cleanup(func() { w.closeLinks() })
	site, err := w.siteLink(ctx)
	if err != nil {
		return err
	}
	w.rm.secureDevices = []string{site.RemoteDevice}
	w.cfg.Environments = map[string]migration.Environment{"cloud": {SecureDevices: w.rm.secureDevices}}
	w.bgpB, err = gobgp.New(ctx, gobgp.WithHost(w.l.B), gobgp.WithLogger(w.log), gobgp.WithSpeaker(gobgp.Speaker{
		AS: 65002, RouterID: bSite, ListenAddrs: []netip.Addr{bSite},
		Neighbors: []gobgp.Neighbor{{Address: coreSite, AS: 65001}}}))
	if err != nil {
		return err
	}
	t.Cleanup(func() { w.bgpB.Close(context.Background()) })
	return w.writeControllerConfig()
}

// ctlLine acts on a line of the controller's progress: in the subnet
// scenario, B's speaker announces the subnet once the Migrator starts
// watching the core (as the in-process lab's relay does).
func (w *world) ctlLine(line string) {
	if w.bgpB == nil {
		return
	}
	if w.opts.VMs > 0 { // a batch: once every member completed (as batchFinished)
		if strings.HasSuffix(strings.TrimSpace(line), ": finished: completed") && w.batchLeft.Add(-1) == 0 {
			go w.announceSubnet()
		}
		return
	}
	if line == fmt.Sprintf("block %d %s ...", int(migration.BlockInspect), migration.BlockInspect) {
		go w.announceSubnet()
	}
}

// startAgents starts every agent in its namespace and waits until each
// answers the lab's client over mutual TLS.
func (w *world) startAgents(ctx context.Context, t lab.TB) error {
	r := w.rm
	for _, p := range w.remoteHosts() {
		p = r.agents[p.name]
		if err := w.startAgent(t, p); err != nil {
			return err
		}
		if err := w.dialAgent(t, p); err != nil {
			return err
		}
	}
	for _, p := range r.agents {
		if err := waitAgent(ctx, p); err != nil {
			return err
		}
	}
	return nil
}

// dialAgent makes the lab's client of agent p (anew after a restart:
// gRPC would wait out its reconnection backoff otherwise).
func (w *world) dialAgent(t lab.TB, p *agentProc) error {
	r := w.rm
	caPEM, cert, err := agentpki.LoadFiles(filepath.Join(r.pki, "ca.pem"), filepath.Join(r.pki, "lab.pem"), filepath.Join(r.pki, "lab-key.pem"))
	if err != nil {
		return err
	}
	tc, err := agentpki.ClientConfig(caPEM, cert, p.name)
	if err != nil {
		return err
	}
	if p.client != nil {
		p.client.Close()
	}
	c, err := agent.Dial(p.listen(), tc, grpc.WithContextDialer(nsDialer(r.ctl)))
	if err != nil {
		return err
	}
	p.client = c
	t.Cleanup(func() { c.Close() })
	return nil
}

func (w *world) startAgent(t lab.TB, p *agentProc) error {
	logf, err := os.OpenFile(filepath.Join(w.dir, "agent-"+p.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	p.cmd = exec.Command("ip", append([]string{"netns", "exec", p.ns, filepath.Join(w.rm.bin, "sealift-agent")}, w.agentArgs(p)...)...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start agent %s: %w", p.name, err)
	}
	p.exited = make(chan struct{})
	go func() { _ = p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() { stopAgent(p) })
	return nil
}

// stopAgent stops an agent gracefully (SIGTERM), killing it after 10 s.
func stopAgent(p *agentProc) {
	if p.cmd == nil || p.exited == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitAgent waits until the agent answers (its link ends' List: every
// agent of the lab serves them), or fails when the agent exits.
func waitAgent(ctx context.Context, p *agentProc) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := p.client.LinkEnd().List(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("agent %s exited: %v (see agent-%s.log)", p.name, p.cmd.ProcessState, p.name)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s does not answer at %s: %w", p.name, p.listen(), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nsDialer dials from namespace ns (a socket stays in the namespace it
// was made in).
func nsDialer(ns string) func(context.Context, string) (net.Conn, error) {
	return func(ctx context.Context, addr string) (net.Conn, error) {
		var c net.Conn
		err := nsutil.Do(ns, func() error {
			var d net.Dialer
			var err error
			c, err = d.DialContext(ctx, "tcp", addr)
			return err
		})
		return c, err
	}
}

// remoteQEMU: the guests' QEMUs at A and B live in the agents' state
// dirs. The lab defines the target's device model there and boots the
// source guest, then lets go of it (qemu's Detach) for A's agent to
// adopt — as a VM manager hands its VMs to the node's agent. Once the
// agents run, the handles the scenario uses are the lab's clients of
// the agents.
func (w *world) remoteQEMU(t lab.TB) (*hypervisors, error) {
	a, b := w.rm.agents["host-a"], w.rm.agents["host-b"]
	la, err := w.qemuHandleIn(t, w.l.A, a.qemuDir(), w.underA(), w.tlsDirA)
	if err != nil {
		return nil, err
	}
	lb, err := w.qemuHandleIn(t, w.l.B, b.qemuDir(), w.underB(), w.tlsDirB)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { killQEMUs(a.qemuDir(), b.qemuDir()) })
	boot := func(ctx context.Context, i int, v vmSpec) error {
		// Each QEMU gets a second monitor, the lab's (the agent holds the
		// first): to time the target's RESUME event as the in-process lab
		// does, and to see where the VM runs whatever the agents say.
		cfg := w.img.Config(v.name, v.net(fmt.Sprintf("tapb%d", i+1)))
		cfg.Extra = append(cfg.Extra, "-chardev", "socket,id=labmon,server=on,wait=off,path="+labMonitor(b, v.name),
			"-mon", "chardev=labmon,mode=control")
		if err := lb.Define(cfg); err != nil {
			return err
		}
		src := w.img.Config(v.name, v.net(fmt.Sprintf("tapa%d", i+1)))
		src.Extra = append(src.Extra, "-chardev", "socket,id=labmon,server=on,wait=off,path="+labMonitor(a, v.name),
			"-mon", "chardev=labmon,mode=control")
		if _, err := la.Start(ctx, src); err != nil {
			return err
		}
		return la.Detach(v.name)
	}
	return &hypervisors{boot: boot, targetTap: func(i int) string { return fmt.Sprintf("tapb%d", i+1) },
		baseline: w.qemuBaseline, watch: w.watchResume,
		stop: func(ctx context.Context, name string) error { return killQEMU(b.qemuDir(), name) }}, nil
}

func labMonitor(p *agentProc, vm string) string { return filepath.Join(p.qemuDir(), vm+".labqmp") }

// watchRemoteResume reports when the incoming QEMU of vm at B resumes,
// from QEMU's RESUME event on the lab's monitor: it waits for the
// instance to appear (block 315), then for the event.
func (w *world) watchRemoteResume(ctx context.Context, vm string) <-chan time.Time {
	path := labMonitor(w.rm.agents["host-b"], vm)
	ch := make(chan time.Time, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		var mon *qmp.Client
		for mon == nil {
			if _, err := os.Stat(path); err == nil {
				if c, err := qmp.Dial(ctx, path); err == nil {
					mon = c
					break
				}
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
		defer mon.Close()
		events, unsub := mon.Subscribe()
		defer unsub()
		w.awaitResume(ctx, events, ch)
	}()
	return ch
}

// killQEMUs kills every QEMU whose pid file is in dirs (the agents do
// not stop their VMs when they exit).
func killQEMUs(dirs ...string) {
	for _, d := range dirs {
		pids, _ := filepath.Glob(filepath.Join(d, "*.pid"))
		for _, f := range pids {
			_ = killQEMU(d, strings.TrimSuffix(filepath.Base(f), ".pid"))
		}
	}
}

// killQEMU kills the QEMU of VM name in state dir dir and waits until it
// is gone (at most 5 s).
func killQEMU(dir, name string) error {
	b, err := os.ReadFile(filepath.Join(dir, name+".pid"))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return fmt.Errorf("pid file of %s: %q", name, b)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		return err
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || bytes.Contains(st, []byte(") Z ")) {
			return nil
		}
	}
	return fmt.Errorf("QEMU of %s (pid %d) still there 5 s after SIGKILL", name, pid)
}

// controllerRun is one run of the controller (`sealift migrate` or
// `sealift recover`) in the controller's namespace.
type controllerRun struct {
	reps []*migration.Report // its JSON reports
	code int
	err  error
}

// ctlProc is a running controller: its stderr lines are relayed as
// progress and offered on lines (dropped when nobody reads).
type ctlProc struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	lines  chan string
	done   chan struct{}
	tail   []string // its last words, for the error
	// rpcs: its "switchover rpc:" lines (the calls its hook made).
	rpcs []string
	// recoveryAt: when it first said it started recovering a migration
	// (read after done).
	recoveryAt time.Time
}

// startController starts `sealift ARGS -config C -json` in ctl.
func (w *world) startController(ctx context.Context, args ...string) (*ctlProc, error) {
	r := w.rm
	full := append([]string{"netns", "exec", r.ctl, filepath.Join(r.bin, "sealift"), args[0], "-config", r.config, "-json"}, args[1:]...)
	c := &ctlProc{cmd: exec.CommandContext(ctx, "ip", full...), lines: make(chan string, 256), done: make(chan struct{})}
	c.cmd.Stdout = &c.stdout
	stderr, err := c.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	logf, err := os.OpenFile(filepath.Join(w.dir, "ctl.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	if err := c.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start sealift %s: %w", args[0], err)
	}
	go func() {
		defer close(c.done)
		defer logf.Close()
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(logf, line)
			if c.tail = append(c.tail, line); len(c.tail) > 5 {
				c.tail = c.tail[1:]
			}
			if strings.HasPrefix(line, "{") {
				continue // a JSON log line
			}
			if r, ok := strings.CutPrefix(line, "switchover rpc: "); ok {
				c.rpcs = append(c.rpcs, r)
			}
			if strings.HasPrefix(line, "started: recovery ") && c.recoveryAt.IsZero() {
				c.recoveryAt = time.Now()
			}
			w.ctlLine(line)
			if w.opts.Progress != nil {
				w.opts.Progress("  ctl: " + line)
			}
			select {
			case c.lines <- line:
			default:
			}
		}
	}()
	return c, nil
}

// wait waits for the controller to exit and reads its reports.
func (c *ctlProc) wait() controllerRun {
	<-c.done
	err := c.cmd.Wait()
	run := controllerRun{code: c.cmd.ProcessState.ExitCode()}
	dec := json.NewDecoder(&c.stdout)
	for dec.More() {
		var rep migration.Report
		if jerr := dec.Decode(&rep); jerr != nil {
			run.err = fmt.Errorf("sealift: its JSON report: %w", jerr)
			return run
		}
		run.reps = append(run.reps, &rep)
	}
	if err != nil {
		run.err = fmt.Errorf("sealift exited %d: %s", run.code, strings.Join(c.tail, " | "))
	}
	return run
}

// migrateArgs are `sealift migrate`'s arguments for plan p.
func migrateArgs(p migration.Plan) []string {
	var peers, addrs []string
	for _, pp := range p.Peers {
		peers = append(peers, pp.String())
	}
	for _, a := range p.Addrs {
		addrs = append(addrs, a.String())
	}
	args := []string{"migrate", "-vm", p.VM, "-from", p.From, "-to", p.To, "-addr", strings.Join(addrs, ","),
		"-peer", strings.Join(peers, ","), "-fence", string(p.FenceMode), "-max-downtime", p.MaxDowntime.String()}
	if sn := p.Subnet; sn != nil {
		args = append(args, subnetArgs(*sn)...)
		args = append(args, "-members", strings.Join(sn.Members, ","))
	}
	return args
}

// subnetArgs are -subnet, -via and -converge-timeout for sn.
func subnetArgs(sn migration.Subnet) []string {
	subnet, via := sn.Prefix.String(), sn.Via.String()
	if sn.Prefix6.IsValid() { // a dual-stack subnet
		subnet, via = subnet+","+sn.Prefix6.String(), via+","+sn.Via6.String()
	}
	return []string{"-subnet", subnet, "-via", via, "-converge-timeout", sn.ConvergeTimeout.String()}
}

// batchArgs are `sealift batch`'s arguments for b (its members share
// their peers, link, fence mode and downtime limit, as the lab's do).
func batchArgs(b migration.Batch) []string {
	p0 := b.Plans[0]
	var peers []string
	for _, pp := range p0.Peers {
		peers = append(peers, pp.String())
	}
	args := []string{"batch", "-from", b.From, "-to", b.To, "-parallel", strconv.Itoa(b.Parallel),
		"-peer", strings.Join(peers, ","), "-link", string(p0.Link), "-fence", string(p0.FenceMode),
		"-max-downtime", p0.MaxDowntime.String()}
	args = append(args, subnetArgs(b.Subnet)...)
	for _, p := range b.Plans {
		var addrs []string
		for _, a := range p.Addrs {
			addrs = append(addrs, a.String())
		}
		args = append(args, "-vm", p.VM+"="+strings.Join(addrs, ","))
	}
	return args
}

// batchRemote runs `sealift batch` for b, serving its metrics until the
// lab scraped them and the agents' (MetricsResult), and returns its
// report and exit code.
func (w *world) batchRemote(ctx context.Context, b migration.Batch) (*migration.BatchReport, int, *MetricsResult, error) {
	args := append(batchArgs(b), "-metrics-listen", ctlMetricsAddr, "-metrics-linger", "2m")
	c, err := w.startController(ctx, args...)
	if err != nil {
		return nil, 0, nil, err
	}
	mr := w.scrapeLingering(ctx, c)
	<-c.done
	werr := c.cmd.Wait()
	code := c.cmd.ProcessState.ExitCode()
	w.rm.ctlOut.Write(c.stdout.Bytes())
	var rep migration.BatchReport
	if jerr := json.Unmarshal(c.stdout.Bytes(), &rep); jerr != nil || rep.ID == "" {
		return nil, code, mr, fmt.Errorf("sealift batch exited %d, no JSON report (%v): %s", code, jerr, strings.Join(c.tail, " | "))
	}
	if werr != nil && code != 0 {
		return &rep, code, mr, fmt.Errorf("sealift batch exited %d: %s", code, strings.Join(c.tail, " | "))
	}
	return &rep, code, mr, nil
}

// remoteLinkIDs are the IDs of every link end the agents hold.
func (w *world) remoteLinkIDs(ctx context.Context) ([]string, error) {
	var ids []string
	for _, p := range w.rm.agents {
		es, err := p.client.LinkEnd().List(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s's link ends: %w", p.name, err)
		}
		for _, e := range es {
			ids = append(ids, e.Spec.ID)
		}
	}
	return ids, nil
}

// migrateRemote runs `sealift migrate` for plan p and returns its report
// and the calls its switchover hook made, as it timed them. With scrape,
// the controller serves its metrics and lingers after the migration; the
// lab scrapes it and the agents then (MetricsResult), and stops it.
func (w *world) migrateRemote(ctx context.Context, p migration.Plan, scrape bool) (*migration.Report, []string, int, *MetricsResult, error) {
	args := migrateArgs(p)
	if scrape {
		args = append(args, "-metrics-listen", ctlMetricsAddr, "-metrics-linger", "2m")
	}
	c, err := w.startController(ctx, args...)
	if err != nil {
		return nil, nil, 0, nil, err
	}
	var mr *MetricsResult
	if scrape {
		mr = w.scrapeLingering(ctx, c)
	}
	run := c.wait()
	w.rm.ctlOut.Write(c.stdout.Bytes())
	rpcs := c.rpcs
	if len(run.reps) == 0 {
		return nil, rpcs, run.code, mr, cmpErr(run.err, errors.New("sealift migrate printed no report"))
	}
	return run.reps[0], rpcs, run.code, mr, run.err
}

// scrapeLingering waits until controller c, run with -metrics-listen and
// -metrics-linger, says its work is over and serves its last metrics;
// then scrapes it and the agents, and ends the linger.
func (w *world) scrapeLingering(ctx context.Context, c *ctlProc) *MetricsResult {
	for {
		select {
		case line := <-c.lines:
			if strings.HasPrefix(line, "metrics: serving") { // its migrations are over
				mr := w.scrapeAll(ctx)
				_ = c.cmd.Process.Signal(syscall.SIGTERM) // ends the linger
				return mr
			}
		case <-c.done:
			return &MetricsResult{ScrapeErrors: []string{"the controller ended before it served its last metrics"}}
		}
	}
}

func cmpErr(err, otherwise error) error {
	if err != nil {
		return err
	}
	return otherwise
}

// keyWatch collects every WireGuard private key on this machine while
// the migrations run (the agents' devices answer on their UAPI sockets;
// a redirect tunnel lives only part of a migration), by device name.
type keyWatch struct {
	mu   sync.Mutex
	keys map[string][]byte // device -> private key
	stop chan struct{}
	done chan struct{}
}

func watchKeys() *keyWatch {
	kw := &keyWatch{keys: map[string][]byte{}, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(kw.done)
		// One directory read a round, and a socket is asked once: this
		// runs beside the migration it watches, on the same CPUs (wgctrl
		// reads the whole directory for every device it is asked about).
		dead := map[string]time.Time{} // sockets nobody serves, by mtime
		for {
			ents, _ := os.ReadDir(uapiDir)
			for _, ent := range ents {
				n, ok := strings.CutSuffix(ent.Name(), ".sock")
				if !ok {
					continue
				}
				kw.mu.Lock()
				_, seen := kw.keys[n]
				kw.mu.Unlock()
				info, err := ent.Info()
				if seen || err != nil || dead[n].Equal(info.ModTime()) {
					continue
				}
				key, err := uapiPrivateKey(filepath.Join(uapiDir, ent.Name()))
				switch {
				case errors.Is(err, syscall.ECONNREFUSED):
					dead[n] = info.ModTime()
				case err == nil && key != nil:
					kw.mu.Lock()
					kw.keys[n] = key
					kw.mu.Unlock()
				}
			}
			select {
			case <-kw.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	return kw
}

const uapiDir = "/var/run/wireguard"

// uapiPrivateKey asks a wireguard-go device for its configuration on its
// UAPI socket and returns its private key (nil if it has none yet).
func uapiPrivateKey(sock string) ([]byte, error) {
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "get=1\n\n"); err != nil {
		return nil, err
	}
	var key []byte
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			break // the end of the answer
		}
		if v, ok := strings.CutPrefix(line, "private_key="); ok {
			if key, err = hex.DecodeString(v); err != nil {
				return nil, fmt.Errorf("%s: private_key: %w", sock, err)
			}
		}
		if v, ok := strings.CutPrefix(line, "errno="); ok && v != "0" {
			return nil, fmt.Errorf("%s: errno=%s", sock, v)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if key != nil && bytes.Equal(key, make([]byte, len(key))) {
		key = nil
	}
	return key, nil
}

func (kw *keyWatch) close() { close(kw.stop); <-kw.done }

// check looks for the keys seen in what the controller wrote: its log,
// its journal, its configuration, its reports. It returns how many keys
// it looked for and where it found any; each of the links' devices
// (devs) must have been seen, and a key planted in a buffer must be
// found (the search's control), or it says so.
func (kw *keyWatch) check(w *world, devs []string) (int, []string) {
	kw.mu.Lock()
	defer kw.mu.Unlock()
	var found []string
	for _, d := range devs {
		if _, ok := kw.keys[d]; !ok {
			found = append(found, "the link's device "+d+": its key was never read")
		}
	}
	holds := func(b, key []byte) bool {
		for _, form := range [][]byte{key, []byte(base64.StdEncoding.EncodeToString(key)),
			[]byte(base64.RawStdEncoding.EncodeToString(key)), []byte(hex.EncodeToString(key))} {
			if bytes.Contains(b, form) {
				return true
			}
		}
		return false
	}
	for _, k := range kw.keys {
		if !holds([]byte("x"+base64.StdEncoding.EncodeToString(k)+"y"), k) {
			found = append(found, "the control: a planted key was not found")
		}
		break
	}
	files := map[string][]byte{"its reports": w.rm.ctlOut.Bytes()}
	for _, f := range []string{filepath.Join(w.dir, "ctl.log"), w.rm.journal, w.rm.config} {
		b, err := os.ReadFile(f)
		if err != nil {
			found = append(found, err.Error())
			continue
		}
		files[filepath.Base(f)] = b
	}
	for name, b := range files {
		for dev, k := range kw.keys {
			if holds(b, k) {
				found = append(found, fmt.Sprintf("the key of %s in %s", dev, name))
			}
		}
	}
	return len(kw.keys), found
}

// ControllerResult is the remote lab's view of the controller.
type ControllerResult struct {
	// AgentRTTMS: the median of 20 round trips (a cheap RPC) from the
	// controller's namespace to each agent, over mutual TLS.
	AgentRTTMS map[string]float64 `json:"agent_rtt_ms"`
	// HookMS: the switchover hook of the first migration, as the source
	// agent timed it (its QEMU paused -> continue).
	HookMS float64 `json:"switchover_hook_ms"`
	// HookRPCs: the calls the controller made in that hook, as it timed
	// them ("method agent duration", then their count).
	HookRPCs []string `json:"switchover_rpcs"`
	// Devices are the controller namespace's interfaces after the run:
	// no WireGuard device, no tap (it holds no link and no VM).
	Devices      []string `json:"devices"`
	HoldsNothing bool     `json:"holds_nothing"`
	// ExitCodes of `sealift migrate`, one per migration (a batch: of its
	// one `sealift batch`).
	ExitCodes []int `json:"exit_codes"`
	// KeysChecked: the WireGuard private keys on the machine (the link's
	// ends' among them) looked for in the controller's log, journal,
	// configuration and reports; KeysFound: where any was (or why the
	// check could not run).
	KeysChecked int      `json:"keys_checked"`
	KeysFound   []string `json:"keys_found"`
	// Metrics: the controller's and the agents' /metrics after the
	// first migration.
	Metrics *MetricsResult `json:"metrics,omitempty"`
}

// agentRTTs measures each agent's round trip from ctl.
func (w *world) agentRTTs(ctx context.Context) map[string]float64 {
	out := map[string]float64{}
	for name, p := range w.rm.agents {
		var ds []float64
		for range 20 {
			t0 := time.Now()
			if _, err := p.client.LinkEnd().List(ctx); err != nil {
				break
			}
			ds = append(ds, ms(time.Since(t0)))
		}
		if len(ds) > 0 {
			slices.Sort(ds)
			out[name] = ds[len(ds)/2]
		}
	}
	return out
}

// controllerDevices lists ctl's interfaces with their kinds; holds is
// false if any is more than its loopback and its management veths (a
// link device, a tap: a link or a VM).
func (w *world) controllerDevices() ([]string, bool) {
	var links []netlink.Link
	err := nsutil.Do(w.rm.ctl, func() error {
		var err error
		links, err = netlink.LinkList()
		return err
	})
	if err != nil {
		return []string{err.Error()}, false
	}
	var devs []string
	holds := true
	for _, l := range links {
		kind := l.Type()
		devs = append(devs, l.Attrs().Name+" ("+kind+")")
		if kind != "veth" && kind != "device" { // "device": the loopback
			holds = false
		}
	}
	return devs, holds
}

var errRemoteScenario = errors.New("-remote")

// checkRemote refuses the scenarios the remote lab does not run yet.
func (o Options) checkRemote() error {
	if !o.Remote {
		return o.checkKill()
	}
	if err := o.checkKill(); err != nil {
		return err
	}
	switch {
	case o.Hypervisor != "qemu":
		return fmt.Errorf("%w: -hypervisor %q: the remote lab drives QEMU through the agents (libvirt: not yet)", errRemoteScenario, o.Hypervisor)
	case o.Link != "wireguard":
		return fmt.Errorf("%w: -link %q: the controller pairs WireGuard link ends only (XFRM ends: not yet)", errRemoteScenario, o.Link)
	}
	return nil
}

// checkKill checks -kill and -kill-at.
func (o Options) checkKill() error {
	if o.Kill == "" {
		if o.KillAt != "" {
			return fmt.Errorf("-kill-at %q: only with -kill", o.KillAt)
		}
		if o.Standby {
			return fmt.Errorf("-standby: only with -kill controller (or -crash)")
		}
		return nil
	}
	if o.Standby && o.Kill != "controller" {
		return fmt.Errorf("-standby: only with -kill controller, not -kill %q", o.Kill)
	}
	if !o.Remote {
		return fmt.Errorf("-kill %q: only with -remote (it kills an agent's or the controller's process)", o.Kill)
	}
	switch o.Kill {
	case "source", "target":
		if o.KillAt != "copy" && o.KillAt != "switchover" {
			return fmt.Errorf("-kill-at %q: want copy or switchover", o.KillAt)
		}
	case "controller":
		if o.Standby && !o.Remote {
			return fmt.Errorf("-standby: only with -remote")
		}
		pt, ok := findPoint(o.KillAt)
		if !ok {
			return fmt.Errorf("-kill-at %q: want one of %s", o.KillAt, strings.Join(pointNames(), ", "))
		}
		if pt.subnet && !o.Subnet {
			return fmt.Errorf("-kill-at %q: only with -subnet (the block runs when the subnet moves)", o.KillAt)
		}
	default:
		return fmt.Errorf("-kill %q: want source, target or controller", o.Kill)
	}
	return nil
}

// keepLogs copies the run's logs (*.log, the controller's journal) from
// dir to dst.
func keepLogs(dir, dst string, log *slog.Logger) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		log.Warn("-logs", "err", err)
		return
	}
	files, _ := filepath.Glob(filepath.Join(dir, "*.log"))
	files = append(files, filepath.Join(dir, "ctl-journal.db"))
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o644); err != nil {
			log.Warn("-logs", "err", err)
		}
	}
}
