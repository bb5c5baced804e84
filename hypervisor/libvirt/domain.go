package libvirt

import (
	"encoding/xml"
	"fmt"
	"net"
	"strings"

	"github.com/sealift/sealift/hypervisor"
)

// DomainSpec describes a direct-kernel-boot QEMU (TCG) domain: the
// device model Start creates. libvirt carries it to the target during a
// migration, so host-local parts (bridge, tap, serial file) must exist
// there under the same names.
type DomainSpec struct {
	Name      string
	MemoryMiB int    // default 128
	CPUs      int    // default 1
	Machine   string // default pc-i440fx-7.2
	Emulator  string // default /usr/bin/qemu-system-x86_64
	Kernel    string // required
	Initrd    string
	Cmdline   string
	// Serial is a file the serial console is appended to (append='on', so
	// source and target write one continuous log). Optional.
	Serial string
	NICs   []DomainNIC
}

// DomainNIC is a virtio-net port on a host bridge.
type DomainNIC struct {
	MAC    string // required
	Bridge string // required, e.g. "br0"
	Tap    string // libvirt's target dev name; optional
}

// XML renders the domain XML after validating the spec.
func (s DomainSpec) XML() (string, error) {
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 128
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.Machine == "" {
		s.Machine = "pc-i440fx-7.2"
	}
	if s.Emulator == "" {
		s.Emulator = "/usr/bin/qemu-system-x86_64"
	}
	if err := hypervisor.ValidName(s.Name); err != nil {
		return "", err
	}
	if s.Kernel == "" {
		return "", fmt.Errorf("%w: Kernel is empty (vm %q)", hypervisor.ErrInvalid, s.Name)
	}
	if s.MemoryMiB < 0 || s.CPUs < 0 {
		return "", fmt.Errorf("%w: MemoryMiB %d / CPUs %d (vm %q)", hypervisor.ErrInvalid, s.MemoryMiB, s.CPUs, s.Name)
	}
	for i, n := range s.NICs {
		if _, err := net.ParseMAC(n.MAC); err != nil || len(n.MAC) != 17 {
			return "", fmt.Errorf("%w: NICs[%d].MAC %q is not a MAC address (vm %q)", hypervisor.ErrInvalid, i, n.MAC, s.Name)
		}
		if n.Bridge == "" || len(n.Bridge) > 15 || len(n.Tap) > 15 {
			return "", fmt.Errorf("%w: NICs[%d] bridge %q / tap %q are not interface names (vm %q)", hypervisor.ErrInvalid, i, n.Bridge, n.Tap, s.Name)
		}
	}
	e := func(v string) string {
		var b strings.Builder
		_ = xml.EscapeText(&b, []byte(v))
		return b.String()
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<domain type='qemu' xmlns:qemu='%s'>\n  <name>%s</name>\n  <memory unit='MiB'>%d</memory>\n  <vcpu>%d</vcpu>\n", qemuNS, e(s.Name), s.MemoryMiB, s.CPUs)
	fmt.Fprintf(&b, "  <os>\n    <type arch='x86_64' machine='%s'>hvm</type>\n    <kernel>%s</kernel>\n", e(s.Machine), e(s.Kernel))
	if s.Initrd != "" {
		fmt.Fprintf(&b, "    <initrd>%s</initrd>\n", e(s.Initrd))
	}
	if s.Cmdline != "" {
		fmt.Fprintf(&b, "    <cmdline>%s</cmdline>\n", e(s.Cmdline))
	}
	b.WriteString("  </os>\n  <on_reboot>destroy</on_reboot>\n  <devices>\n")
	fmt.Fprintf(&b, "    <emulator>%s</emulator>\n", e(s.Emulator))
	for _, n := range s.NICs {
		fmt.Fprintf(&b, "    <interface type='bridge'>\n      <mac address='%s'/>\n      <source bridge='%s'/>\n", e(strings.ToLower(n.MAC)), e(n.Bridge))
		if n.Tap != "" {
			fmt.Fprintf(&b, "      <target dev='%s'/>\n", e(n.Tap))
		}
		b.WriteString("      <model type='virtio'/>\n      <rom enabled='no'/>\n    </interface>\n")
	}
	if s.Serial != "" {
		fmt.Fprintf(&b, "    <serial type='file'>\n      <source path='%s' append='on'/>\n      <target port='0'/>\n    </serial>\n", e(s.Serial))
	}
	b.WriteString("    <memballoon model='none'/>\n  </devices>\n")
	// The guest's RAM is a memory backend of our own, 8 KiB short of
	// MemoryMiB (see ramSlackKiB), through QEMU command-line passthrough
	// (QEMU takes the last -m and -machine memory-backend); the XML
	// travels with the migration, so both ends agree.
	kib := s.MemoryMiB<<10 - ramSlackKiB
	fmt.Fprintf(&b, "  <qemu:commandline>\n")
	for _, a := range []string{"-object", fmt.Sprintf("memory-backend-ram,id=sealift.ram,size=%d", kib<<10),
		"-machine", "memory-backend=sealift.ram", "-m", fmt.Sprintf("%dk", kib)} {
		fmt.Fprintf(&b, "    <qemu:arg value='%s'/>\n", a)
	}
	b.WriteString("  </qemu:commandline>\n</domain>\n")
	return b.String(), nil
}

// qemuNS is libvirt's namespace for QEMU command-line passthrough.
const qemuNS = "http://libvirt.org/schemas/domain/qemu/1.0"

// ramSlackKiB: QEMU's RAM is this much smaller than MemoryMiB, so its size
// is not a multiple of 256 KiB: QEMU 7.2's TCG migration loses guest stores
// on RAM blocks of such sizes (hypervisor/qemu's ramSlackKiB says why).
// libvirt rounds <memory> to whole MiB, so the guest's RAM comes from a
// backend of our own; libvirt's own one (pc.ram) stays, unused.
const ramSlackKiB = 8

// domainXML is the part of a live domain's XML Lookup reads.
type domainXML struct {
	Interfaces []struct {
		MAC struct {
			Address string `xml:"address,attr"`
		} `xml:"mac"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
	} `xml:"devices>interface"`
}

func parseNICs(x string) []hypervisor.NIC {
	var d domainXML
	if xml.Unmarshal([]byte(x), &d) != nil {
		return nil
	}
	var nics []hypervisor.NIC
	for _, i := range d.Interfaces {
		nics = append(nics, hypervisor.NIC{MAC: strings.ToLower(i.MAC.Address), Port: i.Target.Dev})
	}
	return nics
}
