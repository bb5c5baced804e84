package conntrack_test

import (
	"testing"

	"github.com/sealift/sealift/conn/internal/conntest"
)

// The scale test's server side runs in a child process (this test binary
// re-executed, see conntest.Main), so that neither process needs more
// than 10,000 sockets.
func TestMain(m *testing.M) { conntest.Main(m, "SEALIFT_CT_ECHO_HELPER") }
