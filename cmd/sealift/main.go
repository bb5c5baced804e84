// Command sealift is a minimal controller: it migrates a VM between
// environments whose hosts each run a sealift agent (cmd/sealift-agent),
// over mutual TLS, with a bbolt journal, and finishes what a stopped
// controller left (recover). With an etcd journal instead of the bbolt
// file, several controllers share the journal: each migration is owned by
// the one running it, and a standby (sealift controller) finishes those
// whose owner died once its lease expired.
//
//	sealift migrate -config F -vm NAME -from ENV -to ENV -addr PREFIX[,...] -peer PREFIX[,...] [-link KIND] [-fence MODE] [-max-downtime D]
//	                [-subnet PREFIX -members NAME[,...] -via ADDR [-converge-timeout D]] [-name N] [-json]
//	sealift batch -config F -from ENV -to ENV -subnet PREFIX -vm NAME=PREFIX[,...] [-vm ...] -peer PREFIX[,...] [-parallel N]
//	                [-via ADDR] [-converge-timeout D] [-link KIND] [-fence MODE] [-max-downtime D] [-name N] [-json]
//	                (a subnet's VMs at once, migration.Migrator.RunBatch; exit code: the worst member's)
//	sealift recover -config F [-name N] [-json]
//	sealift controller -config F [-name N] [-json]   (standby, until SIGINT/SIGTERM; etcd journal only)
//	sealift version
//
// Exit codes: 0 completed (recover: every unfinished migration
// finished), 1 an error before or outside a migration, 2 bad usage (a
// flag, the configuration), 3 rolled back (the VM runs at the source), 4
// stayed fenced (the VM is fenced at the target: look at the reason), 5
// abandoned (the journal keeps it for recover; also: this controller lost
// its ownership of the migration to another), 6 plan refused (the
// Migrator's validation, or the VM is being migrated already: nothing
// touched). Errors name the field and the value.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// Config is the controller's configuration file (JSON).
type Config struct {
	// TLS: the controller's certificate and the operator's CA.
	TLS struct {
		CA   string `json:"ca"`
		Cert string `json:"cert"`
		Key  string `json:"key"`
	} `json:"tls"`
	// Journal is the bbolt journal's path; or Etcd, a journal several
	// controllers share.
	Journal string      `json:"journal,omitempty"`
	Etcd    *EtcdConfig `json:"etcd,omitempty"`
	// Environments by name.
	Environments map[string]EnvConfig `json:"environments"`
}

// EnvConfig is one environment: its host's agent, and its routing
// core's (optional).
type EnvConfig struct {
	// Agent is the agent's address (host:port); Host is the host's name,
	// which its agent certificate carries (sealift://agent/<host>).
	Agent    string      `json:"agent"`
	Host     string      `json:"host"`
	Underlay string      `json:"underlay"`
	Core     *CoreConfig `json:"core,omitempty"`
	// SecureDevices: the environment's own encrypting devices (a site VPN).
	SecureDevices []string `json:"secure_devices,omitempty"`
}

// CoreConfig is a routing core reached through its agent.
type CoreConfig struct {
	Agent    string `json:"agent"`
	Host     string `json:"host"`
	Underlay string `json:"underlay"`
}

