// Command soak is a reproducer for guests that die right after a live
// migration under QEMU/TCG (issue 16, items 6 and 9): it boots sealift's
// test guest (internal/guest) on host A of a lab (internal/lab), migrates
// it A→B→A… through hypervisor/qemu (PrepareIncoming, Migrate, Resume)
// and after every migration checks that the guest lives: its counter
// advances (status port and serial console) and its console shows none of
// "Kernel panic", "not a head", "soft lockup", "BUG:", "Oops". A dead
// guest is replaced by a fresh one at A. It prints a table per variant:
// migrations, deaths, the host's load average, the signatures seen.
//
// A variant is a '+'-joined list of modifiers (see -list), e.g.
//
//	go run ./examples/soak -n 20 -variants plain,ping,ping+hog,ping+dt:10
//
// memcheck compares the source's RAM (pmemsave while it is paused before
// switchover) with the target's (after the stream, before resume): any
// differing page is state QEMU failed to migrate, whatever the guest does
// with it. Run as root; it uses ~1 CPU per guest plus what the variant
// adds (hog: two busy loops).
//
// What it found (issue 16): QEMU 7.2's migration loses guest stores made
// through TCG's TLB after a dirty-bitmap sync (see ramSlackKiB in
// hypervisor/qemu). "ping+dt:10" (pings every 5 ms, downtime limit 10 ms,
// so that syncs are followed by more live passes) reproduces it in a
// large share of migrations; sealift now gives QEMU a RAM size that avoids
// the faulty path, and "memk:131072" (exactly 128 MiB) brings it back:
//
//	go run ./examples/soak -n 20 -variants ping+dt:10+memk:131072,ping+dt:10
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// modifiers change one aspect of a variant.
var modifiers = map[string]string{
	"plain":    "nothing: QEMU 7.2 TCG defaults as sealift launches it, no hook, no TLS",
	"ping":     "ping the guest every 5 ms from host A's and host B's bridge during the whole run",
	"ping1":    "as ping, every 1 ms",
	"hog":      "two busy loops on the host (one per core) during the whole run",
	"cpumax":   "-cpu max (default qemu64)",
	"q35":      "-machine pc-q35-7.2 (default pc-i440fx-7.2)",
	"single":   "-accel tcg,thread=single (default MTTCG)",
	"tls":      "TLS on the migration stream (qemu.WithTLS)",
	"pause":    "pause-before-switchover with a no-op hook",
	"memcheck": "pause-before-switchover; compare source RAM (paused) with target RAM (before resume)",
	"dt1s":     "downtime limit 1 s (default 300 ms)",
	"dt:MS":    "downtime limit MS milliseconds",
	"memk:KIB": "guest RAM of KIB KiB (QEMU -m KIBk after sealift's -m)",
	"offline":  "stop the guest before migrating (non-live migration)",
	"smp2":     "2 vCPUs",
	"k:ARG":    "append ARG to the guest kernel command line (e.g. k:nokaslr, k:idle=poll)",
	"x:ARG":    "append ARG (split at ':') to QEMU's command line, e.g. x:-global:virtio-net-pci.x=y",
	"cap:NAME": "enable migration capability NAME on the source (e.g. cap:x-...) ",
}

type variant struct {
	Name      string
	ping      bool
	pingEvery string
	hog       bool
	cpu       string
	machine   string
	accel     string
	tls       bool
	pause     bool
	memcheck  bool
	downtime  time.Duration
	offline   bool
	memKiB    int
	cpus      int
	kargs     []string
	extra     []string
	caps      []string
}

