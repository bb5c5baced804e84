package gobgp

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
	"github.com/vishvananda/netns"
)

// serveHook runs code on GoBGP's Serve goroutine. GoBGP creates its
// listening sockets inside StartBgp, which executes on that goroutine, and
// a socket belongs to the network namespace of the thread that creates
// it. The hook is installed as GoBGP's timing hook, which Serve calls
// after every operation it handles; a function armed with onServe runs in
// the next such call.
type serveHook struct {
	mu      sync.Mutex
	pending func()
}

var _ server.FSMTimingHook = (*serveHook)(nil)

// Observe is called by Serve after each operation.
func (h *serveHook) Observe(server.FSMOperation, time.Duration, time.Duration) {
	h.mu.Lock()
	f := h.pending
	h.pending = nil
	h.mu.Unlock()
	if f != nil {
		f()
	}
}

// onServe runs f on the Serve goroutine and returns once it ran. It
// triggers a harmless management operation so that Serve calls the hook.
func (h *serveHook) onServe(ctx context.Context, s *server.BgpServer, f func()) error {
	done := make(chan struct{})
	h.mu.Lock()
	h.pending = func() { f(); close(done) }
	h.mu.Unlock()
	if err := s.ListPeer(ctx, &api.ListPeerRequest{}, func(*api.Peer) {}); err != nil {
		return err
	}
	// Serve calls the hook right after the operation it just answered.
	<-done
	return nil
}

// inNetns runs fn (a call that makes Serve execute an operation, e.g.
// StartBgp) while the Serve goroutine's thread is in target, and switches
// that thread back afterwards. If switching back fails the thread stays
// locked (and in target) for the life of the speaker, never reused by
// other goroutines.
func (h *serveHook) inNetns(ctx context.Context, s *server.BgpServer, target netns.NsHandle, fn func() error) error {
	var (
		orig     netns.NsHandle
		enterErr error
	)
	err := h.onServe(ctx, s, func() {
		runtime.LockOSThread()
		orig, enterErr = netns.Get()
		if enterErr == nil {
			enterErr = netns.Set(target)
			if enterErr != nil {
				orig.Close()
			}
		}
		if enterErr != nil {
			runtime.UnlockOSThread()
		}
	})
	if err != nil {
		return err
	}
	if enterErr != nil {
		return fmt.Errorf("gobgp: enter netns for the speaker: %w", enterErr)
	}
	fnErr := fn()
	var leaveErr error
	if err := h.onServe(ctx, s, func() {
		defer orig.Close()
		if leaveErr = netns.Set(orig); leaveErr == nil {
			runtime.UnlockOSThread()
		}
	}); err != nil {
		// Serve is gone; its goroutine can no longer run anything.
		leaveErr = err
	}
	if fnErr != nil {
		return fnErr
	}
	if leaveErr != nil {
		return fmt.Errorf("gobgp: leave the speaker's netns: %w", leaveErr)
	}
	return nil
}
