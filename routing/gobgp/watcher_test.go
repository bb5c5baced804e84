package gobgp

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netns"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/internal/routetest"
)

var (
	subnet  = netip.MustParsePrefix("10.1.0.0/24")
	siteVia = netip.MustParseAddr("100.64.0.2")
	// waitLong bounds waits that must succeed (never a timing assertion).
	waitLong = 30 * time.Second
)

// localSpeaker builds a speaker without a listener or neighbors in the
// current namespace: its RIB is fed with Announce.
func localSpeaker(ctx context.Context, t testing.TB) *Watcher {
	t.Helper()
	w, err := New(ctx, WithSpeaker(Speaker{AS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), ListenPort: -1}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close(context.Background()) })
	return w
}

type waitResult struct {
	c   routing.Converged
	err error
}

// startWait runs w.Wait in a goroutine and returns once Wait has
// registered its watch and found no matching path yet.
func startWait(ctx context.Context, t testing.TB, w *Watcher, e routing.Expect) <-chan waitResult {
	t.Helper()
	ready := make(chan struct{})
	w.ready = func() { close(ready) }
	res := make(chan waitResult, 1)
	go func() {
		c, err := w.Wait(ctx, e)
		res <- waitResult{c, err}
	}()
	select {
	case <-ready:
	case r := <-res:
		t.Fatalf("Wait returned before the path was announced: %+v, %v", r.c, r.err)
	case <-time.After(waitLong):
		t.Fatal("Wait did not register its watch")
	}
	w.ready = nil
	return res
}

func TestWaitSeesBestPathChange(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	w := localSpeaker(ctx, t)
	// A path through the tunnel's far end is there first: it must not count.
	if err := w.Announce(ctx, subnet, netip.MustParseAddr("100.64.1.2")); err != nil {
		t.Fatal(err)
	}
	if err := w.Announce(ctx, netip.MustParsePrefix("10.1.0.0/16"), siteVia); err != nil {
		t.Fatal(err)
	}
	res := startWait(ctx, t, w, routing.Expect{Prefix: subnet, Via: siteVia})
	if err := w.Announce(ctx, subnet, siteVia); err != nil { // replaces the local path
		t.Fatal(err)
	}
	r := <-res
	if r.err != nil {
		t.Fatal(r.err)
	}
	if r.c.Route.Prefix != subnet || r.c.Route.Via != siteVia || r.c.Route.Protocol != "bgp" || r.c.After <= 0 {
		t.Fatalf("converged: %+v", r.c)
	}
	// Already present: After 0.
	c, err := w.Wait(ctx, routing.Expect{Prefix: subnet, Via: siteVia})
	if err != nil || c.After != 0 {
		t.Fatalf("second Wait: %+v, %v", c, err)
	}
}

func TestWaitWithdrawnNeverComes(t *testing.T) {
	ctx := context.Background()
	w := localSpeaker(ctx, t)
	if err := w.Announce(ctx, subnet, siteVia); err != nil {
		t.Fatal(err)
	}
	if err := w.Withdraw(ctx, subnet, siteVia); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := w.Wait(short, routing.Expect{Prefix: subnet})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait for a withdrawn prefix = %v, want the context's deadline error", err)
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	ctx := context.Background()
	rid := netip.MustParseAddr("192.0.2.1")
	cases := []struct {
		opts []Option
		want string
	}{
		{nil, "neither"},
		{[]Option{WithSpeaker(Speaker{AS: 1, RouterID: rid}), WithServer(localSpeaker(ctx, t).Server())}, "both"},
		{[]Option{WithSpeaker(Speaker{RouterID: rid})}, "Speaker.AS"},
		{[]Option{WithSpeaker(Speaker{AS: 1})}, "Speaker.RouterID"},
		{[]Option{WithSpeaker(Speaker{AS: 1, RouterID: rid, ListenPort: -2})}, "ListenPort -2"},
		{[]Option{WithSpeaker(Speaker{AS: 1, RouterID: rid, Neighbors: []Neighbor{{Address: siteVia}}})}, "Neighbors[0].AS"},
		{[]Option{WithSpeaker(Speaker{AS: 1, RouterID: rid, Neighbors: []Neighbor{{Address: siteVia, AS: 2}, {Address: siteVia, AS: 3}}})}, "twice"},
	}
	for _, c := range cases {
		w, err := New(ctx, c.opts...)
		if !errors.Is(err, routing.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("New: %v, want ErrInvalid naming %q", err, c.want)
		}
		if w != nil {
			w.Close(ctx)
		}
	}
	w := localSpeaker(ctx, t)
	if err := w.Announce(ctx, netip.MustParsePrefix("10.1.0.1/24"), siteVia); !errors.Is(err, routing.ErrInvalid) {
		t.Errorf("Announce with host bits: %v", err)
	}
	if err := w.Announce(ctx, subnet, netip.MustParseAddr("2001:db8::1")); !errors.Is(err, routing.ErrInvalid) {
		t.Errorf("Announce with a v6 next hop for a v4 prefix: %v", err)
	}
	if _, err := w.Wait(ctx, routing.Expect{}); !errors.Is(err, routing.ErrInvalid) {
		t.Errorf("Wait(Expect{}) = %v", err)
	}
	if _, err := w.SyncFIB(ctx, -1); !errors.Is(err, routing.ErrInvalid) || !strings.Contains(err.Error(), "metric -1") {
		t.Errorf("SyncFIB(-1) = %v", err)
	}
}

// An existing server is used as is and left running by Close.
func TestWithServerIsNotOwned(t *testing.T) {
	ctx := context.Background()
	owner := localSpeaker(ctx, t)
	w, err := New(ctx, WithServer(owner.Server()))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := owner.Announce(ctx, subnet, siteVia); err != nil {
		t.Fatalf("server stopped by a watcher that does not own it: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, waitLong)
	defer cancel()
	if _, err := w.Wait(short, routing.Expect{Prefix: subnet, Via: siteVia}); err != nil {
		t.Fatal(err)
	}
}

// TestUnknownHost: New refuses a host (netns) that does not exist, and
// every entry point of a watcher whose host went away fails; both with
// host.ErrNotFound naming it.
func TestUnknownHost(t *testing.T) {
	lab.RequireRoot(t)
	ctx := t.Context()
	gone := lab.NewPrefix() + "-absent"
	sp := Speaker{AS: 65001, RouterID: netip.MustParseAddr("192.0.2.1"), ListenPort: -1}
	_, err := New(ctx, WithHost(gone), WithSpeaker(sp))
	require.ErrorIs(t, err, host.ErrNotFound)
	assert.ErrorContains(t, err, gone)
	_, err = New(ctx, WithHost(gone), WithServer(localSpeaker(ctx, t).Server()))
	assert.ErrorIs(t, err, host.ErrNotFound)

	require.NoError(t, lab.AddNS(gone))
	t.Cleanup(func() { _ = netns.DeleteNamed(gone) })
	w, err := New(ctx, WithHost(gone), WithSpeaker(sp))
	require.NoError(t, err)
	t.Cleanup(func() { _ = w.Close(context.Background()) })
	require.NoError(t, w.Announce(ctx, subnet, siteVia), "the RIB has a path: Wait must not wait for it")
	require.NoError(t, netns.DeleteNamed(gone))
	routetest.MissingHost(t, w, gone, map[string]func(context.Context) error{
		"SyncFIB": func(ctx context.Context) error {
			stop, err := w.SyncFIB(ctx, 0)
			if err == nil {
				stop()
			}
			return err
		},
	})
}
