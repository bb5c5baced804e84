package nft_test

import (
	"testing"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/fenceconform"
	"github.com/sealift/sealift/fence/nft"
)

// TestConformance runs the fence.Fencer suite against nft (a fence.Holder).
func TestConformance(t *testing.T) {
	fenceconform.Run(t, fenceconform.Harness{
		New: func(_ testing.TB, host string) fence.Fencer { return nft.New(nft.WithHost(host)) },
	})
}
