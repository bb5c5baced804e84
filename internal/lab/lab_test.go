package lab

import (
	"net"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
)

func TestReferenceTopologyConnects(t *testing.T) {
	RequireRoot(t)
	l := New(t)
	// TCP from each client namespace to a listener in the VM namespace,
	// and underlay A -> B across the wan.
	cases := []struct{ from, to, addr string }{
		{l.Peer, l.VM, "10.1.0.10:7000"},
		{l.Peer2, l.VM, "10.1.0.10:7000"},
		{l.A, l.B, "203.0.113.1:7000"},
		{l.B, l.Core, "198.51.100.1:7000"},
	}
	for _, c := range cases {
		var ln net.Listener
		if err := nsutil.Do(c.to, func() (err error) { ln, err = net.Listen("tcp", c.addr); return }); err != nil {
			t.Fatal(err)
		}
		err := nsutil.Do(c.from, func() error {
			conn, err := net.DialTimeout("tcp", c.addr, 2*time.Second)
			if err == nil {
				conn.Close()
			}
			return err
		})
		ln.Close()
		if err != nil {
			t.Errorf("%s -> %s (%s): %v", c.from, c.to, c.addr, err)
		}
	}
}
