package wireguard

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/sealift/sealift/internal/nsutil"
)

// uapiDir is where wireguard-go (and wgctrl's userspace backend) keep the
// UAPI sockets, shared by all network namespaces.
const uapiDir = "/var/run/wireguard"

func uapiPath(ifname string) string { return filepath.Join(uapiDir, ifname+".sock") }

// userDevice is an embedded wireguard-go device over a TUN interface in a
// host's netns, configurable through its UAPI socket (wgctrl).
type userDevice struct {
	name string
	ns   netns.NsHandle
	dev  *device.Device
	uapi net.Listener

	closeOnce sync.Once
	closeErr  error
	done      chan struct{} // closed when the UAPI accept loop ends
}

// nsTUN resolves MTU() inside the netns: the TUN's ioctl looks the
// interface up by name in the calling thread's namespace, and wireguard-go
// calls it from its own goroutines.
type nsTUN struct {
	tun.Device
	ns netns.NsHandle
}

func (t *nsTUN) MTU() (int, error) {
	var mtu int
	err := nsutil.DoHandle(t.ns, func() error {
		var err error
		mtu, err = t.Device.MTU()
		return err
	})
	return mtu, err
}

// nsBind opens its UDP sockets inside the netns: wireguard-go calls Open
// from background goroutines whenever the device comes up.
type nsBind struct {
	conn.Bind
	ns netns.NsHandle
}

func (b *nsBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	var (
		fns    []conn.ReceiveFunc
		actual uint16
	)
	err := nsutil.DoHandle(b.ns, func() error {
		var err error
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}

// newUserDevice creates TUN ifname with mtu in host's netns, starts
// wireguard-go on it (down) and serves its UAPI socket.
func newUserDevice(host, ifname string, mtu int, log *slog.Logger) (_ *userDevice, err error) {
	ns, err := nsutil.Open(host)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			ns.Close()
		}
	}()
	// The UAPI socket first: it fails if another live device owns the name.
	uapiFile, err := ipc.UAPIOpen(ifname)
	if err != nil {
		return nil, fmt.Errorf("uapi socket %s: %w", uapiPath(ifname), err)
	}
	var td tun.Device
	err = nsutil.DoHandle(ns, func() error {
		var err error
		td, err = tun.CreateTUN(ifname, mtu)
		return err
	})
	if err != nil {
		uapiFile.Close()
		os.Remove(uapiPath(ifname))
		return nil, fmt.Errorf("%s: create tun %s: %w", hostName(host), ifname, err)
	}
	wlog := log.With("device", ifname)
	logger := &device.Logger{
		Verbosef: func(format string, args ...any) { wlog.Debug(fmt.Sprintf(format, args...)) },
		Errorf:   func(format string, args ...any) { wlog.Warn(fmt.Sprintf(format, args...)) },
	}
	d := device.NewDevice(&nsTUN{Device: td, ns: ns}, &nsBind{Bind: conn.NewDefaultBind(), ns: ns}, logger)
	uapi, err := ipc.UAPIListen(ifname, uapiFile)
	uapiFile.Close() // UAPIListen dup'ed it
	if err != nil {
		d.Close()
		os.Remove(uapiPath(ifname))
		return nil, fmt.Errorf("uapi listen %s: %w", ifname, err)
	}
	u := &userDevice{name: ifname, ns: ns, dev: d, uapi: uapi, done: make(chan struct{})}
	go u.serve()
	return u, nil
}

func (u *userDevice) serve() {
	defer close(u.done)
	for {
		c, err := u.uapi.Accept()
		if err != nil {
			return
		}
		go u.dev.IpcHandle(c)
	}
}

// up starts the device (opens the UDP socket in the netns, starts peers
// and sends their keepalives).
func (u *userDevice) up() error { return u.dev.Up() }

// close stops the device, removes the TUN and the UAPI socket; safe to
// call twice.
func (u *userDevice) close() error {
	u.closeOnce.Do(func() {
		// The listener unlinks the socket file on close.
		err1 := u.uapi.Close()
		<-u.done
		u.dev.Close() // closes the TUN (the interface disappears) and the bind
		err2 := removeIfExists(uapiPath(u.name))
		u.ns.Close()
		u.closeErr = errors.Join(err1, err2)
	})
	return u.closeErr
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// staleAfter is how old a UAPI socket nobody serves must be before
// sweepStaleSockets removes it: a younger one may belong to a device
// being created (bound, not yet listening).
const staleAfter = 2 * time.Second

// sweepStaleSockets removes the UAPI sockets of sealift's devices that no
// process serves any more: a process that died without closing its
// devices (kill -9, a crash) leaves them, and every UAPI client (wgctrl,
// wg(8)) then lists and dials them. wg(8) drops such sockets the same
// way: a connection refused means no listener.
func sweepStaleSockets(log *slog.Logger) {
	ents, err := os.ReadDir(uapiDir)
	if err != nil {
		return // no directory: nothing to sweep
	}
	var removed []string
	for _, ent := range ents {
		name := ent.Name()
		if !strings.HasPrefix(name, devPrefix) || !strings.HasSuffix(name, ".sock") || ent.Type()&fs.ModeSocket == 0 {
			continue
		}
		path := filepath.Join(uapiDir, name)
		if info, err := ent.Info(); err != nil || time.Since(info.ModTime()) < staleAfter {
			continue
		}
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			continue
		}
		if errors.Is(err, syscall.ECONNREFUSED) && os.Remove(path) == nil {
			removed = append(removed, name)
		}
	}
	if len(removed) > 0 {
		log.Info("removed the UAPI sockets of devices no process serves", "dir", uapiDir, "count", len(removed), "sockets", removed)
	}
}

// socketLive reports whether a process serves the UAPI socket of ifname.
func socketLive(ifname string) bool {
	c, err := net.Dial("unix", uapiPath(ifname))
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func hostName(host string) string {
	if host == "" {
		return "current netns"
	}
	return "netns " + host
}
