package qemu

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/nsutil"
)

// migrationAddr is the address PrepareIncoming listens on.
func (h *Hypervisor) migrationAddr() (netip.Addr, error) {
	if h.migAddr.IsValid() {
		return h.migAddr, nil
	}
	addr := netip.MustParseAddr("127.0.0.1")
	nh, err := nsutil.Handle(h.host, unix.NETLINK_ROUTE)
	if err != nil {
		return addr, err
	}
	defer nh.Close()
	routes, err := nh.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return addr, err
	}
	for _, r := range routes {
		if (r.Dst != nil && !(r.Dst.IP.IsUnspecified() && isZeroMask(r.Dst.Mask))) || r.LinkIndex == 0 {
			continue
		}
		if r.Src != nil {
			if a, ok := netip.AddrFromSlice(r.Src.To4()); ok {
				return a, nil
			}
		}
		l, err := nh.LinkByIndex(r.LinkIndex)
		if err != nil {
			return addr, err
		}
		as, err := nh.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return addr, err
		}
		if len(as) > 0 {
			if a, ok := netip.AddrFromSlice(as[0].IP.To4()); ok {
				addr = a
			}
		}
		return addr, nil
	}
	return addr, nil
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}

// PrepareIncoming starts the device model defined for vm.Name paused with
// "-incoming defer" and has it listen on the host's migration address
// (port chosen by the kernel). ErrInvalid if no device model is defined
// or it does not match vm (memory, MACs); ErrExists if the host already
// holds a VM or an incoming instance of that name.
func (h *Hypervisor) PrepareIncoming(ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
	if err := hypervisor.ValidName(vm.Name); err != nil {
		return hypervisor.Endpoint{}, err
	}
	cfg, ok := h.Config(vm.Name)
	if !ok {
		return hypervisor.Endpoint{}, fmt.Errorf("%w: no device model defined for vm %q on host %q (call Define)", hypervisor.ErrInvalid, vm.Name, h.host)
	}
	if err := cfg.compatible(vm); err != nil {
		return hypervisor.Endpoint{}, err
	}
	addr, err := h.migrationAddr()
	if err != nil {
		return hypervisor.Endpoint{}, fmt.Errorf("qemu: host %q: migration address: %w", h.host, err)
	}
	if h.tlsDir != "" {
		if err := h.checkServerAddr(addr); err != nil {
			return hypervisor.Endpoint{}, err
		}
	}
	if err := h.awaitExit(ctx, vm.Name); err != nil {
		return hypervisor.Endpoint{}, err
	}
	e, err := h.reserve(vm.Name)
	if err != nil {
		return hypervisor.Endpoint{}, err
	}
	if err := os.WriteFile(incomingPath(h.stateDir, vm.Name), nil, 0o600); err != nil {
		h.release(vm.Name, e)
		return hypervisor.Endpoint{}, fmt.Errorf("qemu: prepare incoming vm %q on host %q: %w", vm.Name, h.host, err)
	}
	p, err := Launch(ctx, cfg, h.launchOpts(true))
	if err != nil {
		os.Remove(incomingPath(h.stateDir, vm.Name))
		h.release(vm.Name, e)
		return hypervisor.Endpoint{}, err
	}
	fail := func(err error) (hypervisor.Endpoint, error) {
		p.Kill()
		os.Remove(incomingPath(h.stateDir, vm.Name))
		h.release(vm.Name, e)
		return hypervisor.Endpoint{}, fmt.Errorf("qemu: prepare incoming vm %q on host %q: %w", vm.Name, h.host, err)
	}
	if err := setCapabilities(ctx, p, map[string]bool{"events": true}); err != nil {
		return fail(err)
	}
	if h.tlsDir != "" {
		if err := setTLS(ctx, p, true, ""); err != nil {
			return fail(err)
		}
		if vm.Identity != "" {
			if err := authorize(ctx, p, vm.Identity); err != nil {
				return fail(err)
			}
		}
	}
	uri := "tcp:" + net.JoinHostPort(addr.String(), "0")
	if err := p.QMP().Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil); err != nil {
		return fail(err)
	}
	var mi migrateInfo
	if err := p.QMP().Execute(ctx, "query-migrate", nil, &mi); err != nil {
		return fail(err)
	}
	if len(mi.SocketAddress) == 0 || mi.SocketAddress[0].Port == "" {
		return fail(errors.New("query-migrate reports no listening socket"))
	}
	sa := mi.SocketAddress[0]
	h.mu.Lock()
	e.p = p
	e.incoming = true
	h.mu.Unlock()
	ep := hypervisor.Endpoint{VM: vm.Name, URI: "tcp:" + net.JoinHostPort(sa.Host, sa.Port)}
	h.log.Info("incoming prepared", "vm", vm.Name, "host", h.host, "uri", ep.URI)
	return ep, nil
}

