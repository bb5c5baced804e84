package agent_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
)

// TestRemoteRouteWatcher: routing/netlinkroute in the lab's routing core,
// behind an agent: a redirect is added, listed and removed, Wait returns
// when the real route appears (not before: the redirect's device does not
// count), a Wait whose deadline passes ends with the context's error, and
// ErrNoRedirect survives the network.
func TestRemoteRouteWatcher(t *testing.T) {
	lab.RequireRoot(t)
	w := lab.New(t)
	p := newPKI(t)
	addr := p.serve(t, agent.WithRouteWatcher(netlinkroute.New(netlinkroute.WithHost(w.Core))))
	r := p.dial(t, addr, p.ctl.TLS).RouteWatcher()
	ctx := context.Background()
	moved := netip.MustParsePrefix("10.9.0.0/24")

	red := routing.Redirect{Prefix: moved, Device: "wan0", Via: netip.MustParseAddr("198.51.100.2")}
	require.NoError(t, r.AddRedirect(ctx, red))
	rs, err := r.Redirects(ctx)
	require.NoError(t, err)
	require.Len(t, rs, 1)
	assert.Equal(t, red.Prefix, rs[0].Prefix)
	assert.Equal(t, red.Device, rs[0].Device)

	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	_, err = r.Wait(short, routing.Expect{Prefix: moved, NotDevice: "wan0"})
	cancel()
	assert.ErrorIs(t, err, context.DeadlineExceeded, "the redirect itself must not count")

	done := make(chan error, 1)
	var got routing.Converged
	go func() {
		var err error
		got, err = r.Wait(ctx, routing.Expect{Prefix: moved, NotDevice: "wan0"})
		done <- err
	}()
	time.Sleep(200 * time.Millisecond)
	out, err := lab.Exec(w.Core, "ip", "route", "add", moved.String(), "via", lab.AUplink.String(), "metric", "10")
	require.NoError(t, err, "%s", out)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return after the route appeared")
	}
	assert.Equal(t, moved, got.Route.Prefix)
	assert.Equal(t, lab.AUplink, got.Route.Via)
	assert.Equal(t, "a0", got.Route.Device)

	require.NoError(t, r.RemoveRedirect(ctx, moved))
	assert.ErrorIs(t, r.RemoveRedirect(ctx, moved), routing.ErrNoRedirect)

	raw := agentpb.NewRouteWatcherClient(rawConn(t, p, addr))
	for _, c := range []struct {
		call  func() error
		field string
	}{
		{func() error { _, err := raw.Wait(ctx, &agentpb.Expect{Prefix: "10.9.0.1/24"}); return err }, "has host bits"},
		{func() error { _, err := raw.Wait(ctx, &agentpb.Expect{Prefix: "10.9.0.0/24", Via: "x"}); return err }, `expect.via "x"`},
		{func() error { _, err := raw.AddRedirect(ctx, &agentpb.Redirect{Prefix: "10.9.0.0/24"}); return err }, "Redirect.Device is empty"},
		{func() error {
			_, err := raw.RemoveRedirect(ctx, &agentpb.RemoveRedirectRequest{Prefix: ""})
			return err
		}, `prefix ""`},
	} {
		err := c.call()
		assert.Equal(t, codes.InvalidArgument, status.Code(err), "%v", err)
		assert.ErrorContains(t, err, c.field)
	}
	rs, err = r.Redirects(ctx)
	require.NoError(t, err)
	assert.Empty(t, rs, "a refused request touched the core")
}
