// Package nshv is a test-only hypervisor.Hypervisor whose VM is a network
// namespace: the VM's interface (eth0, one end of a veth) never changes,
// and "migrating" it moves the other end, the VM's port, from the
// source host's bridge to the target host's (another namespace), as a
// live migration moves a guest from one host's tap to another's while
// the guest keeps its address, MAC and neighbour table. It lets the real
// Migrator, fences and links be tested end to end without a guest.
//
// One Cluster holds the VM and its hosts; Cluster.Host returns the
// hypervisor.Hypervisor of one host. PrepareIncoming creates the target's
// port (a veth end on the target's bridge, its peer unplugged: the
// incoming instance's tap), so the target's fence finds it. Migrate waits
// PreCopy (the pre-copy phase, with progress), pauses the VM at the
// source, runs the AtSwitchover hook and only then moves the port: the
// target's port is replaced by the VM's real one, under the same name.
// Abort at the target of a migrated but never resumed VM moves the port
// back, so a rollback leaves the VM where it was.
package nshv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// uriScheme prefixes the endpoint URIs: "nshv:" + target namespace.
const uriScheme = "nshv:"

// Cluster is the VM and the hosts it can run on.
type Cluster struct {
	vm, vmNS, vmIf string
	// PreCopy is how long Migrate spends before the switchover (default
	// 200ms), calling OnProgress every 50ms.
	PreCopy time.Duration

	mu    sync.Mutex
	mac   string
	hosts map[string]*Host
	state map[string]hypervisor.State // by host namespace; absent: no instance
	from  string                      // the host the port moved away from (for Abort)
	// abort cancels the migration under way (Abort at its source).
	abort context.CancelCauseFunc
}

// errAbortCalled is the cause of a migration cancelled by Abort.
var errAbortCalled = errors.New("Abort at the source")

// New returns a cluster for the VM name whose interface vmIf lives in
// the namespace vmNS. Add hosts with Host, then Start it at one.
func New(name, vmNS, vmIf string) *Cluster {
	return &Cluster{vm: name, vmNS: vmNS, vmIf: vmIf, PreCopy: 200 * time.Millisecond,
		hosts: map[string]*Host{}, state: map[string]hypervisor.State{}}
}

// Host is one host's hypervisor: the VM's port there is named port and
// sits on bridge.
type Host struct {
	c                *Cluster
	ns, port, bridge string
}

var _ hypervisor.Hypervisor = (*Host)(nil)

// Host adds (or returns) the host ns; the VM's port there is port on
// bridge.
func (c *Cluster) Host(ns, port, bridge string) *Host {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.hosts[ns]; ok {
		return h
	}
	h := &Host{c: c, ns: ns, port: port, bridge: bridge}
	c.hosts[ns] = h
	return h
}

// Start declares the VM running at h, whose port must exist there (the
// peer of the VM's interface). It reads the VM's MAC.
func (c *Cluster) Start(h *Host) error {
	hv, err := lab.Handle(c.vmNS)
	if err != nil {
		return err
	}
	defer hv.Close()
	lk, err := hv.LinkByName(c.vmIf)
	if err != nil {
		return fmt.Errorf("nshv: VM %q: interface %s in %s: %w", c.vm, c.vmIf, c.vmNS, err)
	}
	hh, err := lab.Handle(h.ns)
	if err != nil {
		return err
	}
	defer hh.Close()
	if _, err := hh.LinkByName(h.port); err != nil {
		return fmt.Errorf("nshv: VM %q: port %s at %s: %w", c.vm, h.port, h.ns, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.mac = lk.Attrs().HardwareAddr.String()
	c.state[h.ns] = hypervisor.Running
	return nil
}

// At returns the host whose bridge the VM's port is on ("" if none is
// known yet).
func (c *Cluster) At() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for ns, st := range c.state {
		if st.Active() {
			return ns
		}
	}
	return ""
}

func (h *Host) notFound(name string) error {
	return fmt.Errorf("%w: %q at %s", hypervisor.ErrNotFound, name, h.ns)
}

// Lookup returns the VM's instance on this host.
func (h *Host) Lookup(ctx context.Context, name string) (hypervisor.VM, error) {
	if err := hypervisor.ValidName(name); err != nil {
		return hypervisor.VM{}, err
	}
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.state[h.ns]
	if name != c.vm || !ok {
		return hypervisor.VM{}, h.notFound(name)
	}
	return hypervisor.VM{Name: name, Host: h.ns, State: st, NICs: []hypervisor.NIC{{MAC: c.mac, Port: h.port}}}, nil
}

// PrepareIncoming creates the incoming instance's port on this host's
// bridge (its peer unplugged) and returns the endpoint.
func (h *Host) PrepareIncoming(ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
	if err := hypervisor.ValidName(vm.Name); err != nil {
		return hypervisor.Endpoint{}, err
	}
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if vm.Name != c.vm {
		return hypervisor.Endpoint{}, fmt.Errorf("%w: nshv knows only VM %q, not %q", hypervisor.ErrInvalid, c.vm, vm.Name)
	}
	if st, ok := c.state[h.ns]; ok && st.Active() {
		return hypervisor.Endpoint{}, fmt.Errorf("%w: %q at %s", hypervisor.ErrExists, vm.Name, h.ns)
	}
	if _, ok := c.state[h.ns]; !ok {
		if err := h.addPlaceholder(); err != nil {
			return hypervisor.Endpoint{}, err
		}
	}
	c.state[h.ns] = hypervisor.Incoming
	return hypervisor.Endpoint{VM: vm.Name, URI: uriScheme + h.ns}, nil
}

// addPlaceholder creates the port on the bridge, its peer down.
func (h *Host) addPlaceholder() error {
	hh, err := lab.Handle(h.ns)
	if err != nil {
		return err
	}
	defer hh.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: h.port}, PeerName: tmpName("in")}
	if err := hh.LinkAdd(v); err != nil {
		return fmt.Errorf("nshv: %s: add port %s: %w", h.ns, h.port, err)
	}
	if err := lab.Enslave(h.ns, h.port, h.bridge); err != nil {
		return err
	}
	lk, err := hh.LinkByName(h.port)
	if err == nil {
		err = hh.LinkSetUp(lk)
	}
	return err
}

