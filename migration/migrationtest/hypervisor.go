package migrationtest

import (
	"context"
	"fmt"
	"time"

	"github.com/sealift/sealift/hypervisor"
)

// Hypervisor is a fake hypervisor.Hypervisor for one host of a World.
type Hypervisor struct {
	Faults
	w    *World
	host string
	// Port names the port the fake gives an incoming VM ("" = "tap-"+vm).
	Port string
	// LazyIncoming makes it behave like libvirt: PrepareIncoming only
	// checks and returns the endpoint; the incoming instance appears
	// when the migration starts (with the source's NIC port name).
	LazyIncoming bool
}

var _ hypervisor.Hypervisor = (*Hypervisor)(nil)

// Hypervisor returns the fake hypervisor of host.
func (w *World) Hypervisor(host string) *Hypervisor {
	return &Hypervisor{Faults: Faults{name: "hv:" + host, log: &w.Recorder,
		methods: methodsOf[hypervisor.Hypervisor](), after: []string{"Migrate"}}, w: w, host: host}
}

func (h *Hypervisor) Lookup(ctx context.Context, name string) (hypervisor.VM, error) {
	if err := h.enter(ctx, "Lookup", name); err != nil {
		return hypervisor.VM{}, err
	}
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	vm := h.w.vms[name][h.host]
	if vm == nil {
		return hypervisor.VM{}, fmt.Errorf("%w: %q at %s", hypervisor.ErrNotFound, name, h.host)
	}
	return *vm, nil
}

func (h *Hypervisor) PrepareIncoming(ctx context.Context, vm hypervisor.VM) (hypervisor.Endpoint, error) {
	if err := h.enter(ctx, "PrepareIncoming", vm.Name); err != nil {
		return hypervisor.Endpoint{}, err
	}
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	if cur := h.w.vms[vm.Name][h.host]; cur != nil && cur.State.Active() {
		return hypervisor.Endpoint{}, fmt.Errorf("%w: %q at %s", hypervisor.ErrExists, vm.Name, h.host)
	}
	ep := hypervisor.Endpoint{VM: vm.Name, URI: "fake://" + h.host + "/" + vm.Name}
	if h.LazyIncoming {
		h.w.lazy[vm.Name+"@"+h.host] = true
		return ep, nil
	}
	port := h.Port
	if port == "" {
		port = "tap-" + vm.Name
	}
	h.w.put(vm.Name, h.host, incoming(vm, h.host, port))
	return ep, nil
}

func incoming(vm hypervisor.VM, host, port string) *hypervisor.VM {
	in := vm
	in.Host, in.State = host, hypervisor.Incoming
	in.NICs = []hypervisor.NIC{{Port: port}}
	if len(vm.NICs) > 0 {
		in.NICs[0].MAC = vm.NICs[0].MAC
	}
	return &in
}

func (h *Hypervisor) Migrate(ctx context.Context, name string, to hypervisor.Endpoint, opts hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	if err := h.enter(ctx, "Migrate", name); err != nil {
		return hypervisor.Stats{}, err
	}
	start := time.Now()
	var dst string
	if _, err := fmt.Sscanf(to.URI, "fake://%s", &dst); err != nil {
		return hypervisor.Stats{}, fmt.Errorf("%w: endpoint %q", hypervisor.ErrUnreachable, to.URI)
	}
	dst = dst[:len(dst)-len(name)-1]
	h.w.mu.Lock()
	src := h.w.vms[name][h.host]
	if h.w.lazy[name+"@"+dst] && src != nil {
		delete(h.w.lazy, name+"@"+dst)
		port := ""
		if len(src.NICs) > 0 {
			port = src.NICs[0].Port
		}
		h.w.put(name, dst, incoming(*src, dst, port))
	}
	in := h.w.vms[name][dst]
	switch {
	case src == nil || src.State != hypervisor.Running:
		h.w.mu.Unlock()
		return hypervisor.Stats{}, fmt.Errorf("%w: %q not running at %s", hypervisor.ErrState, name, h.host)
	case in == nil || in.State != hypervisor.Incoming:
		h.w.mu.Unlock()
		return hypervisor.Stats{}, fmt.Errorf("%w: no incoming %q at %s", hypervisor.ErrUnreachable, name, dst)
	}
	mem := src.MemoryBytes
	h.w.mu.Unlock()
	if opts.OnProgress != nil {
		for i := 1; i <= 3; i++ {
			opts.OnProgress(hypervisor.Progress{Elapsed: time.Since(start), Transferred: mem * uint64(i) / 3,
				Remaining: mem - mem*uint64(i)/3, Total: mem, Pass: i})
		}
	}
	if err := ctx.Err(); err != nil {
		return hypervisor.Stats{}, fmt.Errorf("%w: %w", hypervisor.ErrAborted, err)
	}
	h.w.mu.Lock()
	h.w.set(name, h.host, hypervisor.Paused)
	h.w.mu.Unlock()
	st := hypervisor.Stats{Switchover: time.Now()}
	if opts.AtSwitchover != nil {
		if err := opts.AtSwitchover(ctx); err != nil {
			h.w.mu.Lock()
			h.w.set(name, h.host, hypervisor.Running)
			h.w.mu.Unlock()
			return hypervisor.Stats{}, fmt.Errorf("%w: %w", hypervisor.ErrSwitchoverHook, err)
		}
	}
	st.SwitchoverDone = time.Now()
	h.w.mu.Lock()
	delete(h.w.vms[name], h.host)
	h.w.set(name, dst, hypervisor.Paused)
	h.w.arrived[name] = dst
	h.w.mu.Unlock()
	st.Total, st.Downtime, st.Bytes = time.Since(start), time.Since(st.Switchover), mem
	return st, h.leave("Migrate")
}

func (h *Hypervisor) Resume(ctx context.Context, name string) error {
	if err := h.enter(ctx, "Resume", name); err != nil {
		return err
	}
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	vm := h.w.vms[name][h.host]
	if vm == nil || vm.State != hypervisor.Paused && vm.State != hypervisor.Running {
		return fmt.Errorf("%w: %q cannot resume at %s", hypervisor.ErrState, name, h.host)
	}
	h.w.set(name, h.host, hypervisor.Running)
	return nil
}

func (h *Hypervisor) Abort(ctx context.Context, name string) error {
	if err := h.enter(ctx, "Abort", name); err != nil {
		return err
	}
	h.w.mu.Lock()
	defer h.w.mu.Unlock()
	vm := h.w.vms[name][h.host]
	switch {
	case vm == nil:
	case vm.State == hypervisor.Incoming:
		delete(h.w.vms[name], h.host) // discard the unresumed target
	case vm.State == hypervisor.Paused && h.w.arrived[name] == h.host:
		// The only, complete copy after a migration: never discard it.
	case vm.State == hypervisor.Paused:
		h.w.set(name, h.host, hypervisor.Running) // a source paused mid-switchover
	}
	return nil
}
