package libvirt

import (
	"encoding/xml"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// QEMU's RAM is a backend of its own, 8 KiB short of MemoryMiB (QEMU 7.2's
// TCG migration loses stores on RAM sizes that are multiples of 256 KiB),
// passed through to QEMU; libvirt's own <memory> stays whole MiB.
func TestDomainXMLRAMWorkaround(t *testing.T) {
	x, err := DomainSpec{Name: "g1", Kernel: "/boot/vmlinuz", MemoryMiB: 128}.XML()
	require.NoError(t, err)
	var d struct {
		Memory string `xml:"memory"`
		Args   []struct {
			Value string `xml:"value,attr"`
		} `xml:"http://libvirt.org/schemas/domain/qemu/1.0 commandline>arg"`
	}
	require.NoError(t, xml.Unmarshal([]byte(x), &d), x)
	assert.Equal(t, "128", d.Memory)
	var args []string
	for _, a := range d.Args {
		args = append(args, a.Value)
	}
	assert.Equal(t, []string{"-object", "memory-backend-ram,id=sealift.ram,size=134209536",
		"-machine", "memory-backend=sealift.ram", "-m", "131064k"}, args)
}
