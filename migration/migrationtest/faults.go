// Package migrationtest has in-memory fakes of sealift's five contracts,
// for testing the Migrator's logic and for users who test their own
// control planes: every call is recorded, every call can be made to fail
// (or to "crash" the calling goroutine, as a stopped controller would),
// and a shared World checks that a VM is never active in two places.
package migrationtest

import (
	"fmt"
	"runtime"
	"slices"
	"sync"
)

// Call is one recorded call: "host/Method arg".
type Call struct {
	Fake   string // "hv:secure", "fence:cloud", "link", "audit:cloud", "routing"
	Method string
	Arg    string
}

func (c Call) String() string { return c.Fake + "." + c.Method + "(" + c.Arg + ")" }

type fault struct {
	method string
	nth    int // 1-based; 0 = every call
	err    error
	crash  bool
}

// Faults is embedded in every fake: record calls and inject failures.
type Faults struct {
	name   string
	log    *Recorder
	mu     sync.Mutex
	faults []fault
	counts map[string]int
}

// FailOn makes the nth call (1-based; 0 = every call) of method fail with err.
func (f *Faults) FailOn(method string, nth int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, fault{method: method, nth: nth, err: err})
}

// CrashOn makes the nth call of method end its goroutine with
// runtime.Goexit before it does anything: what a controller that died
// right there leaves behind.
func (f *Faults) CrashOn(method string, nth int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, fault{method: method, nth: nth, crash: true})
}

// Reset clears the injected faults.
func (f *Faults) ClearFaults() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = nil
}

// enter records a call and applies faults.
func (f *Faults) enter(method, arg string) error {
	f.log.add(Call{Fake: f.name, Method: method, Arg: arg})
	f.mu.Lock()
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	f.counts[method]++
	n := f.counts[method]
	var hit *fault
	for i := range f.faults {
		if x := &f.faults[i]; x.method == method && (x.nth == 0 || x.nth == n) {
			hit = x
			break
		}
	}
	f.mu.Unlock()
	if hit == nil {
		return nil
	}
	if hit.crash {
		runtime.Goexit()
	}
	return fmt.Errorf("%s.%s: injected: %w", f.name, method, hit.err)
}

// Recorder keeps the calls of all fakes of a World in order.
type Recorder struct {
	mu    sync.Mutex
	calls []Call
}

func (r *Recorder) add(c Call) {
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
}

// Calls returns the calls so far.
func (r *Recorder) Calls() []Call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}
