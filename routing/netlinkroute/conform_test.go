package netlinkroute_test

import (
	"testing"

	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/netlinkroute"
	"github.com/sealift/sealift/routing/routingconform"
)

// TestConformance runs the routing.RouteWatcher suite against the kernel
// backend.
func TestConformance(t *testing.T) {
	routingconform.Run(t, routingconform.Harness{
		New: func(_ testing.TB, host string) routing.RouteWatcher {
			return netlinkroute.New(netlinkroute.WithHost(host))
		},
	})
}
