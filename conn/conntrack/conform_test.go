package conntrack_test

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/connconform"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// TestConformance runs the conn.ConnAuditor suite against conntrack on
// the host that routes the VM's traffic (made to track connections).
func TestConformance(t *testing.T) {
	connconform.Run(t, connconform.Harness{Vantage: connconform.Router,
		New: func(t testing.TB, host string) conn.ConnAuditor {
			if nsutil.Check(host) == nil {
				out, err := lab.Exec(host, "nft", "add table inet track; add chain inet track tracked { type filter hook forward priority 0; }; add rule inet track tracked ct state established counter")
				require.NoError(t, err, "%s", out)
			}
			return conntrack.New(conntrack.WithHost(host))
		}})
}
