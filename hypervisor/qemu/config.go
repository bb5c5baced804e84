package qemu

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/sealift/sealift/hypervisor"
)

// Config is the device model of one VM: everything needed to start it, or
// to start an identical instance that receives it (QEMU migrates state,
// not configuration, so both sides must use the same Config except for
// host-local fields: taps, bridges, serial file).
type Config struct {
	// Name identifies the VM on its host (QEMU's -name; also the file
	// names in the state dir). Letters, digits, '-', '_' and '.'.
	Name string
	// MemoryMiB is the guest RAM (default 128). QEMU is given 8 KiB less
	// (see ramSlackKiB); both sides of a migration must agree on it.
	MemoryMiB int
	// CPUs is the number of vCPUs (default 1).
	CPUs int
	// Machine is QEMU's machine type (default "pc-i440fx-7.2"); it must
	// be the same on both sides of a migration.
	Machine string
	// Kernel, Initrd and Append boot a kernel directly (-kernel, -initrd,
	// -append). Initrd and Append are optional.
	Kernel, Initrd, Append string
	// NICs are virtio-net ports backed by taps on this host.
	NICs []NIC
	// Serial is the file the serial console is appended to (default
	// <state dir>/<name>.serial). Host-local.
	Serial string
	// Extra arguments appended to QEMU's command line (same on both sides).
	Extra []string
}

// NIC is one virtio-net port of a VM, backed by a tap on the VM's host.
type NIC struct {
	// MAC is the guest-visible address ("52:54:00:12:34:56"); required,
	// it must be the same on both sides of a migration.
	MAC string
	// Tap is the host-side interface name (≤ 15 characters). Host-local.
	// A missing tap is created (and deleted when QEMU exits).
	Tap string
	// Bridge, if set, is the bridge the tap is attached to. Host-local.
	Bridge string
}

const defaultMachine = "pc-i440fx-7.2"

// ramSlackKiB is how much less RAM than MemoryMiB QEMU is given, so that
// the RAM block's size is not a multiple of 256 KiB.
//
// Why: QEMU 7.2 (Debian 12), like every QEMU without the 2024 fix named
// below, syncs the migration dirty bitmap of a RAM block whose start and
// size are multiples of 256 KiB by a fast path that clears the dirty bits
// without resetting TCG's TLB (the per-page path does reset it). A vCPU keeps storing through TLB entries
// that still say "page already dirty", those stores are never recorded,
// the page is not sent again, and the target resumes with stale bytes in
// kernel data: panics ("Attempted to kill the idle task!", "Fatal
// exception in interrupt"), virtio_net "output.0:id N is not a head!",
// soft lockups. It bites when a sync is followed by another live pass
// (a busy guest, e.g. under ping load, a loaded host, a low downtime
// limit). Fixed upstream by "system/physmem: Fix migration dirty bitmap
// coherency with TCG memory access" (qemu-devel, 2024-02-19), which
// Debian's 7.2.22 does not carry (checked its source package).
// Measured with examples/soak (issue 16; pings every 1-5 ms, downtime
// limit 10 ms so that syncs are followed by live passes): at exactly 128
// MiB 72 guests died in 210 migrations (19 of 20 with TLS) and the
// target's RAM differed from the paused source's after 12 of 50; with this
// slack 0 died in 130 (20 with TLS) and RAM differed after 0 of 50.
// 8 KiB is QEMU's RAM size granularity; the guest sees 8 KiB less.
const ramSlackKiB = 8

func (c Config) withDefaults(stateDir string) Config {
	if c.MemoryMiB == 0 {
		c.MemoryMiB = 128
	}
	if c.CPUs == 0 {
		c.CPUs = 1
	}
	if c.Machine == "" {
		c.Machine = defaultMachine
	}
	if c.Serial == "" && stateDir != "" {
		c.Serial = filepath.Join(stateDir, c.Name+".serial")
	}
	c.NICs = append([]NIC(nil), c.NICs...)
	c.Extra = append([]string(nil), c.Extra...)
	return c
}

