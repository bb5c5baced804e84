package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// Prepare generates fresh keys and creates and configures the devices at
// both ends, down and without routes: the link carries no traffic yet.
// An End.Port of 0 gets the first UDP port from DefaultPort up that is
// free on its host; the returned Link's Spec carries the ports in use.
func (l *Linker) Prepare(ctx context.Context, spec tunnel.Spec) (tunnel.Link, error) {
	if err := l.check(spec); err != nil {
		return tunnel.Link{}, err
	}
	if err := ctx.Err(); err != nil {
		return tunnel.Link{}, err
	}
	lk := &link{}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	l.mu.Lock()
	if _, ok := l.links[spec.ID]; ok {
		l.mu.Unlock()
		return tunnel.Link{}, fmt.Errorf("%w: ID %q", tunnel.ErrExists, spec.ID)
	}
	if _, ok, err := l.loadState(spec.ID); ok || err != nil {
		l.mu.Unlock()
		if err != nil {
			return tunnel.Link{}, err
		}
		return tunnel.Link{}, fmt.Errorf("%w: ID %q has a state file %s (Close it first)", tunnel.ErrExists, spec.ID, l.statePath(spec.ID))
	}
	l.links[spec.ID] = lk
	l.mu.Unlock()

	info, err := l.prepare(ctx, lk, spec)
	if err != nil {
		cerr := l.teardown(lk)
		if cerr == nil {
			cerr = l.removeState(spec.ID)
		}
		l.mu.Lock()
		delete(l.links, spec.ID)
		l.mu.Unlock()
		lk.gone = true
		return tunnel.Link{}, errors.Join(err, cerr)
	}
	return info, nil
}

func (l *Linker) prepare(ctx context.Context, lk *link, spec tunnel.Spec) (tunnel.Link, error) {
	ends := [2]tunnel.End{spec.Secure, spec.Remote}
	names := [2]string{deviceName(spec.ID, roleSecure), deviceName(spec.ID, roleRemote)}
	lk.st = linkState{
		Link: tunnel.Link{Spec: spec, SecureDevice: names[0], RemoteDevice: names[1]},
		Ends: []endState{{Role: roleSecure, Host: spec.Secure.Host}, {Role: roleRemote, Host: spec.Remote.Host}},
	}
	for i, e := range ends {
		if err := nameFree(e.Host, names[i]); err != nil {
			return tunnel.Link{}, err
		}
	}
	if err := l.reserve(lk); err != nil {
		return tunnel.Link{}, err
	}
	spec = lk.st.Link.Spec
	ends = [2]tunnel.End{spec.Secure, spec.Remote}
	mtu := spec.MTU
	if mtu == 0 {
		var err error
		if mtu, err = linkMTU(spec.Secure.Host, spec.Remote.Host, spec.Secure.Underlay, spec.Remote.Underlay); err != nil {
			return tunnel.Link{}, err
		}
		if mtu < 1280 {
			return tunnel.Link{}, fmt.Errorf("%w: underlay MTU leaves %d for the link (< 1280); set MTU", tunnel.ErrInvalid, mtu)
		}
	}
	// Fresh keys for every link, from crypto/rand; never logged or stored.
	var keys [2]wgtypes.Key
	for i := range keys {
		k, err := wgtypes.GeneratePrivateKey()
		if err != nil {
			return tunnel.Link{}, fmt.Errorf("generate key: %w", err)
		}
		keys[i] = k
	}
	var psk *wgtypes.Key
	if l.psk {
		k, err := wgtypes.GenerateKey()
		if err != nil {
			return tunnel.Link{}, fmt.Errorf("generate preshared key: %w", err)
		}
		psk = &k
	}
	if err := ctx.Err(); err != nil {
		return tunnel.Link{}, err
	}
	backend, err := l.createDevices(lk, names, mtu)
	if err != nil {
		return tunnel.Link{}, err
	}
	lk.st.Link.Backend = backend
	for i, e := range ends {
		other := ends[1-i]
		pc := peerConfig{
			private:  keys[i],
			port:     int(e.Port),
			peer:     keys[1-i].PublicKey(),
			psk:      psk,
			endpoint: netip.AddrPortFrom(other.Underlay, other.Port),
			allowed:  other.Protected,
			// No keepalive yet: a device coming up with one sends a
			// handshake initiation at once, and the first end up would
			// lose it to the other end's closed port, leaving the next
			// try to WireGuard's 5 s rekey timeout. Activate turns the
			// keepalives on when both ends listen.
			keepalive: 0,
		}
		if err := configure(e.Host, names[i], pc); err != nil {
			return tunnel.Link{}, err
		}
	}
	if err := l.saveState(&lk.st); err != nil {
		return tunnel.Link{}, err
	}
	// Up and handshaken, nothing routed into it: ready for Activate,
	// which then only routes (it runs while the VM is paused).
	if err := l.bringUp(ctx, lk); err != nil {
		return tunnel.Link{}, err
	}
	l.log.Info("wireguard link prepared", "id", spec.ID, "backend", backend, "mtu", mtu,
		"secure", spec.Secure.Host+"/"+names[0], "remote", spec.Remote.Host+"/"+names[1])
	return lk.st.Link, nil
}