func parseVariant(s string) (variant, error) {
	v := variant{Name: s}
	for _, m := range strings.Split(s, "+") {
		switch {
		case m == "plain":
		case m == "ping":
			v.ping, v.pingEvery = true, "0.005"
		case m == "ping1":
			v.ping, v.pingEvery = true, "0.001"
		case m == "hog":
			v.hog = true
		case m == "cpumax":
			v.cpu = "max"
		case m == "q35":
			v.machine = "pc-q35-7.2"
		case m == "single":
			v.accel = "tcg,thread=single"
		case m == "tls":
			v.tls = true
		case m == "pause":
			v.pause = true
		case m == "memcheck":
			v.pause, v.memcheck = true, true
		case m == "dt1s":
			v.downtime = time.Second
		case m == "offline":
			v.offline = true
		case m == "smp2":
			v.cpus = 2
		case strings.HasPrefix(m, "dt:"):
			ms, err := strconv.Atoi(m[3:])
			if err != nil {
				return v, fmt.Errorf("modifier %q: %v", m, err)
			}
			v.downtime = time.Duration(ms) * time.Millisecond
		case strings.HasPrefix(m, "memk:"):
			k, err := strconv.Atoi(m[5:])
			if err != nil {
				return v, fmt.Errorf("modifier %q: %v", m, err)
			}
			v.memKiB = k
		case strings.HasPrefix(m, "k:"):
			v.kargs = append(v.kargs, m[2:])
		case strings.HasPrefix(m, "x:"):
			v.extra = append(v.extra, strings.Split(m[2:], ":")...)
		case strings.HasPrefix(m, "cap:"):
			v.caps = append(v.caps, m[4:])
		default:
			return v, fmt.Errorf("unknown modifier %q in variant %q (see -list)", m, s)
		}
	}
	return v, nil
}

// Result is one variant's outcome.
type Result struct {
	Variant    string
	Migrations int
	Deaths     int
	MigFailed  int            // Migrate/Resume errors (not deaths)
	Signatures map[string]int // signature → count
	Load1      []float64      // 1-min load average at each migration
	DiffPages  []int          `json:",omitempty"` // memcheck: differing pages per migration
	Downtime   []int64        // ms, per migration
	Total      []int64        // ms, per migration (QEMU's total time)
	RAMBytes   uint64         // the guest's RAM as QEMU reports it
	Elapsed    time.Duration
	Err        string  `json:",omitempty"`
	Deaths_    []Death `json:"DeathDetails,omitempty"`
}

// Death is one guest lost after a migration.
type Death struct {
	Migration  int
	Direction  string
	Signatures []string
	Console    string // the target console's lines from the migration on (tail)
	DiffPages  int
}

func main() {
	n := flag.Int("n", 20, "migrations per variant")
	variants := flag.String("variants", "plain", "comma-separated variants ('+'-joined modifiers)")
	settle := flag.Duration("settle", 1500*time.Millisecond, "wait after resume before checking the guest")
	jsonPath := flag.String("json", "", "append results (JSON lines) to this file")
	outDir := flag.String("out", "", "keep consoles of dead guests here (default: a temp dir, printed)")
	list := flag.Bool("list", false, "list modifiers")
	verbose := flag.Bool("v", false, "log every migration")
	flag.BoolVar(&debugNet, "debugnet", false, "on a death, print the target host's neighbours, bridge FDB, links and a ping")
	flag.Parse()
	if *list {
		keys := make([]string, 0, len(modifiers))
		for k := range modifiers {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Printf("%-10s %s\n", k, modifiers[k])
		}
		return
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "soak: run as root (network namespaces, taps)")
		os.Exit(2)
	}
	var vs []variant
	for _, s := range strings.Split(*variants, ",") {
		v, err := parseVariant(strings.TrimSpace(s))
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			os.Exit(2)
		}
		vs = append(vs, v)
	}
	if *outDir == "" {
		d, err := os.MkdirTemp("", "sealift-soak-")
		if err != nil {
			fmt.Fprintln(os.Stderr, "soak:", err)
			os.Exit(1)
		}
		*outDir = d
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	img, err := guest.Build(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
	fmt.Printf("soak: %d migrations per variant, consoles of dead guests in %s\n", *n, *outDir)
	var results []Result
	for _, v := range vs {
		r := runVariant(ctx, img, v, *n, *settle, *outDir, *verbose)
		results = append(results, r)
		fmt.Println(r.line())
		if *jsonPath != "" {
			if f, err := os.OpenFile(*jsonPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
				data, _ := json.Marshal(r)
				f.Write(append(data, '\n'))
				f.Close()
			}
		}
		if ctx.Err() != nil {
			break
		}
	}
	fmt.Println()
	printTable(results)
}

func (r Result) line() string {
	return fmt.Sprintf("variant %s: %d migrations, %d deaths, %d failed, load %s, %s%s",
		r.Variant, r.Migrations, r.Deaths, r.MigFailed, loadStr(r.Load1), sigStr(r.Signatures), errStr(r.Err))
}

func errStr(s string) string {
	if s == "" {
		return ""
	}
	return " ERROR: " + s
}

func printTable(rs []Result) {
	tw := tabwriter.NewWriter(os.Stdout, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "variant\tmigrations\tdeaths\tfailed\tload1 mean (min-max)\tdowntime/total ms median\tRAM KiB\tdiff pages (migrations with any)\tsignatures")
	for _, r := range rs {
		dp := "-"
		if len(r.DiffPages) > 0 {
			k := 0
			for _, d := range r.DiffPages {
				if d > 0 {
					k++
				}
			}
			dp = fmt.Sprintf("%d of %d", k, len(r.DiffPages))
		}
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s/%s\t%d\t%s\t%s%s\n", r.Variant, r.Migrations, r.Deaths, r.MigFailed,
			loadStr(r.Load1), median(r.Downtime), median(r.Total), r.RAMBytes>>10, dp, sigStr(r.Signatures), errStr(r.Err))
	}
	tw.Flush()
}

