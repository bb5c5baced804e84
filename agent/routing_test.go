package agent_test

import (
	"context"
	"net/netip"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/routing"
)

// countingWatcher records calls: refused requests must reach none.
type countingWatcher struct {
	mu    sync.Mutex
	calls int
}

func (w *countingWatcher) hit() { w.mu.Lock(); w.calls++; w.mu.Unlock() }
func (w *countingWatcher) Wait(context.Context, routing.Expect) (routing.Converged, error) {
	w.hit()
	return routing.Converged{}, nil
}
func (w *countingWatcher) AddRedirect(context.Context, routing.Redirect) error { w.hit(); return nil }
func (w *countingWatcher) RemoveRedirect(context.Context, netip.Prefix) error  { w.hit(); return nil }
func (w *countingWatcher) Redirects(context.Context) ([]routing.Redirect, error) {
	w.hit()
	return nil, nil
}

// TestRouteWatcherRefusesBadInput: what a client that skips validation
// sends is refused at the agent with InvalidArgument naming the field,
// and the backend never sees it. (What a remote watcher does for real
// is routingconform's, run behind an agent in conformance_test.go.)
func TestRouteWatcherRefusesBadInput(t *testing.T) {
	p := newPKI(t)
	cw := &countingWatcher{}
	addr := p.serve(t, agent.WithRouteWatcher(cw))
	ctx := context.Background()
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
	cw.mu.Lock()
	assert.Zero(t, cw.calls, "a refused request reached the backend")
	cw.mu.Unlock()
}