// Migrate moves the VM from this host to the endpoint's host: pre-copy,
// pause, the AtSwitchover hook, then the port moves to the target's
// bridge, where the VM is paused until Resume.
func (h *Host) Migrate(ctx context.Context, name string, to hypervisor.Endpoint, opts hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	start := time.Now()
	if err := hypervisor.ValidName(name); err != nil {
		return hypervisor.Stats{}, err
	}
	if err := opts.Validate(); err != nil {
		return hypervisor.Stats{}, err
	}
	c := h.c
	ns, ok := strings.CutPrefix(to.URI, uriScheme)
	c.mu.Lock()
	t := c.hosts[ns]
	st, here := c.state[h.ns]
	tst := c.state[ns]
	pre := c.PreCopy
	c.mu.Unlock()
	switch {
	case !ok || t == nil || t == h:
		return hypervisor.Stats{}, fmt.Errorf("%w: endpoint %q is no other host of this cluster", hypervisor.ErrInvalid, to.URI)
	case name != c.vm || !here:
		return hypervisor.Stats{}, h.notFound(name)
	case st != hypervisor.Running:
		return hypervisor.Stats{}, fmt.Errorf("%w: %q is %s at %s", hypervisor.ErrState, name, st, h.ns)
	case tst != hypervisor.Incoming:
		return hypervisor.Stats{}, fmt.Errorf("%w: %s has no incoming instance of %q", hypervisor.ErrUnreachable, ns, name)
	}
	// Abort at this host cancels the migration until the port moved.
	ctx, abort := context.WithCancelCause(ctx)
	defer abort(nil)
	c.mu.Lock()
	c.abort = abort
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.abort = nil
		c.mu.Unlock()
	}()
	aborted := func() error {
		return fmt.Errorf("%w: %q: %w", hypervisor.ErrAborted, name, context.Cause(ctx))
	}
	// Pre-copy: the VM runs on.
	tk := time.NewTicker(50 * time.Millisecond)
	defer tk.Stop()
	for time.Since(start) < pre {
		select {
		case <-ctx.Done():
			return hypervisor.Stats{}, aborted()
		case <-tk.C:
			if opts.OnProgress != nil {
				opts.OnProgress(hypervisor.Progress{Elapsed: time.Since(start), Pass: 1})
			}
		}
	}
	// Switchover: paused at the source, the hook runs.
	c.setState(h.ns, hypervisor.Paused)
	stats := hypervisor.Stats{Switchover: time.Now()}
	if opts.AtSwitchover != nil {
		if err := hypervisor.RunHook(ctx, opts.AtSwitchover); err != nil {
			c.setState(h.ns, hypervisor.Running)
			return hypervisor.Stats{}, fmt.Errorf("%w: %q: %w", hypervisor.ErrSwitchoverHook, name, err)
		}
		stats.SwitchoverDone = time.Now()
	}
	if ctx.Err() != nil { // aborted (or ctx ended) during the switchover
		c.setState(h.ns, hypervisor.Running)
		return hypervisor.Stats{}, aborted()
	}
	if err := c.movePort(h, t); err != nil {
		c.setState(h.ns, hypervisor.Running)
		return hypervisor.Stats{}, fmt.Errorf("%w: %q: %w", hypervisor.ErrMigration, name, err)
	}
	c.mu.Lock()
	delete(c.state, h.ns)
	c.state[t.ns] = hypervisor.Paused
	c.from = h.ns
	c.mu.Unlock()
	stats.Total = time.Since(start)
	stats.Downtime = time.Since(stats.Switchover)
	return stats, nil
}

