// Package nsutil runs code inside a named network namespace, the way every
// sealift backend reaches "a host". A host is a netns name as created by
// `ip netns add` (a file under /run/netns), or "" for the current one.
package nsutil

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netns"
)

// ErrNoHost: the named namespace does not exist.
var ErrNoHost = errors.New("netns not found")

// Open returns a handle to the host's namespace; the caller closes it.
// For "" it returns the current thread's namespace.
func Open(host string) (netns.NsHandle, error) {
	if host == "" {
		return netns.Get()
	}
	h, err := netns.GetFromName(host)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netns.None(), fmt.Errorf("%w: %q", ErrNoHost, host)
		}
		return netns.None(), fmt.Errorf("open netns %q: %w", host, err)
	}
	return h, nil
}

// Do runs fn on an OS thread switched into host's namespace and switches
// back before unlocking the thread, so no goroutine ever inherits a thread
// left in another namespace. If switching back fails the thread is left
// locked, and Go discards it when the goroutine ends.
func Do(host string, fn func() error) error {
	if host == "" {
		return fn()
	}
	target, err := Open(host)
	if err != nil {
		return err
	}
	defer target.Close()
	return DoHandle(target, fn)
}

// DoHandle is Do with an open namespace handle.
func DoHandle(target netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	// A fresh goroutine: its thread is discarded if restoring fails.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns: %w", err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("restore netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
