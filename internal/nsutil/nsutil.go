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