func (c *Cluster) setState(ns string, st hypervisor.State) {
	c.mu.Lock()
	c.state[ns] = st
	c.mu.Unlock()
}

// Resume runs the VM paused on this host.
func (h *Host) Resume(ctx context.Context, name string) error {
	if err := hypervisor.ValidName(name); err != nil {
		return err
	}
	c := h.c
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.state[h.ns]
	switch {
	case name != c.vm || !ok:
		return h.notFound(name)
	case st != hypervisor.Paused:
		return fmt.Errorf("%w: %q is %s at %s, want paused", hypervisor.ErrState, name, st, h.ns)
	}
	c.state[h.ns] = hypervisor.Running
	return nil
}

// Abort cancels a migration: at its source, a migration under way
// (pre-copy, or the switchover) ends with ErrAborted and the VM runs on
// there; a target's incoming instance is discarded (its port deleted); a
// VM migrated here but never resumed moves back to the host it came from
// and runs there. Anything else is a no-op.
func (h *Host) Abort(ctx context.Context, name string) error {
	if err := hypervisor.ValidName(name); err != nil {
		return err
	}
	c := h.c
	c.mu.Lock()
	st, ok := c.state[h.ns]
	from := c.hosts[c.from]
	abort := c.abort
	c.mu.Unlock()
	if name != c.vm || !ok {
		return nil
	}
	if abort != nil && st.Active() { // the source of the migration under way
		abort(errAbortCalled)
		return nil
	}
	switch {
	case st == hypervisor.Incoming:
		hh, err := lab.Handle(h.ns)
		if err != nil {
			return err
		}
		defer hh.Close()
		if lk, err := hh.LinkByName(h.port); err == nil {
			if err := hh.LinkDel(lk); err != nil {
				return fmt.Errorf("nshv: %s: delete port %s: %w", h.ns, h.port, err)
			}
		}
		c.mu.Lock()
		delete(c.state, h.ns)
		c.mu.Unlock()
	case st == hypervisor.Paused && from != nil && from != h:
		// Migrated here, never resumed: back to the source.
		if err := c.movePort(h, from); err != nil {
			return fmt.Errorf("nshv: abort %q at %s: %w", name, h.ns, err)
		}
		c.mu.Lock()
		delete(c.state, h.ns)
		c.state[from.ns] = hypervisor.Running
		c.from = ""
		c.mu.Unlock()
	case st == hypervisor.Paused:
		c.setState(h.ns, hypervisor.Running)
	}
	return nil
}

// movePort moves the VM's port from from's bridge to to's, replacing
// to's port of the same name (the incoming instance's) if there is one.
func (c *Cluster) movePort(from, to *Host) error {
	hf, err := lab.Handle(from.ns)
	if err != nil {
		return err
	}
	defer hf.Close()
	ht, err := lab.Handle(to.ns)
	if err != nil {
		return err
	}
	defer ht.Close()
	lk, err := hf.LinkByName(from.port)
	if err != nil {
		return fmt.Errorf("%s: port %s: %w", from.ns, from.port, err)
	}
	if old, err := ht.LinkByName(to.port); err == nil {
		if err := ht.LinkDel(old); err != nil {
			return fmt.Errorf("%s: delete incoming port %s: %w", to.ns, to.port, err)
		}
	}
	// A name unique on both hosts while it moves.
	tmp := tmpName("mv")
	if err := hf.LinkSetDown(lk); err != nil {
		return err
	}
	if err := hf.LinkSetName(lk, tmp); err != nil {
		return fmt.Errorf("%s: rename %s: %w", from.ns, from.port, err)
	}
	target, err := nsutil.Open(to.ns)
	if err != nil {
		return err
	}
	defer target.Close()
	if err := hf.LinkSetNsFd(lk, int(target)); err != nil {
		return fmt.Errorf("move %s from %s to %s: %w", from.port, from.ns, to.ns, err)
	}
	if lk, err = ht.LinkByName(tmp); err != nil {
		return err
	}
	if err := ht.LinkSetName(lk, to.port); err != nil {
		return fmt.Errorf("%s: rename to %s: %w", to.ns, to.port, err)
	}
	if err := lab.Enslave(to.ns, to.port, to.bridge); err != nil {
		return err
	}
	return ht.LinkSetUp(lk)
}

func tmpName(prefix string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return prefix + hex.EncodeToString(b)
}
