// Command lab is sealift's end-to-end lab: it builds a secure environment
// (host A, a routing core, peers) and a different one (host B) out of
// network namespaces joined by an untrusted "wan", boots real QEMU guests
// at A, and migrates them to B through migration.Migrator with the real
// backends while peers keep talking to them; it captures the wan all
// along, runs a plain QEMU migration as the baseline, and reports per
// FIG. 3 step. Run it as root: `make lab`, or
//
//	go run ./examples/lab [-link wireguard|ipsec] [-fence at-switchover|before-copy] [-subnet] [-remote] [-ipv6] [-wan6] [-ns-prefix P] [-json FILE]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

func main() {
	var o Options
	var link, fence, jsonPath, crash string
	var verbose bool
	flag.StringVar(&o.Hypervisor, "hypervisor", "qemu", "hypervisor backend: qemu")
	flag.StringVar(&link, "link", "wireguard", "secure link: wireguard or ipsec (ipsec needs a kernel with ESP)")
	flag.StringVar(&fence, "fence", "at-switchover", "fence mode: at-switchover or before-copy")
	flag.BoolVar(&o.Subnet, "subnet", false, "move a whole subnet (two guests, redirect tunnel, BGP convergence, tunnel removal)")
	flag.IntVar(&o.Parallel, "parallel", 0, "with -vms: how many of the guests migrate at once in the second phase (`N`, 0: all)")
	flag.IntVar(&o.VMs, "vms", 0, "with -subnet: the subnet's `N` guests (2-8) move in one batch (migration.Migrator.RunBatch), all at once, compared in the same run with the same N moved one by one")
	flag.StringVar(&o.Kill, "kill", "", "with -remote: kill the source's or the target's agent (source|target) mid-migration, restart it, recover; or the controller (controller) at -kill-at, and recover")
	flag.StringVar(&o.KillAt, "kill-at", "", "with -kill: when (an agent: copy, while RAM is copied, or switchover, in the switchover hook; default copy. The controller: a crash point, after-310 ... after-390)")
	flag.BoolVar(&o.Standby, "standby", false, "with -kill controller or -crash: the controllers share an etcd journal (3 members) and a standby controller finishes the killed one's migration (else sealift recover on its bbolt journal)")
	flag.StringVar(&o.Logs, "logs", "", "copy the run's logs (-remote: the agents' and the controller's, its journal) to this directory")
	flag.BoolVar(&o.Remote, "remote", false, "run sealift-agent per host and the controller (sealift migrate) in a namespace of its own, over mutual TLS")
	flag.StringVar(&jsonPath, "json", "", "write the JSON report to this file")
	flag.StringVar(&crash, "crash", "", "the controller's crash matrix: one remote lab run per `POINT` (all, or some of "+strings.Join(pointNames(), ",")+"), the controller killed there and another finishing; JSON crash[]")
	flag.BoolVar(&o.IPv6, "ipv6", false, "dual-stack guests, peers and hosts: peers reach the moved guest by IPv4 and IPv6, both judged")
	flag.BoolVar(&o.WAN6, "wan6", false, "the wan is IPv6 only: the link and the migration stream run over the hosts' IPv6 underlay addresses")
	flag.StringVar(&o.NSPrefix, "ns-prefix", "", "start the lab's namespace names (and its site VPN's device names) with this (at most 5 of a-z0-9; default sl): one per lab run at once on the machine")
	flag.BoolVar(&verbose, "v", false, "log the backends' work")
	flag.Parse()
	o.Link, o.Fence = tunnel.Kind(link), migration.FenceMode(fence)
	if (o.Kill == "source" || o.Kill == "target") && o.KillAt == "" {
		o.KillAt = "copy"
	}
	o.Progress = func(s string) { fmt.Println(s) }
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "lab: run as root (network namespaces, nftables, QEMU taps)")
		os.Exit(2)
	}
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if crash != "" {
		code := matrixMain(ctx, o, crash, jsonPath, log)
		stop()
		os.Exit(code)
	}

	res, err := runProgram(ctx, o, log)
	if res != nil {
		fmt.Println()
		fmt.Print(res.Text())
		if jsonPath != "" {
			data, _ := json.MarshalIndent(res, "", "  ")
			if werr := os.WriteFile(jsonPath, append(data, '\n'), 0o644); werr != nil {
				fmt.Fprintln(os.Stderr, "lab:", werr)
				os.Exit(1)
			}
			fmt.Println("report written to", jsonPath)
			pngPath := strings.TrimSuffix(jsonPath, ".json") + ".png"
			if err := writeTimelinePNG(res, pngPath); err != nil {
				fmt.Fprintln(os.Stderr, "lab: timeline picture:", err)
				os.Exit(1)
			} else if len(res.Migrations) > 0 {
				fmt.Println("timeline picture written to", pngPath)
			}
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
	if res == nil || !res.Pass {
		fmt.Fprintln(os.Stderr, "lab: a verdict failed (see FAILED lines above)")
		os.Exit(1)
	}
}

// runProgram runs the lab with a TB that collects cleanups and turns
// Fatalf into an error.
func runProgram(ctx context.Context, o Options, log *slog.Logger) (res *Result, err error) {
	tb := &programTB{log: log}
	defer tb.cleanup()
	defer func() {
		if r := recover(); r != nil {
			if f, ok := r.(fatal); ok {
				err = f
				return
			}
			err = fmt.Errorf("panic: %v\n%s", r, debug.Stack())
		}
	}()
	return Run(ctx, tb, o, log)
}

type fatal struct{ msg string }

func (f fatal) Error() string { return f.msg }

// programTB is lab.TB for a program.
type programTB struct {
	log      *slog.Logger
	cleanups []func()
}

func (t *programTB) Helper()                 {}
func (t *programTB) Cleanup(f func())        { t.cleanups = append(t.cleanups, f) }
func (t *programTB) Logf(f string, a ...any) { t.log.Info(fmt.Sprintf(f, a...)) }
func (t *programTB) Fatalf(f string, a ...any) {
	panic(fatal{fmt.Sprintf(f, a...)})
}
func (t *programTB) cleanup() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}
