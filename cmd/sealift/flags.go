package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/tunnel"
)

// commands are sealift's commands, in the order usage lists them.
var commands = []string{"migrate", "batch", "recover", "controller", "status", "inspect", "version", "completion"}

// flags are a command's flags (the migrate ones stay zero for others).
type flags struct {
	config, name, metricsListen                                   *string
	asJSON                                                        *bool
	metricsLinger                                                 time.Duration
	vm, from, to, addrs, peers, fence, subnet, members, via, link string
	maxDowntime, converge                                         time.Duration
	// batch
	vms      vmFlags
	parallel int
}

// vmFlags are batch's repeated -vm NAME=PREFIXES.
type vmFlags []string

func (v *vmFlags) String() string     { return strings.Join(*v, " ") }
func (v *vmFlags) Set(s string) error { *v = append(*v, s); return nil }

// newFlags is command cmd's flag set.
func newFlags(cmd string) (*flag.FlagSet, *flags) {
	fs := flag.NewFlagSet("sealift "+cmd, flag.ContinueOnError)
	f := &flags{}
	f.config = fs.String("config", "", "controller configuration `FILE` (JSON)")
	f.asJSON = fs.Bool("json", false, "print the report(s) as JSON")
	f.name = fs.String("name", "", "this controller's `NAME` in an etcd journal (default: etcd.name, else host name and PID)")
	f.metricsListen = new(string)
	if cmd == "migrate" || cmd == "batch" || cmd == "recover" || cmd == "controller" {
		fs.StringVar(f.metricsListen, "metrics-listen", "", "serve Prometheus metrics at http://`ADDR`/metrics (a management address; plain HTTP, no secrets)")
	}
	if cmd == "migrate" || cmd == "batch" || cmd == "recover" {
		fs.DurationVar(&f.metricsLinger, "metrics-linger", 0, "with -metrics-listen: go on serving this long after the command's work is done, for a last scrape")
	}
	if cmd != "migrate" && cmd != "batch" {
		return fs, f
	}
	if cmd == "migrate" {
		fs.StringVar(&f.vm, "vm", "", "the VM's `NAME`")
		fs.StringVar(&f.addrs, "addr", "", "the VM's addresses, comma-separated `PREFIXES` (10.1.0.10/32)")
		fs.StringVar(&f.members, "members", "", "the subnet's other VMs, comma-separated `NAMES` (with -subnet)")
		fs.StringVar(&f.subnet, "subnet", "", "the VM's subnet `PREFIX` (a dual-stack one: V4PREFIX,V6PREFIX): when its other VMs (-members) are at the target already, the whole subnet moves (redirect tunnel from the routing core until routes converge)")
	} else {
		fs.Var(&f.vms, "vm", "a member: `NAME=PREFIXES` (its addresses, comma-separated); once per VM")
		fs.IntVar(&f.parallel, "parallel", 0, "how many members migrate at once (0: all)")
		fs.StringVar(&f.subnet, "subnet", "", "the members' subnet `PREFIX` (required; a dual-stack one: V4PREFIX,V6PREFIX): one redirect tunnel from the routing core carries each member's addresses from its switchover until routes converge")
	}
	fs.StringVar(&f.from, "from", "", "source environment")
	fs.StringVar(&f.to, "to", "", "target environment")
	fs.StringVar(&f.peers, "peer", "", "the secure side's prefixes it talks to, comma-separated")
	fs.StringVar(&f.link, "link", string(tunnel.WireGuard), "secure link `KIND`: wireguard or ipsec (the agents' -link must serve it)")
	fs.StringVar(&f.fence, "fence", string(migration.FenceAtSwitchover), "fence `MODE`: at-switchover or before-copy")
	fs.DurationVar(&f.maxDowntime, "max-downtime", 0, "allowed stop-and-copy time (0: the hypervisor's default)")
	fs.StringVar(&f.via, "via", "", "the next hop `ADDR` at the routing core that proves the subnet's new place (with -subnet; a dual-stack subnet: V4ADDR,V6ADDR)")
	fs.DurationVar(&f.converge, "converge-timeout", 0, "how long to wait for the routing core to converge (with -subnet; 0: 5 minutes)")
	return fs, f
}

// printCompletion writes a bash completion script (commands, each
// command's flags, -config files, inspect's hosts by name).
func printCompletion(w io.Writer) {
	fmt.Fprintln(w, "# bash completion for sealift: source <(sealift completion bash)")
	fmt.Fprintln(w, "_sealift() {")
	fmt.Fprintln(w, `	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}`)
	fmt.Fprintf(w, "\tif [ \"$COMP_CWORD\" -eq 1 ]; then COMPREPLY=($(compgen -W %q -- \"$cur\")); return; fi\n", strings.Join(commands, " "))
	fmt.Fprintln(w, `	case "$prev" in -config) COMPREPLY=($(compgen -f -- "$cur")); return;; esac`)
	fmt.Fprintln(w, `	case "${COMP_WORDS[1]}" in`)
	for _, c := range commands {
		if c == "version" {
			continue
		}
		var names []string
		if c == "completion" {
			names = []string{"bash"}
		} else {
			fs, _ := newFlags(c)
			fs.VisitAll(func(fl *flag.Flag) { names = append(names, "-"+fl.Name) })
		}
		slices.Sort(names)
		fmt.Fprintf(w, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\"));;\n", c, strings.Join(names, " "))
	}
	fmt.Fprintln(w, "\tesac")
	fmt.Fprintln(w, "}")
	fmt.Fprintln(w, "complete -F _sealift sealift")
}

// runInspect is `sealift inspect -config F [-json] HOST`.
func runInspect(ctx context.Context, cfgPath string, args []string, asJSON bool, stdout, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: sealift inspect -config FILE [-json] HOST")
		return exitUsage
	}
	cfg, err := loadConfig(cfgPath)
	if err == nil {
		var st *HostState
		if st, err = inspect(ctx, cfg, args[0]); err == nil {
			st.print(stdout, asJSON)
			return exitOK
		}
	}
	fmt.Fprintf(stderr, "sealift: inspect: %v\n", err)
	if errors.Is(err, errConfig) {
		return exitUsage
	}
	return exitError
}

// runStatus is `sealift status -config F [-json]`.
func runStatus(ctx context.Context, cfgPath, name string, asJSON bool, stdout, stderr io.Writer) int {
	cfg, err := loadConfig(cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "sealift: status: %v\n", err)
		return exitUsage
	}
	log := slog.New(slog.NewJSONHandler(io.Discard, nil))
	j, err := openJournal(ctx, cfg, cfgPath, name, log)
	if err != nil {
		fmt.Fprintf(stderr, "sealift: status: %v\n", err)
		if errors.Is(err, errConfig) {
			return exitUsage
		}
		return exitError
	}
	defer j.Close()
	sts, err := status(ctx, j)
	if err != nil {
		fmt.Fprintf(stderr, "sealift: status: %v\n", err)
		return exitError
	}
	printStatus(stdout, sts, asJSON)
	return exitOK
}