func median(xs []int64) string {
	if len(xs) == 0 {
		return "-"
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return strconv.FormatInt(s[len(s)/2], 10)
}

func loadStr(l []float64) string {
	if len(l) == 0 {
		return "-"
	}
	lo, hi, sum := l[0], l[0], 0.0
	for _, x := range l {
		lo, hi, sum = min(lo, x), max(hi, x), sum+x
	}
	return fmt.Sprintf("%.1f (%.1f-%.1f)", sum/float64(len(l)), lo, hi)
}

func sigStr(m map[string]int) string {
	if len(m) == 0 {
		return "-"
	}
	var ks []string
	for k, c := range m {
		ks = append(ks, fmt.Sprintf("%s ×%d", k, c))
	}
	sort.Strings(ks)
	return strings.Join(ks, "; ")
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	x, _ := strconv.ParseFloat(f[0], 64)
	return x
}

// tb lets internal/lab run outside a test: Fatalf panics with a fatal,
// caught by runVariant; cleanups run in reverse order at the end.
type tb struct {
	cleanups []func()
	log      bool
}

type fatal struct{ msg string }

func (t *tb) Helper()          {}
func (t *tb) Cleanup(f func()) { t.cleanups = append(t.cleanups, f) }
func (t *tb) Fatalf(f string, a ...any) {
	panic(fatal{fmt.Sprintf(f, a...)})
}
func (t *tb) Logf(f string, a ...any) {
	if t.log {
		fmt.Printf(f+"\n", a...)
	}
}
func (t *tb) close() {
	for i := len(t.cleanups) - 1; i >= 0; i-- {
		t.cleanups[i]()
	}
}

// signatures are console lines that mean the guest is dead or dying.
var signatures = []string{"Kernel panic", "not a head", "soft lockup", "BUG:", "Oops", "general protection",
	"Fatal exception", "stack-protector", "double fault", "rcu_sched self-detected stall", "rcu: INFO"}

// scan returns the distinct signatures in console text (the matching
// line's essence, e.g. "Kernel panic - not syncing: Attempted to kill the
// idle task!").
func scan(text string) []string {
	var out []string
	seen := map[string]bool{}
	for _, l := range strings.Split(text, "\n") {
		for _, s := range signatures {
			i := strings.Index(l, s)
			if i < 0 {
				continue
			}
			sig := strings.TrimSpace(l[i:])
			if s == "not a head" {
				sig = "virtio_net: output.N:id N is not a head!"
			}
			if strings.HasPrefix(sig, "BUG: soft lockup") || s == "soft lockup" {
				sig = "BUG: soft lockup"
			}
			if len(sig) > 80 {
				sig = sig[:80]
			}
			if !seen[sig] {
				seen[sig] = true
				out = append(out, sig)
			}
			break
		}
	}
	return out
}

// singleWrapper writes a script that runs QEMU with "-accel tcg" replaced
// by "-accel ACCEL" (sealift's Config.Args always says "-accel tcg").
func accelWrapper(dir, accel string) (string, error) {
	p := filepath.Join(dir, "qemu-accel.sh")
	script := `#!/bin/sh
prev=
for i in $(seq $#); do
  a=$1; shift; o=$a
  if [ "$prev" = "-accel" ] && [ "$a" = "tcg" ]; then a="` + accel + `"; fi
  set -- "$@" "$a"; prev=$o
done
exec qemu-system-x86_64 "$@"
`
	return p, os.WriteFile(p, []byte(script), 0o755)
}

// startBg starts a long-running command in namespace ns (output dropped)
// and returns a function that kills it (by its own pid) and reaps it.
func startBg(ns string, name string, args ...string) (func(), error) {
	cmd := exec.Command(name, args...)
	if err := nsutil.Do(ns, cmd.Start); err != nil {
		return nil, err
	}
	return func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }, nil
}

