package wireguard

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// TestProxyNDPNeedsIPv6Forwarding: a link that would proxy IPv6 hosts at
// a host that does not forward IPv6 (whose kernel would never answer its
// proxy NDP entries) is refused before anything is made, by the Linker
// and by each End, naming the sysctl; the same link with forwarding on
// (the control) is made.
func TestProxyNDPNeedsIPv6Forwarding(t *testing.T) {
	w := newWorld(t)
	w.dualStack(t)
	if err := lab.Sysctl(w.l.B, "net/ipv6/conf/all/forwarding", "0"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	lk := testLinker(t, nil, WithBackend(Userspace))
	spec := w.spec6()
	refused := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, tunnel.ErrInvalid) || !strings.Contains(err.Error(), "net.ipv6.conf.all.forwarding") {
			t.Errorf("%s at a host without IPv6 forwarding: %v, want ErrInvalid naming net.ipv6.conf.all.forwarding", what, err)
		}
	}
	_, err := lk.Prepare(ctx, spec)
	refused("Prepare", err)
	if links, err := lk.List(ctx); err != nil || len(links) != 0 {
		t.Errorf("after the refused Prepare: links %+v, %v", links, err)
	}
	end := NewEnd(w.l.B, WithBackend(Userspace), WithStateDir(t.TempDir()))
	_, err = end.Open(ctx, spec, tunnel.RemoteRole)
	refused("End.Open", err)
	if ends, err := end.List(ctx); err != nil || len(ends) != 0 {
		t.Errorf("after the refused Open: ends %+v, %v", ends, err)
	}

	if err := lab.Sysctl(w.l.B, "net/ipv6/conf/all/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := lk.Prepare(ctx, spec); err != nil {
		t.Fatalf("control: Prepare with IPv6 forwarding: %v", err)
	}
	closeOnCleanup(t, lk, spec.ID)
}