// nameFree fails with tunnel.ErrExists if ifname exists in host or a live
// UAPI socket of that name exists anywhere.
func nameFree(host, ifname string) error {
	h, err := nlHandle(host)
	if err != nil {
		return err
	}
	defer h.Close()
	if linkExists(h, ifname) {
		return fmt.Errorf("%w: %s: interface %s exists", tunnel.ErrExists, hostName(host), ifname)
	}
	if socketLive(ifname) {
		return fmt.Errorf("%w: %s is served by another wireguard-go device", tunnel.ErrExists, uapiPath(ifname))
	}
	return nil
}

// createDevices creates both ends' devices with the configured backend.
// Each device name is recorded in the state file before the device is
// created, so a crash leaves a record Close can act on.
func (l *Linker) createDevices(lk *link, names [2]string, mtu int) (string, error) {
	record := func(i int) error {
		lk.st.Ends[i].Device = names[i]
		return l.saveState(&lk.st)
	}
	forget := func(i int) { lk.st.Ends[i].Device = "" }
	if l.backend == Kernel || l.backend == Auto && !l.noKernel.Load() {
		var err error
		for i := range names {
			if err = record(i); err != nil {
				return "", err
			}
			if err = addKernelDevice(lk.st.Ends[i].Host, names[i], mtu); err != nil {
				forget(i)
				break
			}
		}
		if err == nil {
			return BackendKernel, nil
		}
		if l.backend == Kernel || !errors.Is(err, tunnel.ErrKernelUnsupported) {
			return "", err
		}
		// The kernel will not grow WireGuard while we run (short of a
		// modprobe): don't ask (and autoload-fail) again for every link.
		l.noKernel.Store(true)
		// Auto: one backend per link, so fall back at both ends.
		l.log.Debug("no kernel wireguard, using wireguard-go", "err", err)
		for i := range names {
			if lk.st.Ends[i].Device != "" {
				if err := delLink(lk.st.Ends[i].Host, names[i]); err != nil {
					return "", err
				}
				forget(i)
			}
		}
	}
	for i := range names {
		if err := record(i); err != nil {
			return "", err
		}
		u, err := newUserDevice(lk.st.Ends[i].Host, names[i], mtu, l.log)
		if err != nil {
			forget(i)
			return "", err
		}
		lk.user[i] = u
	}
	return BackendUserspace, nil
}

// reserve picks each end's UDP port (End.Port, or the first port from
// DefaultPort up that is free on the host and not held by another link of
// this Linker) and the remote end's routing table, and claims them.
func (l *Linker) reserve(lk *link) error {
	spec := &lk.st.Link.Spec
	l.mu.Lock()
	defer l.mu.Unlock()
	claimed := func(c string) bool {
		for _, o := range l.links {
			if o != lk && slices.Contains(o.claims, c) {
				return true
			}
		}
		return false
	}
	for _, e := range []struct {
		name string
		end  *tunnel.End
	}{{"Secure", &spec.Secure}, {"Remote", &spec.Remote}} {
		if p := e.end.Port; p != 0 {
			c := fmt.Sprintf("%s\x00port/%d", e.end.Host, p)
			if claimed(c) {
				return fmt.Errorf("%w: %s.Port %d on %s is held by another link", tunnel.ErrExists, e.name, p, hostName(e.end.Host))
			}
			free, err := udpFree(e.end.Host, int(p))
			if err != nil {
				return err
			}
			if !free {
				return fmt.Errorf("%w: %s.Port %d is in use on %s", tunnel.ErrInvalid, e.name, p, hostName(e.end.Host))
			}
			lk.claims = append(lk.claims, c)
			continue
		}
		for p := DefaultPort; p < DefaultPort+1024 && e.end.Port == 0; p++ {
			c := fmt.Sprintf("%s\x00port/%d", e.end.Host, p)
			if claimed(c) {
				continue
			}
			free, err := udpFree(e.end.Host, p)
			if err != nil {
				return err
			}
			if free {
				e.end.Port = uint16(p)
				lk.claims = append(lk.claims, c)
			}
		}
		if e.end.Port == 0 {
			return fmt.Errorf("%s: no free UDP port from %d for %s.Port", hostName(e.end.Host), DefaultPort, e.name)
		}
	}
	host := spec.Remote.Host
	for n := 0; n < 1<<16; n++ {
		t := tableCandidate(spec.ID, n)
		c := fmt.Sprintf("%s\x00table/%d", host, t)
		if claimed(c) {
			continue
		}
		unused, err := tableUnused(host, t)
		if err != nil {
			return err
		}
		if unused {
			lk.st.Ends[1].Table = t
			lk.claims = append(lk.claims, c)
			return nil
		}
	}
	return fmt.Errorf("%s: no free routing table", hostName(host))
}

// udpFree reports whether a UDP socket can bind port in host.
func udpFree(host string, port int) (bool, error) {
	free := false
	err := nsutil.Do(host, func() error {
		c, err := net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		if err == nil {
			free = true
			return c.Close()
		}
		if errors.Is(err, unix.EADDRINUSE) {
			return nil
		}
		return err
	})
	if err != nil {
		return false, fmt.Errorf("%s: probe UDP port %d: %w", hostName(host), port, err)
	}
	return free, nil
}
