package fenceconform

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/conform"
)

// broken is a Fencer with some methods replaced (nil: the real one's).
type broken struct {
	fence.Fencer
	fence   func(f fence.Fencer, ctx context.Context, s fence.Spec) error
	lift    func(f fence.Fencer, ctx context.Context, vm string) error
	list    func(f fence.Fencer, ctx context.Context) ([]fence.Fence, error)
	release func(h fence.Holder, ctx context.Context, vm string) (int, error)
}

func (b *broken) Fence(ctx context.Context, s fence.Spec) error {
	if b.fence != nil {
		return b.fence(b.Fencer, ctx, s)
	}
	return b.Fencer.Fence(ctx, s)
}

func (b *broken) Lift(ctx context.Context, vm string) error {
	if b.lift != nil {
		return b.lift(b.Fencer, ctx, vm)
	}
	return b.Fencer.Lift(ctx, vm)
}

func (b *broken) List(ctx context.Context) ([]fence.Fence, error) {
	if b.list != nil {
		return b.list(b.Fencer, ctx)
	}
	return b.Fencer.List(ctx)
}

// brokenHolder is a broken Fencer that holds.
type brokenHolder struct{ *broken }

func (b brokenHolder) Release(ctx context.Context, vm string) (int, error) {
	h := b.Fencer.(fence.Holder)
	if b.release != nil {
		return b.release(h, ctx, vm)
	}
	return h.Release(ctx, vm)
}

// wrap returns b as a Holder when the real Fencer is one.
func wrap(b *broken) fence.Fencer {
	if _, ok := b.Fencer.(fence.Holder); ok {
		return brokenHolder{b}
	}
	return b
}

// fenced reports whether f lists a fence for vm (and it).
func fenced(f fence.Fencer, ctx context.Context, vm string) (fence.Fence, bool) {
	fs, _ := f.List(ctx)
	for _, fc := range fs {
		if fc.VM == vm {
			return fc, true
		}
	}
	return fence.Fence{}, false
}

// mapErr returns a Fencer whose errors (of every method) go through fn.
func mapErr(f fence.Fencer, fn func(error) error) fence.Fencer {
	return wrap(&broken{Fencer: f,
		fence: func(f fence.Fencer, ctx context.Context, s fence.Spec) error { return fn(f.Fence(ctx, s)) },
		lift:  func(f fence.Fencer, ctx context.Context, vm string) error { return fn(f.Lift(ctx, vm)) },
		list: func(f fence.Fencer, ctx context.Context) ([]fence.Fence, error) {
			fs, err := f.List(ctx)
			return fs, fn(err)
		},
		release: func(h fence.Holder, ctx context.Context, vm string) (int, error) {
			n, err := h.Release(ctx, vm)
			return n, fn(err)
		},
	})
}

// fenceWith returns a Fencer whose Fence is fn.
func fenceWith(fn func(f fence.Fencer, ctx context.Context, s fence.Spec) error) func(fence.Fencer) fence.Fencer {
	return func(f fence.Fencer) fence.Fencer { return wrap(&broken{Fencer: f, fence: fn}) }
}

// forgetful lists only what it fenced itself (an earlier process's
// fences are lost).
type forgetful struct {
	mu   sync.Mutex
	mine map[string]bool
}

// lie returns a Fencer that fences with fn(spec) (fn may do anything:
// nil for nothing) but lists each VM with the Spec it was asked for, and
// hides what Lift "removed" if lift is nil: it breaks a promise where
// only the real effect shows it.
func lie(fn func(f fence.Fencer, ctx context.Context, s fence.Spec) error,
	lift func(f fence.Fencer, ctx context.Context, vm string) error) func(fence.Fencer) fence.Fencer {
	return func(f fence.Fencer) fence.Fencer {
		var mu sync.Mutex
		says := map[string]*fence.Spec{}
		b := &broken{Fencer: f,
			fence: func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
				if err := fn(f, ctx, s); err != nil {
					return err
				}
				mu.Lock()
				says[s.VM] = &s
				mu.Unlock()
				return nil
			},
			lift: func(f fence.Fencer, ctx context.Context, vm string) error {
				mu.Lock()
				_, known := says[vm]
				said := known && says[vm] != nil
				mu.Unlock()
				if !said {
					return f.Lift(ctx, vm)
				}
				var err error
				if lift != nil {
					err = lift(f, ctx, vm)
				} else if _, ok := fenced(f, ctx, vm); ok {
					err = f.Lift(ctx, vm)
				}
				mu.Lock()
				says[vm] = nil
				mu.Unlock()
				return err
			},
			list: func(f fence.Fencer, ctx context.Context) ([]fence.Fence, error) {
				fs, err := f.List(ctx)
				mu.Lock()
				defer mu.Unlock()
				out := []fence.Fence{}
				for _, fc := range fs {
					if s, ok := says[fc.VM]; !ok {
						out = append(out, fc)
					} else if s != nil {
						fc.Spec = *s
						out = append(out, fc)
					}
				}
				for vm, s := range says {
					if _, ok := fenced(f, ctx, vm); !ok && s != nil {
						out = append(out, fence.Fence{Spec: *s, Backend: "nft"})
					}
				}
				return out, err
			},
		}
		return wrap(b)
	}
}