// Exit codes.
const (
	exitOK = iota
	exitError
	exitUsage
	exitRolledBack
	exitStayedFenced
	exitAbandoned
	exitRefused
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// run is the command; it returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	original := stderr
	stderr = &lockedWriter{w: stderr} // logs and progress lines come from several goroutines
	if len(args) == 0 {
		fmt.Fprintln(stderr, "usage: sealift "+strings.Join(commands, "|")+" [flags] (sealift CMD -h)")
		return exitUsage
	}
	switch args[0] {
	case "version":
		fmt.Fprintln(stdout, "sealift", version())
		return exitOK
	case "completion":
		if len(args) != 2 || args[1] != "bash" {
			fmt.Fprintln(stderr, "usage: sealift completion bash   (then: source <(sealift completion bash))")
			return exitUsage
		}
		printCompletion(stdout)
		return exitOK
	case "migrate", "batch", "recover", "controller", "status", "inspect":
	default:
		fmt.Fprintf(stderr, "sealift: unknown command %q (want one of %s)\n", args[0], strings.Join(commands, ", "))
		return exitUsage
	}
	fs, f := newFlags(args[0])
	fs.SetOutput(stderr)
	cfgPath, asJSON, name := f.config, f.asJSON, f.name
	if err := fs.Parse(args[1:]); err != nil {
		return exitUsage
	}
	vm, from, to, addrs, peers, fenceMode := f.vm, f.from, f.to, f.addrs, f.peers, f.fence
	subnet, members, via, link := f.subnet, f.members, f.via, f.link
	maxDowntime, converge := f.maxDowntime, f.converge
	if *cfgPath == "" {
		fmt.Fprintln(stderr, "sealift: -config is required")
		return exitUsage
	}
	switch args[0] {
	case "inspect":
		return runInspect(ctx, *cfgPath, fs.Args(), *asJSON, stdout, stderr)
	case "status":
		return runStatus(ctx, *cfgPath, *name, *asJSON, stdout, stderr)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "sealift %s: unexpected argument %q\n", args[0], fs.Arg(0))
		return exitUsage
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	calls := &rpcLog{}
	m, closeAll, err := build(ctx, *cfgPath, *name, log, grpc.WithChainUnaryInterceptor(calls.intercept))
	if err != nil {
		fmt.Fprintf(stderr, "sealift: %v\n", err)
		if errors.Is(err, errConfig) {
			return exitUsage
		}
		return exitError
	}
	defer closeAll()
	if *f.metricsListen != "" {
		stopMetrics, err := serveMetrics(ctx, m, *f.metricsListen, f.metricsLinger, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "sealift: %v\n", err)
			return exitUsage
		}
		defer stopMetrics()
	}

	if args[0] == "controller" {
		return standby(ctx, m, stdout, stderr, *asJSON)
	}
	if args[0] == "recover" {
		events, unsub := m.Subscribe(64)
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ev := range events {
				printEvent(stderr, ev)
			}
		}()
		reps, err := m.Recover(ctx)
		unsub()
		<-done
		for _, r := range reps {
			printReport(stdout, r, *asJSON)
		}
		if err != nil {
			fmt.Fprintf(stderr, "sealift: recover: %v\n", err)
			return exitError
		}
		code := exitOK
		for _, r := range reps {
			code = max(code, outcomeCode(r.Outcome))
		}
		return code
	}

	if args[0] == "batch" {
		return runBatch(ctx, m, f, stdout, stderr, *asJSON)
	}
	plan := migration.Plan{VM: vm, From: from, To: to, Link: tunnel.Kind(link), FenceMode: migration.FenceMode(fenceMode), MaxDowntime: maxDowntime}
	if plan.Addrs, err = prefixes("-addr", addrs); err == nil {
		plan.Peers, err = prefixes("-peer", peers)
	}
	if err == nil {
		plan.Subnet, err = subnetFlags(subnet, members, via, converge)
	}
	if err != nil {
		fmt.Fprintf(stderr, "sealift: %v\n", err)
		return exitUsage
	}
	if err := m.Validate(plan); err != nil {
		fmt.Fprintf(stderr, "sealift: plan refused: %v\n", err)
		return exitRefused
	}
	events, unsub := m.Subscribe(64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		ep := newEventPrinter(stderr, original)
		for ev := range events {
			ep.print(ev)
		}
	}()
	rep, err := m.Run(ctx, plan)
	unsub()
	<-done
	if rep == nil {
		fmt.Fprintf(stderr, "sealift: %v\n", err)
		if errors.Is(err, migration.ErrInvalidPlan) {
			return exitRefused
		}
		if errors.Is(err, migration.ErrBusy) {
			return exitRefused // another migration of the VM runs: nothing touched
		}
		return exitError
	}
	printReport(stdout, rep, *asJSON)
	calls.printSwitchover(stderr, rep)
	if err != nil {
		fmt.Fprintf(stderr, "sealift: %v\n", err)
	}
	return outcomeCode(rep.Outcome)
}

var errConfig = errors.New("configuration")

