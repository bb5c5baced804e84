// Package nsutil runs code inside a named network namespace, the way every
// sealift backend reaches "a host". A host is a netns name as created by
// `ip netns add` (a file under /run/netns), or "" for the current one.
package nsutil

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/host"
)

// Open returns a handle to the host's namespace; the caller closes it.
// For "" it returns the current thread's namespace. A host that does not
// exist is an error wrapping host.ErrNotFound that names it.
func Open(name string) (netns.NsHandle, error) {
	if name == "" {
		return netns.Get()
	}
	h, err := netns.GetFromName(name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netns.None(), fmt.Errorf("%w: %q", host.ErrNotFound, name)
		}
		return netns.None(), fmt.Errorf("open netns %q: %w", name, err)
	}
	return h, nil
}

// Check returns nil if the host exists ("" always does), else Open's
// error (host.ErrNotFound naming it).
func Check(name string) error {
	if name == "" {
		return nil
	}
	ns, err := Open(name)
	if err != nil {
		return err
	}
	return ns.Close()
}

// Handle opens a netlink handle bound to the host's namespace for the
// given netlink families (unix.NETLINK_ROUTE, unix.NETLINK_XFRM, ...);
// none means NETLINK_ROUTE alone. (netlink.NewHandleAt with no families
// also opens NETLINK_NETFILTER, which can fail where it is not needed.)
// The caller closes the handle. A missing host is Open's error
// (host.ErrNotFound naming it); a failed socket is wrapped as is, naming
// the host, so callers can test its errno.
func Handle(name string, families ...int) (*netlink.Handle, error) {
	ns, err := Open(name)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := HandleAt(ns, families...)
	if err != nil {
		return nil, fmt.Errorf("netlink in host %q: %w", name, err)
	}
	return h, nil
}

// HandleAt is Handle for a namespace the caller already holds open (and
// still closes): for code that also needs the namespace itself.
func HandleAt(ns netns.NsHandle, families ...int) (*netlink.Handle, error) {
	if len(families) == 0 {
		families = []int{unix.NETLINK_ROUTE}
	}
	return netlink.NewHandleAt(ns, families...)
}

// Do runs fn on an OS thread switched into host's namespace and switches
// back before unlocking the thread, so no goroutine ever inherits a thread
// left in another namespace. If switching back fails the thread is left
// locked, and Go discards it when the goroutine ends (see Create for why
// that is only a last resort).
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

// Create makes a named namespace (a file under /run/netns, as `ip netns
// add` does) with its loopback up, and leaves no thread of the process in
// it: the thread that creates it switches back before it is unlocked.
//
// The usual shortcut, a locked goroutine that creates the namespace and
// exits so that Go discards its thread, is wrong when that thread is the
// main thread: Go cannot end the process's main thread, so it parks it
// for good (runtime.mexit), left inside the new namespace and keeping it
// alive after it is deleted. Nothing chooses the thread a goroutine runs
// on, so that shortcut parks the main thread in one namespace or another
// in nearly every process that uses it.
func Create(name string) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		ns, err := netns.NewNamed(name)
		if err == nil {
			ns.Close()
		}
		// Switch back even after an error: NewNamed may fail after it
		// switched the thread (unshare done, mount failed).
		if rerr := netns.Set(orig); rerr != nil {
			// Leave the thread locked: it dies with this goroutine.
			errc <- errors.Join(err, fmt.Errorf("restore netns: %w", rerr))
			return
		}
		runtime.UnlockOSThread()
		errc <- err
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("create netns %q: %w", name, err)
	}
	if err := loUp(name); err != nil {
		_ = netns.DeleteNamed(name)
		return fmt.Errorf("netns %q: loopback up: %w", name, err)
	}
	return nil
}

func loUp(name string) error {
	h, err := Handle(name)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}
