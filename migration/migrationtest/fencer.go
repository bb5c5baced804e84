package migrationtest

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sealift/sealift/fence"
)

// Fencer is a fake fence.Fencer for one host.
type Fencer struct {
	Faults
	mu     sync.Mutex
	fences map[string]fence.Fence
}

var _ fence.Fencer = (*Fencer)(nil)

// Fencer returns a fake fencer of host.
func (w *World) Fencer(host string) *Fencer {
	return &Fencer{Faults: Faults{name: "fence:" + host, log: &w.Recorder, methods: methodsOf[fence.Fencer]()}, fences: map[string]fence.Fence{}}
}

func (f *Fencer) Fence(ctx context.Context, s fence.Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if err := f.enter(ctx, "Fence", s.VM+" via="+strings.Join(s.AllowVia, ",")); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fences[s.VM] = fence.Fence{Spec: s, Backend: "fake", Since: time.Now()}
	return nil
}

func (f *Fencer) Lift(ctx context.Context, vm string) error {
	if err := f.enter(ctx, "Lift", vm); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.fences[vm]; !ok {
		return fmt.Errorf("%w: %q", fence.ErrNotFenced, vm)
	}
	delete(f.fences, vm)
	return nil
}

func (f *Fencer) List(ctx context.Context) ([]fence.Fence, error) {
	if err := f.enter(ctx, "List", ""); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]fence.Fence, 0, len(f.fences))
	for _, fc := range f.fences {
		out = append(out, fc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out, nil
}

// Fenced returns the VM's fence and whether there is one.
func (f *Fencer) Fenced(vm string) (fence.Spec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fc, ok := f.fences[vm]
	return fc.Spec, ok
}

// HoldingFencer is a fake Fencer that is also a fence.Holder: every
// fence with Spec.Hold "holds" Held packets, which Release reports as
// sent.
type HoldingFencer struct {
	*Fencer
	// Held is how many packets a held fence gives Release.
	Held int
}

var _ fence.Holder = (*HoldingFencer)(nil)

// HoldingFencer returns a fake holding fencer of host.
func (w *World) HoldingFencer(host string, held int) *HoldingFencer {
	f := w.Fencer(host)
	f.methods = append(f.methods, "Release")
	sort.Strings(f.methods)
	return &HoldingFencer{Fencer: f, Held: held}
}

// Release reports Held packets sent if the VM's fence holds, 0 if not.
func (f *HoldingFencer) Release(ctx context.Context, vm string) (int, error) {
	if err := f.enter(ctx, "Release", vm); err != nil {
		return 0, err
	}
	s, ok := f.Fenced(vm)
	if !ok {
		return 0, fmt.Errorf("%w: %q", fence.ErrNotFenced, vm)
	}
	if !s.Hold {
		return 0, nil
	}
	return f.Held, nil
}