// loadConfig reads the configuration file (unknown fields refused).
func loadConfig(path string) (Config, error) {
	var cfg Config
	b, err := os.ReadFile(path)
	if err != nil {
		return cfg, fmt.Errorf("%w: -config: %w", errConfig, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return cfg, fmt.Errorf("%w: %s: %w", errConfig, path, err)
	}
	return cfg, nil
}

// build reads the configuration, dials every agent and returns the
// Migrator and a function that closes it all.
func build(ctx context.Context, path, name string, log *slog.Logger, grpcOpts ...grpc.DialOption) (*migration.Migrator, func(), error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Journal == "" && cfg.Etcd == nil {
		return nil, nil, fmt.Errorf("%w: %s: journal is empty (a bbolt file), and there is no etcd", errConfig, path)
	}
	caPEM, cert, err := agentpki.LoadFiles(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, nil, err
	}
	var clients []*agent.Client
	closeAll := func() {
		for _, c := range clients {
			c.Close()
		}
	}
	dial := func(field, addr, host string) (*agent.Client, error) {
		if addr == "" || host == "" {
			return nil, fmt.Errorf("%w: %s: agent and host are required", errConfig, field)
		}
		tc, err := agentpki.ClientConfig(caPEM, cert, host)
		if err != nil {
			return nil, fmt.Errorf("%w: %s.host %q: %w", errConfig, field, host, err)
		}
		c, err := agent.Dial(addr, tc, grpcOpts...)
		if err == nil {
			clients = append(clients, c)
		}
		return c, err
	}
	addr := func(field, s string) (netip.Addr, error) {
		a, err := netip.ParseAddr(s)
		if err != nil {
			return a, fmt.Errorf("%w: %s %q: %w", errConfig, field, s, err)
		}
		return a, nil
	}
	mc := migration.Config{Environments: map[string]migration.Environment{}}
	ends := map[string]tunnel.LinkEnd{}
	fail := func(err error) (*migration.Migrator, func(), error) { closeAll(); return nil, nil, err }
	for name, e := range cfg.Environments {
		field := "environments." + name
		c, err := dial(field, e.Agent, e.Host)
		if err != nil {
			return fail(err)
		}
		env := migration.Environment{Hypervisor: c.Hypervisor(), Auditor: c.ConnAuditor(), Host: e.Host, SecureDevices: e.SecureDevices}
		if env.Underlay, err = addr(field+".underlay", e.Underlay); err != nil {
			return fail(err)
		}
		if env.Fencer, err = c.Fencer(ctx); err != nil {
			return fail(fmt.Errorf("%s: agent %s: %w", field, e.Agent, err))
		}
		ends[e.Host] = c.LinkEnd()
		if e.Core != nil {
			cc, err := dial(field+".core", e.Core.Agent, e.Core.Host)
			if err != nil {
				return fail(err)
			}
			core := &migration.Core{Host: e.Core.Host, Routing: cc.RouteWatcher()}
			if core.Underlay, err = addr(field+".core.underlay", e.Core.Underlay); err != nil {
				return fail(err)
			}
			env.Core = core
			ends[e.Core.Host] = cc.LinkEnd()
		}
		mc.Environments[name] = env
	}
	// One composition for both kinds: each agent opens a link on its own
	// end of the link's kind.
	hosts := tunnel.NewHosts(ends)
	mc.Linkers = map[tunnel.Kind]tunnel.SecureLinker{tunnel.WireGuard: hosts, tunnel.IPsec: hosts}
	j, err := openJournal(ctx, cfg, path, name, log)
	if err != nil {
		return fail(err)
	}
	mc.Journal = j
	mc.Logger = log
	m, err := migration.New(mc)
	if err != nil {
		j.Close()
		return fail(fmt.Errorf("%w: %w", errConfig, err))
	}
	return m, func() { m.Close(); closeAll() }, nil
}

// standby is `sealift controller`: it takes over the migrations whose
// owner died until ctx ends (SIGINT, SIGTERM), printing each report.
func standby(ctx context.Context, m *migration.Migrator, stdout, stderr io.Writer, asJSON bool) int {
	events, unsub := m.Subscribe(64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ev := range events {
			printEvent(stderr, ev)
		}
	}()
	defer func() { unsub(); <-done }()
	fmt.Fprintln(stderr, "standby: watching the journal for migrations whose owner is gone")
	err := m.Standby(ctx, func(rep *migration.Report, err error) {
		if rep != nil {
			fmt.Fprintf(stderr, "took over %s (VM %s): %s %s\n", rep.ID, rep.VM, rep.Outcome, rep.Reason)
			printReport(stdout, rep, asJSON)
		}
		if err != nil {
			fmt.Fprintf(stderr, "sealift: takeover: %v\n", err)
		}
	})
	if errors.Is(err, context.Canceled) {
		return exitOK
	}
	fmt.Fprintf(stderr, "sealift: controller: %v\n", err)
	if errors.Is(err, migration.ErrInvalidPlan) {
		return exitUsage
	}
	return exitError
}

// subnetFlags is the plan's Subnet from -subnet, -members, -via and
// -converge-timeout (nil without -subnet, which the others need).
func subnetFlags(subnet, members, via string, converge time.Duration) (*migration.Subnet, error) {
	if subnet == "" {
		switch {
		case members != "":
			return nil, fmt.Errorf("-members %q: only with -subnet", members)
		case via != "":
			return nil, fmt.Errorf("-via %q: only with -subnet", via)
		case converge != 0:
			return nil, fmt.Errorf("-converge-timeout %v: only with -subnet", converge)
		}
		return nil, nil
	}
	// A dual-stack subnet: "-subnet V4PREFIX,V6PREFIX -via V4ADDR,V6ADDR".
	sn := &migration.Subnet{ConvergeTimeout: converge}
	for _, f := range strings.Split(subnet, ",") {
		p, err := netip.ParsePrefix(strings.TrimSpace(f))
		switch {
		case err != nil:
			return nil, fmt.Errorf("-subnet %q: %w", subnet, err)
		case p.Addr().Is4() && !sn.Prefix.IsValid():
			sn.Prefix = p
		case p.Addr().Is6() && !sn.Prefix6.IsValid():
			sn.Prefix6 = p
		default:
			return nil, fmt.Errorf("-subnet %q: at most one IPv4 and one IPv6 prefix", subnet)
		}
	}
	if !sn.Prefix.IsValid() { // an IPv6-only subnet is Prefix alone
		sn.Prefix, sn.Prefix6 = sn.Prefix6, netip.Prefix{}
	}
	for _, m := range strings.Split(members, ",") {
		if m = strings.TrimSpace(m); m != "" {
			sn.Members = append(sn.Members, m)
		}
	}
	if via != "" {
		for _, f := range strings.Split(via, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(f))
			if err != nil {
				return nil, fmt.Errorf("-via %q: %w", via, err)
			}
			if sn.Prefix6.IsValid() && a.Is6() {
				sn.Via6 = a
			} else if !sn.Via.IsValid() {
				sn.Via = a
			} else {
				return nil, fmt.Errorf("-via %q: one address per -subnet prefix, of its family", via)
			}
		}
	}
	return sn, nil
}

