package tunnel

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Kinds is one host's LinkEnd over a LinkEnd per kind of link (a host
// that serves WireGuard and XFRM ends, e.g. an agent with both): Open
// goes to the end of the Spec's Kind; Connect, Activate and Verify to
// the first end that knows the link (the others answer ErrNoLink, from
// memory, without touching the host); Close to every end; List gathers
// them all.
type Kinds map[Kind]LinkEnd

var _ LinkEnd = Kinds{}

func (k Kinds) kinds() []Kind {
	ks := make([]Kind, 0, len(k))
	for kind := range k {
		ks = append(ks, kind)
	}
	slices.Sort(ks)
	return ks
}

// Open opens spec on the end of its Kind; a Kind this host does not
// serve is ErrInvalid, naming the kinds it does.
func (k Kinds) Open(ctx context.Context, spec Spec, role Role) (EndState, error) {
	e, ok := k[spec.Kind]
	if !ok {
		var served []string
		for _, kind := range k.kinds() {
			served = append(served, string(kind))
		}
		return EndState{}, fmt.Errorf("%w: Spec.Kind %q: this host serves %s", ErrInvalid, spec.Kind, strings.Join(served, ", "))
	}
	return e.Open(ctx, spec, role)
}

// first calls f on each end in turn until one knows the link.
func (k Kinds) first(id string, f func(LinkEnd) error) error {
	for _, kind := range k.kinds() {
		if err := f(k[kind]); !errors.Is(err, ErrNoLink) {
			return err
		}
	}
	return fmt.Errorf("%w: %q", ErrNoLink, id)
}

func (k Kinds) Connect(ctx context.Context, id string, peer Public) error {
	return k.first(id, func(e LinkEnd) error { return e.Connect(ctx, id, peer) })
}

func (k Kinds) Activate(ctx context.Context, id string) error {
	return k.first(id, func(e LinkEnd) error { return e.Activate(ctx, id) })
}

func (k Kinds) Verify(ctx context.Context, id string) (Proof, error) {
	var p Proof
	err := k.first(id, func(e LinkEnd) error {
		var err error
		p, err = e.Verify(ctx, id)
		return err
	})
	return p, err
}

// Close closes id on every end (closing an absent end is a no-op).
func (k Kinds) Close(ctx context.Context, id string) error {
	var errs []error
	for _, kind := range k.kinds() {
		if err := k[kind].Close(ctx, id); err != nil && !errors.Is(err, ErrNoLink) {
			errs = append(errs, fmt.Errorf("%s: %w", kind, err))
		}
	}
	return errors.Join(errs...)
}

// List lists every end's links.
func (k Kinds) List(ctx context.Context) ([]EndState, error) {
	var out []EndState
	for _, kind := range k.kinds() {
		es, err := k[kind].List(ctx)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", kind, err)
		}
		out = append(out, es...)
	}
	return out, nil
}