// Resume waits until the incoming migration of name has completed here
// and starts the guest's CPUs. Resuming a running VM is a no-op.
func (h *Hypervisor) Resume(ctx context.Context, name string) error {
	e, err := h.entry(name)
	if err != nil {
		return err
	}
	p := e.p
	events, unsub := p.QMP().Subscribe()
	defer unsub()
	for {
		st, err := p.Status(ctx)
		if err != nil {
			return fmt.Errorf("qemu: resume vm %q on host %q: %w", name, h.host, err)
		}
		switch st {
		case "running":
			h.setIncoming(e, false)
			return nil
		case "inmigrate":
			// Wait for the stream to finish (MIGRATION completed/failed).
			select {
			case <-events:
				continue
			case <-time.After(100 * time.Millisecond):
				continue // in case an event was missed
			case <-p.Done():
				return fmt.Errorf("%w: vm %q: incoming QEMU on host %q exited: %v", hypervisor.ErrMigration, name, h.host, p.Err())
			case <-ctx.Done():
				return fmt.Errorf("%w: vm %q on host %q is still receiving: %v", hypervisor.ErrState, name, h.host, ctx.Err())
			}
		case "paused", "prelaunch":
			if err := p.QMP().Execute(ctx, "cont", nil, nil); err != nil {
				return fmt.Errorf("qemu: resume vm %q on host %q: %w", name, h.host, err)
			}
			h.setIncoming(e, false)
			h.log.Info("vm resumed", "vm", name, "host", h.host)
			return nil
		default:
			return fmt.Errorf("%w: vm %q on host %q is %q", hypervisor.ErrState, name, h.host, st)
		}
	}
}

func (h *Hypervisor) setIncoming(e *vmEntry, v bool) {
	h.mu.Lock()
	e.incoming = v
	h.mu.Unlock()
	if !v {
		os.Remove(incomingPath(h.stateDir, e.p.Config.Name))
	}
}

// Abort cancels a migration of name. At a source it cancels the running
// migration and makes sure the VM runs there; at a target it kills the
// incoming instance unless it was resumed. No migration: no-op.
func (h *Hypervisor) Abort(ctx context.Context, name string) error {
	if err := hypervisor.ValidName(name); err != nil {
		return err
	}
	h.mu.Lock()
	e, ok := h.vms[name]
	if _, quitting := h.exiting[name]; !ok && !quitting {
		a, err := h.adopt(name) // after a restart: an earlier process's QEMU
		if err != nil {
			h.mu.Unlock()
			return err
		}
		if a != nil {
			h.vms[name], e, ok = a, a, true
		}
	}
	if !ok || e.p == nil {
		h.mu.Unlock()
		return nil
	}
	if e.incoming {
		delete(h.vms, name)
		h.mu.Unlock()
		e.p.Kill()
		os.Remove(incomingPath(h.stateDir, name))
		h.log.Info("incoming discarded", "vm", name, "host", h.host)
		return nil
	}
	if e.migrating {
		e.aborted = true
	}
	h.mu.Unlock()
	if e.p.Exited() {
		return nil
	}
	return cancelAndContinue(ctx, e.p)
}
