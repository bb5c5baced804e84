package migrationtest

import (
	"fmt"
	"slices"
	"sync"

	"github.com/sealift/sealift/hypervisor"
)

// World holds every fake VM of every host, so it can tell where a VM is
// and catch a VM active in two places at once.
type World struct {
	Recorder
	mu         sync.Mutex
	vms        map[string]map[string]*hypervisor.VM // vm -> host -> state
	arrived    map[string]string                    // vm -> host it last migrated to
	lazy       map[string]bool                      // "vm@host": prepared, not yet created
	violations []string
}

// NewWorld returns an empty world.
func NewWorld() *World {
	return &World{vms: map[string]map[string]*hypervisor.VM{}, arrived: map[string]string{}, lazy: map[string]bool{}}
}

// AddVM places a running VM on host with one NIC whose port is port.
func (w *World) AddVM(host, name, port, mac string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.put(name, host, &hypervisor.VM{Name: name, Host: host, State: hypervisor.Running,
		MemoryBytes: 128 << 20, NICs: []hypervisor.NIC{{MAC: mac, Port: port}}})
}

// Where returns the hosts where the VM is active (running or paused).
func (w *World) Where(name string) []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var hosts []string
	for h, vm := range w.vms[name] {
		if vm.State.Active() {
			hosts = append(hosts, h)
		}
	}
	slices.Sort(hosts)
	return hosts
}

// State returns the VM's state at host ("" if absent).
func (w *World) State(host, name string) hypervisor.State {
	w.mu.Lock()
	defer w.mu.Unlock()
	if vm := w.vms[name][host]; vm != nil {
		return vm.State
	}
	return ""
}

// Violations lists every moment a VM was active in two places.
func (w *World) Violations() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.violations)
}

// put and set must be called with w.mu held; they check the invariant.
func (w *World) put(name, host string, vm *hypervisor.VM) {
	if w.vms[name] == nil {
		w.vms[name] = map[string]*hypervisor.VM{}
	}
	w.vms[name][host] = vm
	n := 0
	for _, v := range w.vms[name] {
		if v.State.Active() {
			n++
		}
	}
	if n > 1 {
		w.violations = append(w.violations, fmt.Sprintf("VM %q active at %d hosts (now %s at %s)", name, n, vm.State, host))
	}
}

func (w *World) set(name, host string, s hypervisor.State) {
	vm := *w.vms[name][host]
	vm.State = s
	w.put(name, host, &vm)
}
