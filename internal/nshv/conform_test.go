package nshv

import (
	"testing"

	"github.com/sealift/sealift/hypervisor/hvconform"
)

// TestConformance runs the hypervisor.Hypervisor suite against nshv.
func TestConformance(t *testing.T) {
	hvconform.Run(t, hvconform.Harness{New: func(t testing.TB) hvconform.World { return ConformWorld(t, nil) }})
}