// Validate checks c and names the first bad field and its value.
func (c Config) Validate() error {
	if err := hypervisor.ValidName(c.Name); err != nil {
		return err
	}
	if c.MemoryMiB < 0 || c.MemoryMiB > 1<<20 {
		return fmt.Errorf("%w: MemoryMiB %d out of range (vm %q)", hypervisor.ErrInvalid, c.MemoryMiB, c.Name)
	}
	if c.CPUs < 0 || c.CPUs > 64 {
		return fmt.Errorf("%w: CPUs %d out of range (vm %q)", hypervisor.ErrInvalid, c.CPUs, c.Name)
	}
	if c.Kernel == "" {
		return fmt.Errorf("%w: Kernel is empty (vm %q)", hypervisor.ErrInvalid, c.Name)
	}
	for _, s := range []struct{ field, v string }{{"Kernel", c.Kernel}, {"Initrd", c.Initrd}, {"Serial", c.Serial}, {"Machine", c.Machine}} {
		if strings.ContainsAny(s.v, ",\n") {
			return fmt.Errorf("%w: %s %q contains ',' or a newline (vm %q)", hypervisor.ErrInvalid, s.field, s.v, c.Name)
		}
	}
	taps := map[string]bool{}
	for i, n := range c.NICs {
		if _, err := net.ParseMAC(n.MAC); err != nil || len(n.MAC) != 17 {
			return fmt.Errorf("%w: NICs[%d].MAC %q is not a MAC address (vm %q)", hypervisor.ErrInvalid, i, n.MAC, c.Name)
		}
		if n.Tap == "" || len(n.Tap) > 15 || strings.ContainsAny(n.Tap, ",/ \t\n") {
			return fmt.Errorf("%w: NICs[%d].Tap %q is not an interface name (vm %q)", hypervisor.ErrInvalid, i, n.Tap, c.Name)
		}
		if taps[n.Tap] {
			return fmt.Errorf("%w: NICs[%d].Tap %q used twice (vm %q)", hypervisor.ErrInvalid, i, n.Tap, c.Name)
		}
		taps[n.Tap] = true
		if len(n.Bridge) > 15 {
			return fmt.Errorf("%w: NICs[%d].Bridge %q is not an interface name (vm %q)", hypervisor.ErrInvalid, i, n.Bridge, c.Name)
		}
	}
	return nil
}

// Args returns QEMU's command line (without the binary) for c. The QMP
// monitor is read from the listening unix socket passed as file
// descriptor qmpFD. incoming adds "-S -incoming defer": the instance
// waits paused for migrate-incoming.
func (c Config) Args(qmpFD int, incoming bool) []string {
	a := []string{
		"-name", c.Name,
		"-accel", "tcg",
		"-machine", c.Machine,
		"-m", ramSize(c.MemoryMiB),
		"-smp", strconv.Itoa(c.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", fmt.Sprintf("socket,id=qmp,fd=%d,server=on,wait=off", qmpFD),
		"-mon", "chardev=qmp,mode=control",
		"-kernel", c.Kernel,
	}
	if c.Initrd != "" {
		a = append(a, "-initrd", c.Initrd)
	}
	if c.Append != "" {
		a = append(a, "-append", c.Append)
	}
	if c.Serial != "" {
		a = append(a, "-chardev", "file,id=ser0,append=on,path="+c.Serial, "-serial", "chardev:ser0")
	}
	for i, n := range c.NICs {
		a = append(a,
			"-netdev", fmt.Sprintf("tap,id=net%d,ifname=%s,script=no,downscript=no", i, n.Tap),
			"-device", fmt.Sprintf("virtio-net-pci,netdev=net%d,mac=%s,romfile=", i, strings.ToLower(n.MAC)))
	}
	a = append(a, c.Extra...)
	if incoming {
		a = append(a, "-S", "-incoming", "defer")
	}
	return a
}

// ramSize is QEMU's -m for MemoryMiB (see ramSlackKiB).
func ramSize(mib int) string {
	if mib <= 0 {
		return strconv.Itoa(mib)
	}
	return strconv.Itoa(mib<<10-ramSlackKiB) + "k"
}

// compatible reports whether a VM described by the source (memory, MACs)
// can be received by an instance of c.
func (c Config) compatible(vm hypervisor.VM) error {
	if vm.MemoryBytes != 0 && vm.MemoryBytes != uint64(c.MemoryMiB)<<20 {
		return fmt.Errorf("%w: vm %q has MemoryBytes %d, the defined device model %d MiB", hypervisor.ErrInvalid, vm.Name, vm.MemoryBytes, c.MemoryMiB)
	}
	if len(vm.NICs) == 0 {
		return nil
	}
	if len(vm.NICs) != len(c.NICs) {
		return fmt.Errorf("%w: vm %q has %d NICs, the defined device model %d", hypervisor.ErrInvalid, vm.Name, len(vm.NICs), len(c.NICs))
	}
	for i, n := range vm.NICs {
		if !strings.EqualFold(n.MAC, c.NICs[i].MAC) {
			return fmt.Errorf("%w: vm %q NICs[%d].MAC %q, the defined device model has %q", hypervisor.ErrInvalid, vm.Name, i, n.MAC, c.NICs[i].MAC)
		}
	}
	return nil
}

func (c Config) vm(host string, st hypervisor.State) hypervisor.VM {
	v := hypervisor.VM{Name: c.Name, Host: host, State: st, MemoryBytes: uint64(c.MemoryMiB) << 20}
	for _, n := range c.NICs {
		v.NICs = append(v.NICs, hypervisor.NIC{MAC: strings.ToLower(n.MAC), Port: n.Tap})
	}
	return v
}
