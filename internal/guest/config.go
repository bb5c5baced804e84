package guest

import (
	"fmt"
	"net/netip"

	"github.com/sealift/sealift/hypervisor/qemu"
)

// Ports the agent serves.
const (
	EchoPort   = 7777 // echoes what it receives
	StatusPort = 7778 // answers "boot=ID counter=N\n"
)

// MemoryMiB is the guest RAM sealift's tests use.
const MemoryMiB = 128

// Net is a guest's network: its address inside the guest and its port on
// the host.
type Net struct {
	Addr    netip.Prefix // e.g. 10.1.0.10/24 (eth0 in the guest)
	Gateway netip.Addr   // default route in the guest; optional
	// Addr6 and Gateway6 (optional) make the guest dual-stack: an IPv6
	// address on eth0, usable at once (no duplicate address detection),
	// and an IPv6 default route. The guest takes no router advertisements.
	Addr6    netip.Prefix // e.g. fd00:1::10/64
	Gateway6 netip.Addr   // e.g. fd00:1::1
	MAC      string       // fixed, e.g. "52:54:00:00:01:0a"
	Tap      string       // host-side tap (created if missing)
	Bridge   string       // bridge the tap joins on the host, e.g. "br0"
}

// Config returns the device model of a guest named name running img with
// network n: 128 MiB, 1 vCPU, TCG, virtio-net on the tap, serial console
// to <state dir>/<name>.serial. Use the same Config (with that host's Tap
// and Bridge) on the target of a migration.
func (img Image) Config(name string, n Net) qemu.Config {
	c := qemu.Config{Name: name, MemoryMiB: MemoryMiB, CPUs: 1,
		Kernel: img.Kernel, Initrd: img.Initrd, Append: Cmdline(n)}
	if n.MAC != "" || n.Tap != "" {
		c.NICs = []qemu.NIC{{MAC: n.MAC, Tap: n.Tap, Bridge: n.Bridge}}
	}
	return c
}

// MAC returns a locally administered MAC derived from an IPv4 address
// (52:54:00:a.b.c.d style: 52:54:XX:XX:XX:XX).
func MAC(a netip.Addr) string {
	b := a.As4()
	return fmt.Sprintf("52:54:%02x:%02x:%02x:%02x", b[0], b[1], b[2], b[3])
}

// Cmdline is the guest kernel command line for network n (serial console
// on ttyS0, the agent's sealift.ip/sealift.gw parameters, and
// sealift.ip6/sealift.gw6 for a dual-stack guest).
func Cmdline(n Net) string {
	app := "console=ttyS0 quiet panic=-1"
	if n.Addr.IsValid() {
		app += " sealift.ip=" + n.Addr.String()
	}
	if n.Gateway.IsValid() {
		app += " sealift.gw=" + n.Gateway.String()
	}
	if n.Addr6.IsValid() {
		app += " sealift.ip6=" + n.Addr6.String()
	}
	if n.Gateway6.IsValid() {
		app += " sealift.gw6=" + n.Gateway6.String()
	}
	return app
}
