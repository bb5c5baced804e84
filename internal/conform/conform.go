// Package conform runs the contracts' conformance suites (fence/fenceconform,
// conn/connconform, routing/routingconform, hypervisor/hvconform,
// tunnel/linkconform): named checks as subtests, and, for the suites' own
// tests, a recorder that runs one check against a deliberately broken
// backend and reports whether the check caught it.
package conform

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
)

// Check is one named check of a suite, run against a harness H.
type Check[H any] struct {
	Name string
	Run  func(t testing.TB, h H)
}

// Run runs each check as a parallel subtest of t (each builds a world of
// its own, so they wait on the kernel's timeouts side by side).
func Run[H any](t *testing.T, checks []Check[H], h H) {
	t.Helper()
	for _, c := range checks {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			c.Run(t, h)
		})
	}
}

// Find returns the check named name (it panics if there is none: a
// suite's own tests name checks that exist).
func Find[H any](checks []Check[H], name string) Check[H] {
	for _, c := range checks {
		if c.Name == name {
			return c
		}
	}
	panic(fmt.Sprintf("conform: no check %q", name))
}

// Recorder is a testing.TB that records failures instead of reporting
// them: Error* and Fail mark it failed, Fatal*/FailNow also end the
// goroutine (as testing does), Skip* mark it skipped and end it. Logs,
// cleanups, temporary directories and the context are the real test's.
type Recorder struct {
	testing.TB
	mu              sync.Mutex
	failed, skipped bool
	msgs            []string
}

func (r *Recorder) record(skip bool, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if skip {
		r.skipped = true
	} else {
		r.failed = true
	}
	if len(args) > 0 {
		r.msgs = append(r.msgs, brief(strings.TrimSpace(fmt.Sprintln(args...))))
	}
}

func (r *Recorder) Error(args ...any)                 { r.record(false, args...) }
func (r *Recorder) Errorf(format string, args ...any) { r.record(false, fmt.Sprintf(format, args...)) }
func (r *Recorder) Fail()                             { r.record(false) }
func (r *Recorder) FailNow()                          { r.record(false); runtime.Goexit() }
func (r *Recorder) Fatal(args ...any)                 { r.record(false, args...); runtime.Goexit() }
func (r *Recorder) Fatalf(format string, args ...any) {
	r.record(false, fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (r *Recorder) Skip(args ...any) { r.record(true, args...); runtime.Goexit() }
func (r *Recorder) Skipf(format string, args ...any) {
	r.record(true, fmt.Sprintf(format, args...))
	runtime.Goexit()
}
func (r *Recorder) SkipNow() { r.record(true); runtime.Goexit() }

func (r *Recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *Recorder) Skipped() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.skipped
}

// Messages returns what the failures said.
func (r *Recorder) Messages() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.msgs...)
}

// Record runs fn with a Recorder on its own goroutine and returns the
// recorder once fn has returned or ended the goroutine.
func Record(t testing.TB, fn func(t testing.TB)) *Recorder {
	r := &Recorder{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn(r)
	}()
	<-done
	return r
}

// Catches fails t unless fn fails when run with a Recorder: a check run
// against a broken backend must catch it. A skip is not a catch.
func Catches(t *testing.T, fn func(t testing.TB)) {
	t.Helper()
	r := Record(t, fn)
	switch {
	case r.Skipped() && !r.Failed():
		t.Fatalf("the check skipped instead of catching the broken backend: %q", r.Messages())
	case !r.Failed():
		t.Fatal("the check passed a broken backend")
	}
	t.Logf("caught: %s", strings.Join(r.Messages(), " | "))
}

// brief keeps what a failure says, without testify's error trace.
func brief(msg string) string {
	if !strings.Contains(msg, "Error Trace:") {
		return msg
	}
	var keep []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		for _, p := range []string{"Error:", "Messages:"} {
			if v, ok := strings.CutPrefix(l, p); ok {
				keep = append(keep, strings.TrimSpace(v))
			}
		}
	}
	return strings.Join(keep, ": ")
}

// Mutant is a deliberately broken backend and the checks of a suite
// that must catch it. Break is what the suite's own test needs to break
// one (typically a func wrapping the real backend).
type Mutant[B any] struct {
	Name   string
	Break  B
	Caught []string // check names
}

// Covered fails t for each check no mutant is caught by: a check that
// nothing can make fail proves nothing.
func Covered[H, B any](t testing.TB, checks []Check[H], mutants []Mutant[B]) {
	t.Helper()
	caught := map[string]bool{}
	for _, m := range mutants {
		for _, c := range m.Caught {
			caught[c] = true
		}
	}
	for _, c := range checks {
		if !caught[c.Name] {
			t.Errorf("check %q: no broken backend shows that it can fail", c.Name)
		}
	}
	for name := range caught {
		found := false
		for _, c := range checks {
			found = found || c.Name == name
		}
		if !found {
			t.Errorf("a mutant names check %q, which does not exist", name)
		}
	}
}

// Mutants runs, as parallel subtests of t, each check that each mutant
// must fail against the harness harness(m) builds for that mutant, and
// asserts that the check catches it; first, Covered.
func Mutants[H, B any](t *testing.T, checks []Check[H], mutants []Mutant[B], harness func(m Mutant[B]) H) {
	t.Helper()
	Covered(t, checks, mutants)
	for _, m := range mutants {
		for _, name := range m.Caught {
			c := Find(checks, name)
			t.Run(m.Name+"/"+name, func(t *testing.T) {
				t.Parallel()
				h := harness(m)
				Catches(t, func(t testing.TB) { c.Run(t, h) })
			})
		}
	}
}
