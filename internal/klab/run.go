package klab

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/initramfs"
	"github.com/sealift/sealift/internal/lab"
)

// Result is what a guest run produced.
type Result struct {
	// ExitCode is the test binary's exit status in the guest.
	ExitCode int
	// Output is the guest console, one entry per line.
	Output []string
	// Benchmarks are the benchmark result lines the guest printed.
	Benchmarks []Benchmark
}

// Benchmark is one parsed benchmark line of the guest's output.
type Benchmark struct {
	Name    string
	N       int
	Metrics map[string]float64 // unit → value, e.g. "ns/op", "ratio"
}

// Run builds the tests of o.Package, runs them in a full-kernel guest and
// fails t if they fail, if the guest does not report an exit code, or if a
// required module does not load. Inside a guest it skips (no nesting). A
// missing QEMU, kernel or busybox is reported with lab.Missing.
func Run(t testing.TB, o Options) Result {
	t.Helper()
	if InGuest() {
		t.Skip("already inside the klab guest")
	}
	vmlinuz, modDir, err := initramfs.Kernel()
	if err != nil {
		lab.Missing(t, err.Error())
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt package qemu-system-x86)")
	}
	if _, err := os.Stat("/bin/busybox"); err != nil {
		lab.Missing(t, "/bin/busybox (apt package busybox-static)")
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = 10 * time.Minute
		if d, ok := deadline(t); ok {
			timeout = time.Until(d) - 5*time.Second
		}
	}
	if timeout < 30*time.Second {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	base, err := baseImage(modDir, o.Modules)
	if err != nil {
		if strings.Contains(err.Error(), "busybox") {
			lab.Missing(t, err.Error())
		}
		t.Fatalf("klab: base image: %v", err)
	}
	work := t.TempDir()
	img, err := buildImage(ctx, work, base, o, timeout)
	if err != nil {
		t.Fatalf("klab: %v", err)
	}
	cpus, mem := o.CPUs, o.MemoryMiB
	if cpus == 0 {
		cpus = 2
	}
	if mem == 0 {
		mem = 256
	}
	cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max",
		"-smp", strconv.Itoa(cpus), "-m", strconv.Itoa(mem),
		"-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", vmlinuz, "-initrd", img,
		"-append", "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init")
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("klab: %v", err)
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("klab: start qemu: %v", err)
	}
	res := Result{ExitCode: -1}
	res.Output, res.ExitCode = stream(t, out)
	werr := cmd.Wait()
	t.Logf("klab: guest ran %s in %s", o.describe(), time.Since(start).Round(time.Millisecond))
	for _, l := range res.Output {
		if strings.HasPrefix(l, markerInsmod) {
			t.Errorf("klab: required module did not load: %s", strings.TrimPrefix(l, markerInsmod))
		}
	}
	res.Benchmarks = parseBenchmarks(res.Output)
	switch {
	case ctx.Err() != nil:
		t.Fatalf("klab: guest timed out after %s (no exit marker)", timeout)
	case res.ExitCode < 0:
		t.Fatalf("klab: guest printed no %q marker (qemu: %v; %s)", markerExit, werr, strings.TrimSpace(stderr.String()))
	case res.ExitCode != 0:
		t.Fatalf("klab: guest tests failed (exit %d): %s", res.ExitCode, failures(res.Output))
	}
	return res
}

func (o Options) describe() string {
	s := o.Package
	if s == "" {
		s = "."
	}
	if o.Run != "" {
		s += " -run " + o.Run
	}
	if o.Bench != "" {
		s += " -bench " + o.Bench
	}
	return s
}

// deadline is t.Deadline for *testing.T.
func deadline(t testing.TB) (time.Time, bool) {
	if d, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		return d.Deadline()
	}
	return time.Time{}, false
}

// stream copies the guest console into t.Log line by line and returns
// the lines and the last exit marker's code (-1 if none).
func stream(t testing.TB, r io.Reader) ([]string, int) {
	t.Helper()
	code := -1
	var lines []string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		l := strings.TrimRight(sc.Text(), "\r\n")
		lines = append(lines, l)
		t.Log("guest: " + l)
		if i := strings.Index(l, markerExit); i >= 0 {
			if c, err := strconv.Atoi(strings.TrimSpace(l[i+len(markerExit):])); err == nil {
				code = c
			}
		}
	}
	return lines, code
}

