package linkstate_test

import (
	"testing"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/fenceconform"
	"github.com/sealift/sealift/fence/linkstate"
)

// TestConformance runs the fence.Fencer suite against linkstate, which
// refuses every optional field (AllowVia, AllowMarks, Peers, AllowIPsec,
// Hold) with fence.ErrUnsupported.
func TestConformance(t *testing.T) {
	fenceconform.Run(t, fenceconform.Harness{
		New: func(_ testing.TB, host string) fence.Fencer { return linkstate.New(linkstate.WithHost(host)) },
	})
}
