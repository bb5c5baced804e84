//go:build cgo && !nolibvirt

package main

import (
	"log/slog"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/libvirt"
)

// libvirtBuilt: -hypervisor libvirt is available (cgo, libvirt's
// library at run time). Build with -tags nolibvirt for a binary without.
const libvirtBuilt = true

// newLibvirt connects to the libvirt daemon at uri; close closes the
// connection (domains keep running).
func newLibvirt(uri string, log *slog.Logger) (h hypervisor.Hypervisor, close func() error, err error) {
	lv, err := libvirt.New(libvirt.WithURI(uri), libvirt.WithLogger(log))
	if err != nil {
		return nil, nil, err
	}
	return lv, lv.Close, nil
}
