// Package migrationtest has in-memory fakes of sealift's five contracts,
// for testing the Migrator's logic and for users who test their own
// control planes: every call is recorded, every call can be made to fail
// (or to "crash" the calling goroutine, as a stopped controller would),
// and a shared World checks that a VM is never active in two places.
//
// The fakes honour their context: a call made with a context that is
// done is recorded and returns the context's error, as a real backend's
// blocking call would.
package migrationtest

import (
	"context"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"sync"
)

// Call is one recorded call, printed as "fake.Method(arg)".
type Call struct {
	Fake   string // "hv:a", "fence:b", "link", "audit:b", "routing"
	Method string
	Arg    string
	// CtxDone: the caller's context had ended when the call came (before
	// any OnCall function ran); the fake refused it and changed nothing.
	CtxDone bool
}

func (c Call) String() string { return c.Fake + "." + c.Method + "(" + c.Arg + ")" }

type faultKind int

const (
	failBefore faultKind = iota // the call fails before doing anything
	failAfter                   // the call does its work, then fails
	crash                       // the calling goroutine ends (runtime.Goexit)
	hook                        // a function runs before the call
)

type fault struct {
	method string
	nth    int // 1-based; 0 = every call
	kind   faultKind
	err    error
	fn     func()
}

// Faults is embedded in every fake: record calls and inject failures.
// Its methods accept only the names of the fake's contract methods
// (e.g. "Lookup", "Fence", "Activate") and panic on any other: a typo
// must not silently inject nothing.
type Faults struct {
	name     string
	methods  []string // the contract's methods, sorted
	after    []string // the methods FailAfter supports
	log      *Recorder
	mu       sync.Mutex
	faults   []fault
	counts   map[string]int
	injected int
}

// methodsOf returns the method names of the interface T (a contract).
func methodsOf[T any]() []string {
	t := reflect.TypeFor[T]()
	names := make([]string, t.NumMethod())
	for i := range names {
		names[i] = t.Method(i).Name
	}
	slices.Sort(names)
	return names
}

func (f *Faults) add(x fault) {
	if !slices.Contains(f.methods, x.method) {
		panic(fmt.Sprintf("migrationtest: %s has no method %q (it has %v)", f.name, x.method, f.methods))
	}
	if x.kind == failAfter && !slices.Contains(f.after, x.method) {
		panic(fmt.Sprintf("migrationtest: %s.%s does not support FailAfter (only %v do)", f.name, x.method, f.after))
	}
	if x.nth < 0 {
		panic(fmt.Sprintf("migrationtest: %s.%s: call number %d is negative", f.name, x.method, x.nth))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, x)
}

// FailOn makes the nth call (1-based; 0 = every call) of method fail
// with err before it does anything.
func (f *Faults) FailOn(method string, nth int, err error) {
	f.add(fault{method: method, nth: nth, kind: failBefore, err: err})
}

// FailAfter makes the nth call of method do its work and then return
// err: a reply lost on its way back (e.g. a Migrate that moved the VM
// but reports a failure). Only some methods support it (the
// hypervisor's Migrate); others make it panic.
func (f *Faults) FailAfter(method string, nth int, err error) {
	f.add(fault{method: method, nth: nth, kind: failAfter, err: err})
}

// CrashOn makes the nth call of method end its goroutine with
// runtime.Goexit before it does anything: what a controller that died
// right there leaves behind.
func (f *Faults) CrashOn(method string, nth int) {
	f.add(fault{method: method, nth: nth, kind: crash})
}

// OnCall runs fn at the start of the nth call of method, before the
// call looks at its context or its faults (e.g. to cancel the caller's
// context at that very step).
func (f *Faults) OnCall(method string, nth int, fn func()) {
	f.add(fault{method: method, nth: nth, kind: hook, fn: fn})
}

// ClearFaults removes the injected faults and OnCall functions.
func (f *Faults) ClearFaults() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = nil
}

// Injected is the number of failures and crashes injected so far (not
// counting OnCall functions): a test can tell that its fault did fire.
func (f *Faults) Injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected
}

// match returns the first fault of kind for the nth call of method and
// counts it as injected; f.mu must be held.
func (f *Faults) match(method string, n int, kind faultKind) *fault {
	for i := range f.faults {
		if x := &f.faults[i]; x.method == method && x.kind == kind && (x.nth == 0 || x.nth == n) {
			if kind != hook {
				f.injected++
			}
			return x
		}
	}
	return nil
}

// enter records a call, runs its OnCall function, applies the faults
// injected before the call and then the context.
func (f *Faults) enter(ctx context.Context, method, arg string) error {
	f.log.add(Call{Fake: f.name, Method: method, Arg: arg, CtxDone: ctx.Err() != nil})
	f.mu.Lock()
	if f.counts == nil {
		f.counts = map[string]int{}
	}
	f.counts[method]++
	n := f.counts[method]
	h := f.match(method, n, hook)
	f.mu.Unlock()
	if h != nil {
		h.fn()
	}
	f.mu.Lock()
	c := f.match(method, n, crash)
	var x *fault
	if c == nil {
		x = f.match(method, n, failBefore)
	}
	f.mu.Unlock()
	switch {
	case c != nil:
		runtime.Goexit()
	case x != nil:
		return fmt.Errorf("%s.%s: injected: %w", f.name, method, x.err)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s.%s: %w", f.name, method, err)
	}
	return nil
}

// leave applies a FailAfter fault to the call of method that is ending
// (numbered as enter numbered it: the latest).
func (f *Faults) leave(method string) error {
	f.mu.Lock()
	x := f.match(method, f.counts[method], failAfter)
	f.mu.Unlock()
	if x == nil {
		return nil
	}
	return fmt.Errorf("%s.%s: injected after the call: %w", f.name, method, x.err)
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