const guestName = "soak"

var guestAddr = netip.MustParseAddr("10.1.0.50")

var (
	keptDumps int
	debugNet  bool
)

func runVariant(ctx context.Context, img guest.Image, v variant, n int, settle time.Duration, outDir string, verbose bool) (r Result) {
	r = Result{Variant: v.Name, Signatures: map[string]int{}}
	t0 := time.Now()
	t := &tb{log: verbose}
	defer func() {
		if p := recover(); p != nil {
			f, ok := p.(fatal)
			if !ok {
				t.close()
				panic(p)
			}
			r.Err = f.msg
		}
		t.close()
		r.Elapsed = time.Since(t0).Round(time.Second)
	}()
	fail := func(err error) { panic(fatal{err.Error()}) }
	l := lab.New(t)
	dir, err := os.MkdirTemp("", "soak-"+l.Prefix+"-")
	if err != nil {
		fail(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	// The guest reaches its gateway 10.1.0.1 at A and at B by the MAC it
	// learnt first: give both bridges the same one (they share no link),
	// else a guest back at A answers to B's MAC and looks dead.
	if err := sameBridgeMAC(l.A, l.B); err != nil {
		fail(err)
	}
	var opts []qemu.Option
	if v.accel != "" {
		w, err := accelWrapper(dir, v.accel)
		if err != nil {
			fail(err)
		}
		opts = append(opts, qemu.WithQEMU(w))
	}
	if v.tls {
		td := filepath.Join(dir, "tls")
		if err := migtls.NewDir(td, []netip.Addr{lab.AUplink, lab.BUnderlay}); err != nil {
			fail(err)
		}
		opts = append(opts, qemu.WithTLS(td))
	}
	var hs [2]*qemu.Hypervisor
	for i, host := range []string{l.A, l.B} {
		h, err := qemu.New(append([]qemu.Option{qemu.WithHost(host), qemu.WithStateDir(filepath.Join(dir, strconv.Itoa(i)))}, opts...)...)
		if err != nil {
			fail(err)
		}
		t.Cleanup(func() { h.Close() })
		hs[i] = h
	}
	net := guest.Net{Addr: netip.PrefixFrom(guestAddr, 24), Gateway: lab.Gateway, MAC: guest.MAC(guestAddr), Tap: "tapsoak", Bridge: "br0"}
	cfg := img.Config(guestName, net)
	cfg.Machine = v.machine
	if v.cpus > 0 {
		cfg.CPUs = v.cpus
	}
	if v.cpu != "" {
		cfg.Extra = append(cfg.Extra, "-cpu", v.cpu)
	}
	if v.memKiB > 0 {
		cfg.Extra = append(cfg.Extra, "-m", strconv.Itoa(v.memKiB)+"k")
	}
	cfg.Extra = append(cfg.Extra, v.extra...)
	for _, k := range v.kargs {
		cfg.Append += " " + k
	}
	for _, h := range hs {
		if err := h.Define(cfg); err != nil {
			fail(err)
		}
	}
	if v.hog {
		for range 2 {
			stop, err := startBg("", "sh", "-c", "while :; do :; done")
			if err != nil {
				fail(err)
			}
			t.Cleanup(stop)
		}
	}
	boot := func() {
		if _, err := hs[0].Start(ctx, cfg); err != nil {
			fail(err)
		}
		bctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		if _, err := guest.WaitReady(bctx, l.A, guestAddr); err != nil {
			fail(fmt.Errorf("boot: %w", err))
		}
	}
	boot()
	var ms struct {
		Base uint64 `json:"base-memory"`
	}
	if err := hs[0].Process(guestName).QMP().Execute(ctx, "query-memory-size-summary", nil, &ms); err != nil {
		fail(err)
	}
	r.RAMBytes = ms.Base
	if v.ping {
		for _, host := range []string{l.A, l.B} {
			stop, err := startBg(host, "ping", "-n", "-q", "-i", v.pingEvery, guestAddr.String())
			if err != nil {
				fail(fmt.Errorf("ping (apt package iputils-ping): %w", err))
			}
			t.Cleanup(stop)
		}
	}
	hosts := [2]string{l.A, l.B}
	cur := 0
	serialSize := func(h *qemu.Hypervisor) int64 {
		c, _ := h.Config(guestName)
		st, err := os.Stat(c.Serial)
		if err != nil {
			return 0
		}
		return st.Size()
	}
	consoleFrom := func(h *qemu.Hypervisor, off int64) string {
		c, _ := h.Config(guestName)
		b, err := os.ReadFile(c.Serial)
		if err != nil || int64(len(b)) < off {
			return ""
		}
		return string(b[off:])
	}
	for i := 1; i <= n && ctx.Err() == nil; i++ {
		from, to := hs[cur], hs[1-cur]
		dirn := [2]string{"A→B", "B→A"}[cur]
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		before, err := guest.Query(qctx, hosts[cur], guestAddr)
		cancel()
		if err != nil {
			fail(fmt.Errorf("migration %d: guest not answering before it: %w", i, err))
		}
		off := serialSize(to)
		r.Load1 = append(r.Load1, load1())
		vm, err := from.Lookup(ctx, guestName)
		if err != nil {
			fail(err)
		}
		if v.offline {
			if err := from.Process(guestName).QMP().Execute(ctx, "stop", nil, nil); err != nil {
				fail(err)
			}
		}
		if len(v.caps) > 0 {
			var list []map[string]any
			for _, c := range v.caps {
				list = append(list, map[string]any{"capability": c, "state": true})
			}
			if err := from.Process(guestName).QMP().Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil); err != nil {
				fail(err)
			}
		}
		ep, err := to.PrepareIncoming(ctx, vm)
		if err != nil {
			fail(err)
		}
		mopts := hypervisor.MigrateOptions{MaxDowntime: v.downtime}
		srcDump, dstDump := filepath.Join(dir, "src.mem"), filepath.Join(dir, "dst.mem")
		memBytes := uint64(cfg.MemoryMiB) << 20
		if v.memKiB > 0 {
			memBytes = uint64(v.memKiB) << 10
		}
		if v.pause {
			src := from.Process(guestName)
			mopts.AtSwitchover = func(ctx context.Context) error {
				if !v.memcheck {
					return nil
				}
				return src.QMP().Execute(ctx, "pmemsave", map[string]any{"val": 0, "size": memBytes, "filename": srcDump}, nil)
			}
		}
		mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		st, err := from.Migrate(mctx, guestName, ep, mopts)
		cancel()
		if err != nil {
			r.MigFailed++
			fmt.Printf("  %s migration %d %s failed: %v\n", v.Name, i, dirn, err)
			_ = to.Abort(ctx, guestName)
			if v.offline {
				_ = from.Process(guestName).QMP().Execute(ctx, "cont", nil, nil)
			}
			continue
		}
		diff := -1
		if v.memcheck {
			if err := to.Process(guestName).QMP().Execute(ctx, "pmemsave", map[string]any{"val": 0, "size": memBytes, "filename": dstDump}, nil); err != nil {
				fail(err)
			}
			var where []string
			diff, where, err = compareDumps(srcDump, dstDump)
			if err != nil {
				fail(err)
			}
			r.DiffPages = append(r.DiffPages, diff)
			if diff > 0 && keptDumps < 4 {
				keptDumps++
				base := filepath.Join(outDir, fmt.Sprintf("%s-%s-m%d", strings.ReplaceAll(v.Name, ":", "_"), l.Prefix, i))
				_ = os.Rename(srcDump, base+".src.mem")
				_ = os.Rename(dstDump, base+".dst.mem")
				fmt.Printf("  dumps kept: %s.{src,dst}.mem\n", base)
			}
			if diff > 0 {
				fmt.Printf("  %s migration %d %s: %d pages differ between source and target RAM: %s\n", v.Name, i, dirn, diff, strings.Join(where, " "))
			}
		}
		if err := to.Resume(ctx, guestName); err != nil {
			r.MigFailed++
			fmt.Printf("  %s migration %d %s: resume failed: %v\n", v.Name, i, dirn, err)
		}
		r.Migrations++
		r.Downtime = append(r.Downtime, st.Downtime.Milliseconds())
		r.Total = append(r.Total, st.Total.Milliseconds())

		// Alive? Counter on the status port and on the console, no death
		// signature on the console, QEMU still there.
		time.Sleep(settle)
		cctx, cancel := context.WithTimeout(ctx, 6*time.Second)
		after, qerr := guest.WaitCounter(cctx, hosts[1-cur], guestAddr, before.Counter)
		cancel()
		con := consoleFrom(to, off)
		sigs := scan(con)
		last, ok := lastCounter(con)
		consoleAlive := ok && last.Counter > before.Counter
		_, lerr := to.Lookup(ctx, guestName)
		var why []string
		if qerr != nil || after.BootID != before.BootID {
			why = append(why, "status port: "+errOr(qerr, "boot id changed"))
		}
		if !consoleAlive {
			why = append(why, "console counter stopped")
		}
		if lerr != nil {
			why = append(why, "QEMU gone")
		}
		if verbose {
			fmt.Printf("  %s migration %d %s: downtime %v total %v load %.1f counter %d→%d sigs %v %v\n", v.Name, i, dirn,
				st.Downtime, st.Total.Round(time.Millisecond), r.Load1[len(r.Load1)-1], before.Counter, after.Counter, sigs, why)
		}
		if len(sigs) == 0 && len(why) == 0 {
			cur = 1 - cur
			continue
		}
		r.Deaths++
		if len(sigs) == 0 {
			sigs = []string{"(no console signature: " + strings.Join(why, ", ") + ")"}
		}
		for _, s := range sigs {
			r.Signatures[s]++
		}
		d := Death{Migration: i, Direction: dirn, Signatures: sigs, Console: tail(con, 120), DiffPages: diff}
		r.Deaths_ = append(r.Deaths_, d)
		cf := filepath.Join(outDir, fmt.Sprintf("%s-%s-m%d.console", strings.ReplaceAll(v.Name, ":", "_"), l.Prefix, i))
		_ = os.WriteFile(cf, []byte(con), 0o644)
		fmt.Printf("  %s migration %d %s: DEATH %v %v (load %.1f, console %s)\n", v.Name, i, dirn, sigs, why, r.Load1[len(r.Load1)-1], cf)
		if debugNet {
			for _, c := range [][]string{{"ip", "neigh"}, {"bridge", "fdb", "show", "br", "br0"}, {"ip", "-s", "link"}, {"ping", "-c", "2", "-W", "1", guestAddr.String()}} {
				out, _ := lab.Exec(hosts[1-cur], c[0], c[1:]...)
				fmt.Printf("%v:\n%s\n", c, out)
			}
		}
		// Replace the guest: a fresh one at A.
		_ = to.Stop(ctx, guestName)
		_ = to.Abort(ctx, guestName)
		cur = 0
		boot()
	}
	return r
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}

func tail(s string, lines int) string {
	ls := strings.Split(s, "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return strings.Join(ls, "\n")
}

// compareDumps returns how many 4 KiB pages differ between two RAM dumps
// and the first few differing guest-physical addresses.
func compareDumps(a, b string) (int, []string, error) {
	da, err := os.ReadFile(a)
	if err != nil {
		return 0, nil, err
	}
	db, err := os.ReadFile(b)
	if err != nil {
		return 0, nil, err
	}
	if len(da) != len(db) {
		return 0, nil, errors.New("dumps differ in size")
	}
	n := 0
	var where []string
	for off := 0; off < len(da); off += 4096 {
		end := min(off+4096, len(da))
		if !bytes.Equal(da[off:end], db[off:end]) {
			n++
			if len(where) < 8 {
				where = append(where, fmt.Sprintf("%#x", off))
			}
		}
	}
	return n, where, nil
}

// lastCounter returns the last complete counter line of console text.
func lastCounter(con string) (guest.Status, bool) {
	ls := strings.Split(con, "\n")
	for i := len(ls) - 2; i >= 0; i-- { // the last one is unterminated
		if j := strings.Index(ls[i], "sealift-counter "); j >= 0 {
			if s, err := guest.ParseStatus(ls[i][j:]); err == nil {
				return s, true
			}
		}
	}
	return guest.Status{}, false
}

// sameBridgeMAC gives br0 in host b the MAC of br0 in host a.
func sameBridgeMAC(a, b string) error {
	ha, err := lab.Handle(a)
	if err != nil {
		return err
	}
	defer ha.Close()
	la, err := ha.LinkByName("br0")
	if err != nil {
		return err
	}
	hb, err := lab.Handle(b)
	if err != nil {
		return err
	}
	defer hb.Close()
	lb, err := hb.LinkByName("br0")
	if err != nil {
		return err
	}
	return hb.LinkSetHardwareAddr(lb, la.Attrs().HardwareAddr)
}
