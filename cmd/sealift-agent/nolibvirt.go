//go:build !cgo || nolibvirt

package main

import (
	"errors"
	"log/slog"

	"github.com/sealift/sealift/hypervisor"
)

// libvirtBuilt: this binary has no libvirt backend (parseFlags refuses
// -hypervisor libvirt).
const libvirtBuilt = false

func newLibvirt(string, *slog.Logger) (hypervisor.Hypervisor, func() error, error) {
	return nil, nil, errors.New("built without libvirt")
}