func prefixes(flagName, s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flagName, f, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func outcomeCode(o migration.Outcome) int {
	switch o {
	case migration.Completed:
		return exitOK
	case migration.RolledBack:
		return exitRolledBack
	case migration.StayedFenced:
		return exitStayedFenced
	default:
		return exitAbandoned
	}
}

// eventPrinter prints the Migrator's events: a line each, or, on a
// terminal, the hypervisor's progress as one line rewritten in place.
type eventPrinter struct {
	w     io.Writer
	tty   bool
	block migration.Block
	open  bool // a progress line is on the terminal, unterminated
}

func newEventPrinter(w io.Writer, original io.Writer) *eventPrinter {
	p := &eventPrinter{w: w}
	if f, ok := original.(*os.File); ok {
		if fi, err := f.Stat(); err == nil {
			p.tty = fi.Mode()&os.ModeCharDevice != 0
		}
	}
	return p
}

func (p *eventPrinter) print(ev migration.Event) {
	if pr, ok := ev.(migration.MigrationProgress); ok && p.tty {
		pct := 0.0
		if pr.Total > 0 && pr.Remaining <= pr.Total {
			pct = 100 * float64(pr.Total-pr.Remaining) / float64(pr.Total)
		}
		rate := 0.0
		if s := pr.Elapsed.Seconds(); s > 0 {
			rate = float64(pr.Transferred) / (1 << 20) / s
		}
		fmt.Fprintf(p.w, "\r\033[K[block %d %s] %3.0f%%  %.1f MiB sent, %.1f MiB left, pass %d, %.1f MiB/s",
			int(p.block), p.block, pct, float64(pr.Transferred)/(1<<20), float64(pr.Remaining)/(1<<20), pr.Pass, rate)
		p.open = true
		return
	}
	if p.open {
		fmt.Fprintln(p.w)
		p.open = false
	}
	if s, ok := ev.(migration.StepStarted); ok {
		p.block = s.Block
	}
	printEvent(p.w, ev)
}

func printEvent(w io.Writer, ev migration.Event) {
	switch e := ev.(type) {
	case migration.Started:
		what := "migration"
		if e.Recovery {
			what = "recovery"
		}
		fmt.Fprintf(w, "started: %s %s of VM %s, %s -> %s\n", what, e.ID, e.Plan.VM, e.Plan.From, e.Plan.To)
	case migration.StepStarted:
		fmt.Fprintf(w, "block %d %s ...\n", int(e.Block), e.Block)
	case migration.StepFinished:
		if e.Err != nil {
			fmt.Fprintf(w, "block %d %s failed after %v: %v\n", int(e.Block), e.Block, e.Duration.Round(time.Microsecond), e.Err)
		} else {
			fmt.Fprintf(w, "block %d %s done in %v\n", int(e.Block), e.Block, e.Duration.Round(time.Microsecond))
		}
	case migration.MigrationProgress:
		fmt.Fprintf(w, "migrating: %.1f MiB sent, %.1f MiB left (pass %d)\n",
			float64(e.Transferred)/(1<<20), float64(e.Remaining)/(1<<20), e.Pass)
	case migration.Finished:
		fmt.Fprintf(w, "finished: %s %s\n", e.Outcome, e.Reason)
	case migration.BatchFinished:
		fmt.Fprintf(w, "batch finished: %s %s (members %s)\n", e.ID, e.Outcome, strings.Join(e.Members, ", "))
	}
}

func printReport(w io.Writer, r *migration.Report, asJSON bool) {
	if asJSON {
		b, _ := json.MarshalIndent(r, "", "  ")
		fmt.Fprintln(w, string(b))
		return
	}
	fmt.Fprintf(w, "%s %s: %s", r.VM, r.ID, r.Outcome)
	if r.Reason != "" {
		fmt.Fprintf(w, " (%s)", r.Reason)
	}
	fmt.Fprintf(w, "\n  link %s %s/%s, downtime %v, switchover hook %v, %d packets held and released\n",
		r.Link.Backend, r.Link.SecureDevice, r.Link.RemoteDevice, r.Migration.Downtime,
		r.Migration.SwitchoverDone.Sub(r.Migration.Switchover).Round(time.Microsecond), r.Released)
	for _, s := range r.Steps {
		fmt.Fprintf(w, "  block %d %-20s %v\n", int(s.Block), s.Name, time.Duration(s.Duration).Round(time.Microsecond))
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "  warning: %s\n", warn)
	}
}

