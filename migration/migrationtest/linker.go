package migrationtest

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/sealift/sealift/tunnel"
)

// Linker is a fake tunnel.SecureLinker (both ends in memory).
type Linker struct {
	Faults
	mu    sync.Mutex
	links map[string]*tunnel.Link
}

var _ tunnel.SecureLinker = (*Linker)(nil)

// Linker returns a fake secure linker.
func (w *World) Linker() *Linker {
	return &Linker{Faults: Faults{name: "link", log: &w.Recorder, methods: methodsOf[tunnel.SecureLinker]()}, links: map[string]*tunnel.Link{}}
}

func (l *Linker) Prepare(ctx context.Context, s tunnel.Spec) (tunnel.Link, error) {
	if err := s.Validate(); err != nil {
		return tunnel.Link{}, err
	}
	if err := l.enter(ctx, "Prepare", s.ID); err != nil {
		return tunnel.Link{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.links[s.ID]; ok {
		return *old, nil
	}
	k := &tunnel.Link{Spec: s, Backend: "fake-" + string(s.Kind)}
	if s.Kind == tunnel.WireGuard {
		k.SecureDevice, k.RemoteDevice = "wg"+s.ID+"s", "wg"+s.ID+"r"
	} else {
		k.Policy = []string{fmt.Sprintf("src %v dst %v proto esp mode tunnel", s.Remote.Protected, s.Secure.Protected)}
	}
	l.links[s.ID] = k
	return *k, nil
}

func (l *Linker) Activate(ctx context.Context, id string) error {
	if err := l.enter(ctx, "Activate", id); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.links[id]
	if !ok {
		return fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	k.Active = true
	return nil
}

func (l *Linker) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	if err := l.enter(ctx, "Verify", id); err != nil {
		return tunnel.Proof{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	k, ok := l.links[id]
	if !ok {
		return tunnel.Proof{}, fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	if !k.Active {
		return tunnel.Proof{}, fmt.Errorf("%w: link %q not active", tunnel.ErrNotProven, id)
	}
	return tunnel.Proof{Handshake: time.Now(), TxPackets: 1, RxPackets: 1, Detail: "fake"}, nil
}

func (l *Linker) Close(ctx context.Context, id string) error {
	if err := l.enter(ctx, "Close", id); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.links, id)
	return nil
}

func (l *Linker) List(ctx context.Context) ([]tunnel.Link, error) {
	if err := l.enter(ctx, "List", ""); err != nil {
		return nil, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]tunnel.Link, 0, len(l.links))
	for _, k := range l.links {
		out = append(out, *k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
