package wireguard_test

import (
	"os"
	"sync"
	"testing"

	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/linkconform"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// TestConformance runs the tunnel.LinkEnd suite against wireguard.End
// (embedded wireguard-go: this kernel has no WireGuard), each host's End
// with a state dir of its own that a later End of the host reads again.
func TestConformance(t *testing.T) {
	var dirs sync.Map // host -> state dir
	linkconform.Run(t, linkconform.Harness{Kind: tunnel.WireGuard, New: func(t testing.TB, host string) tunnel.LinkEnd {
		dir, err := os.MkdirTemp("", "sealift-end-")
		if err != nil {
			t.Fatal(err)
		}
		if d, loaded := dirs.LoadOrStore(host, dir); loaded {
			os.Remove(dir)
			dir = d.(string)
		} else {
			t.Cleanup(func() { os.RemoveAll(dir) })
		}
		return wireguard.NewEnd(host, wireguard.WithBackend(wireguard.Userspace), wireguard.WithStateDir(dir))
	}})
}