// lockedWriter serializes writes.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// rpcLog records the controller's calls to its agents (unary ones: the
// migration stream is one long call).
type rpcLog struct {
	mu    sync.Mutex
	calls []rpcCall
}

type rpcCall struct {
	method, target string
	start          time.Time
	d              time.Duration
}

func (l *rpcLog) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	start := time.Now()
	err := invoker(ctx, method, req, reply, cc, opts...)
	l.mu.Lock()
	l.calls = append(l.calls, rpcCall{method: method, target: cc.Target(), start: start, d: time.Since(start)})
	l.mu.Unlock()
	return err
}

// printSwitchover prints the calls the switchover hook made while the
// VM was paused — from the start of block 325 to the start of block
// 345, by this process's clock — one line each, then their count:
//
//	switchover rpc: /sealift.agent.v1.Fencer/Fence 10.0.0.1:7443 1.234ms
//	switchover rpc: 3 calls
func (l *rpcLog) printSwitchover(w io.Writer, rep *migration.Report) {
	from, ok := rep.Step(migration.BlockPause)
	if !ok {
		return
	}
	to, ok := rep.Step(migration.BlockRestart)
	if !ok {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.calls {
		if ns := c.start.UnixNano(); ns >= from.Start && ns < to.Start {
			fmt.Fprintf(w, "switchover rpc: %s %s %v\n", c.method, c.target, c.d.Round(time.Microsecond))
			n++
		}
	}
	fmt.Fprintf(w, "switchover rpc: %d calls\n", n)
}
