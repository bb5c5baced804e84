package sockdiag_test

import (
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/connconform"
	"github.com/sealift/sealift/conn/sockdiag"
)

// TestConformance runs the conn.ConnAuditor suite against sockdiag in
// the VM's own namespace.
func TestConformance(t *testing.T) {
	connconform.Run(t, connconform.Harness{Vantage: connconform.Endpoint,
		New: func(_ testing.TB, host string) conn.ConnAuditor { return sockdiag.New(sockdiag.WithHost(host)) }})
}