// altered fences with change(spec) and lists the Spec it was asked for.
func altered(change func(*fence.Spec)) func(fence.Fencer) fence.Fencer {
	return lie(func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
		change(&s)
		return f.Fence(ctx, s)
	}, nil)
}

var mutants = []conform.Mutant[func(fence.Fencer) fence.Fencer]{
	{Name: "Fence does nothing (and lists the fence)", Caught: []string{"FenceBlocksLiftRestores"},
		Break: lie(func(fence.Fencer, context.Context, fence.Spec) error { return nil }, nil)},
	{Name: "List shows no fence", Caught: []string{"FenceBlocksLiftRestores"},
		Break: func(f fence.Fencer) fence.Fencer {
			return wrap(&broken{Fencer: f, list: func(fence.Fencer, context.Context) ([]fence.Fence, error) { return nil, nil }})
		}},
	{Name: "Lift leaves the fence in place (and lists none)", Caught: []string{"FenceBlocksLiftRestores"},
		Break: lie(func(f fence.Fencer, ctx context.Context, s fence.Spec) error { return f.Fence(ctx, s) },
			func(fence.Fencer, context.Context, string) error { return nil })},
	{Name: "Lift of an absent fence succeeds", Caught: []string{"LiftAbsent"},
		Break: func(f fence.Fencer) fence.Fencer {
			return mapErr(f, func(err error) error {
				if errors.Is(err, fence.ErrNotFenced) {
					return nil
				}
				return err
			})
		}},
	{Name: "the same Spec again is refused", Caught: []string{"FenceAgainChangesNothing"},
		Break: fenceWith(func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
			if _, ok := fenced(f, ctx, s.VM); ok {
				return fmt.Errorf("VM %q is already fenced", s.VM)
			}
			return f.Fence(ctx, s)
		})},
	{Name: "a fenced VM's new Spec is ignored", Caught: []string{"FenceReplaces"},
		Break: fenceWith(func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
			if _, ok := fenced(f, ctx, s.VM); ok {
				return nil
			}
			return f.Fence(ctx, s)
		})},
	{Name: "List forgets an earlier process's fences", Caught: []string{"ListAfterRestart"},
		Break: func(f fence.Fencer) fence.Fencer {
			mem := &forgetful{mine: map[string]bool{}}
			return wrap(&broken{Fencer: f,
				fence: func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
					mem.mu.Lock()
					mem.mine[s.VM] = true
					mem.mu.Unlock()
					return f.Fence(ctx, s)
				},
				list: func(f fence.Fencer, ctx context.Context) ([]fence.Fence, error) {
					fs, err := f.List(ctx)
					mem.mu.Lock()
					defer mem.mu.Unlock()
					return slices.DeleteFunc(fs, func(fc fence.Fence) bool { return !mem.mine[fc.VM] }), err
				}})
		}},
	{Name: "an invalid Spec lifts the VM's fence first", Caught: []string{"InvalidSpecTouchesNothing"},
		Break: fenceWith(func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
			if err := s.Validate(); err != nil {
				if s.VM != "" {
					_ = f.Lift(ctx, s.VM)
				}
				return err
			}
			return f.Fence(ctx, s)
		})},
	{Name: "ErrInvalid names no field", Caught: []string{"InvalidSpecTouchesNothing"},
		Break: fenceWith(func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
			if err := s.Validate(); err != nil {
				return fence.ErrInvalid
			}
			return f.Fence(ctx, s)
		})},
	{Name: "an unknown port is a plain error", Caught: []string{"UnknownPort"},
		Break: func(f fence.Fencer) fence.Fencer {
			return mapErr(f, func(err error) error {
				if errors.Is(err, fence.ErrNoPort) {
					return errors.New(err.Error())
				}
				return err
			})
		}},
	{Name: "fences by MAC and addresses only", Caught: []string{"SpoofingGuestStaysFenced"},
		Break: altered(func(s *fence.Spec) { s.Port = SparePort })},
	{Name: "AllowVia ignored (a full block)", Caught: []string{"AllowVia", "ResetMark"},
		Break: altered(func(s *fence.Spec) { s.AllowVia = nil })},
	{Name: "AllowVia refused after fencing", Caught: []string{"AllowVia"},
		Break: fenceWith(func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
			if len(s.AllowVia) > 0 {
				s.AllowVia = nil
				_ = f.Fence(ctx, s)
				return fmt.Errorf("%w: AllowVia", fence.ErrUnsupported)
			}
			return f.Fence(ctx, s)
		})},
	{Name: "AllowMarks ignored", Caught: []string{"AllowMarks"},
		Break: altered(func(s *fence.Spec) { s.AllowMarks = nil })},
	{Name: "Peers ignored", Caught: []string{"Peers"},
		Break: altered(func(s *fence.Spec) { s.Peers = nil })},
	{Name: "IPv6 Peers ignored", Caught: []string{"PeersIPv6"},
		Break: altered(func(s *fence.Spec) {
			s.Peers = slices.DeleteFunc(slices.Clone(s.Peers), func(p netip.Prefix) bool { return p.Addr().Is6() })
		})},
	{Name: "Lift drops every fence's Peers guard", Caught: []string{"Peers"},
		Break: func(f fence.Fencer) fence.Fencer {
			return wrap(&broken{Fencer: f, lift: func(f fence.Fencer, ctx context.Context, vm string) error {
				if err := f.Lift(ctx, vm); err != nil {
					return err
				}
				fs, err := f.List(ctx)
				for _, fc := range fs { // the others' guards go, their fences stay
					if len(fc.Peers) > 0 {
						s := fc.Spec
						s.Peers = nil
						err = errors.Join(err, f.Fence(ctx, s))
					}
				}
				return err
			}})
		}},
	{Name: "AllowIPsec opens everything", Caught: []string{"AllowIPsecKeepsPlainBlocked"},
		Break: lie(func(f fence.Fencer, ctx context.Context, s fence.Spec) error {
			if s.AllowIPsec {
				return nil
			}
			return f.Fence(ctx, s)
		}, nil)},
	{Name: "Release sends nothing", Caught: []string{"Hold"},
		Break: func(f fence.Fencer) fence.Fencer {
			return wrap(&broken{Fencer: f, release: func(h fence.Holder, ctx context.Context, vm string) (int, error) {
				_, err := h.Release(ctx, vm) // taken, then dropped
				return 0, err
			}})
		}},
	{Name: "Release of an unfenced VM succeeds", Caught: []string{"Hold"},
		Break: func(f fence.Fencer) fence.Fencer {
			return wrap(&broken{Fencer: f, release: func(h fence.Holder, ctx context.Context, vm string) (int, error) {
				n, err := h.Release(ctx, vm)
				if errors.Is(err, fence.ErrNotFenced) {
					return 0, nil
				}
				return n, err
			}})
		}},
	{Name: "a missing host loses its sentinel", Caught: []string{"MissingHost"},
		Break: func(f fence.Fencer) fence.Fencer {
			return mapErr(f, func(err error) error {
				if errors.Is(err, host.ErrNotFound) {
					return errors.New(err.Error())
				}
				return err
			})
		}},
	{Name: "a missing host is not named", Caught: []string{"MissingHost"},
		Break: func(f fence.Fencer) fence.Fencer {
			return mapErr(f, func(err error) error {
				if errors.Is(err, host.ErrNotFound) {
					return host.ErrNotFound
				}
				return err
			})
		}},
}

// TestSuiteCatchesBrokenFencers: each check fails against a Fencer
// (fence/nft, broken on purpose) that breaks the promise it checks.
func TestSuiteCatchesBrokenFencers(t *testing.T) {
	conform.Mutants(t, checks, mutants, func(m conform.Mutant[func(fence.Fencer) fence.Fencer]) Harness {
		return Harness{New: func(_ testing.TB, host string) fence.Fencer { return m.Break(nft.New(nft.WithHost(host))) }}
	})
}