// failures lists the failed tests of a -test.v output.
func failures(lines []string) string {
	var f []string
	for _, l := range lines {
		if s := strings.TrimSpace(l); strings.HasPrefix(s, "--- FAIL:") || strings.HasPrefix(s, "panic:") {
			f = append(f, s)
		}
	}
	if len(f) == 0 {
		return "see the guest output above"
	}
	return strings.Join(f, "; ")
}

var benchLine = regexp.MustCompile(`^(Benchmark\S*)\s+(\d+)\s+(.*)$`)

// parseBenchmarks extracts "BenchmarkX-2  N  v unit  v unit" lines.
func parseBenchmarks(lines []string) []Benchmark {
	var bs []Benchmark
	for _, l := range lines {
		m := benchLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[2])
		b := Benchmark{Name: m[1], N: n, Metrics: map[string]float64{}}
		f := strings.Fields(m[3])
		for i := 0; i+1 < len(f); i += 2 {
			if v, err := strconv.ParseFloat(f[i], 64); err == nil {
				b.Metrics[f[i+1]] = v
			}
		}
		bs = append(bs, b)
	}
	return bs
}

// buildImage compiles the test binary and writes base + an appended
// archive with /init, the binary and the package's testdata.
func buildImage(ctx context.Context, work, base string, o Options, timeout time.Duration) (string, error) {
	pkg := o.Package
	if pkg == "" {
		pkg = "."
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(gobin); err != nil {
		if gobin, err = exec.LookPath("go"); err != nil {
			return "", fmt.Errorf("go tool not found: %w", err)
		}
	}
	dirOut, err := exec.CommandContext(ctx, gobin, "list", "-f", "{{.Dir}}", pkg).Output()
	if err != nil {
		return "", fmt.Errorf("go list %s: %w", pkg, exitErr(err))
	}
	pkgDir := strings.TrimSpace(string(dirOut))
	bin := filepath.Join(work, "test.bin")
	args := []string{"test", "-c", "-o", bin}
	if o.Tags != "" {
		args = append(args, "-tags", o.Tags)
	}
	build := exec.CommandContext(ctx, gobin, append(args, pkg)...)
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go test -c %s: %w: %s", pkg, err, out)
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("%s has no test files", pkg)
	}

	b := initramfs.New()
	if err := b.AddHostFile("/klab/test.bin", bin, 0o755); err != nil {
		return "", err
	}
	b.AddDir("/klab/pkg", 0o755)
	td := filepath.Join(pkgDir, "testdata")
	_ = filepath.WalkDir(td, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !d.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(pkgDir, p)
		return b.AddHostFile("/klab/pkg/"+filepath.ToSlash(rel), p, 0o644)
	})
	targs := []string{"-test.v", "-test.timeout", (timeout - 15*time.Second).String()}
	if o.Run != "" {
		targs = append(targs, "-test.run", o.Run)
	}
	if o.Bench != "" {
		targs = append(targs, "-test.bench", o.Bench)
	}
	targs = append(targs, o.Args...)
	env := []string{EnvGuest + "=1"}
	if ci, ok := os.LookupEnv("CI"); ok {
		env = append(env, "CI="+ci)
	}
	env = append(env, o.Env...)
	b.AddFile("/init", 0o755, []byte(initScript(targs, env)))

	img := filepath.Join(work, "initrd")
	f, err := os.Create(img)
	if err != nil {
		return "", err
	}
	defer f.Close()
	bf, err := os.Open(base)
	if err != nil {
		return "", err
	}
	defer bf.Close()
	if _, err := io.Copy(f, bf); err != nil {
		return "", err
	}
	if err := b.Write(f); err != nil {
		return "", err
	}
	return img, f.Close()
}

func exitErr(err error) error {
	if ee, ok := err.(*exec.ExitError); ok {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
