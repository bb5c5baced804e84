package nshv

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/hvconform"
	"github.com/sealift/sealift/internal/lab"
)

// ConformWorld builds a world of the hypervisor.Hypervisor conformance
// suite on a fresh lab: the lab's VM ("vm1") runs at host A (port vm0 on
// br0) and can move to host B (port vmb0 on br0). serve, if set, wraps
// each host's Hypervisor (e.g. behind an agent). Where is where the
// guest answers pings: from A or from B, across their bridges.
func ConformWorld(t testing.TB, serve func(t testing.TB, h hypervisor.Hypervisor) hypervisor.Hypervisor) hvconform.World {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	c := New("vm1", l.VM, "eth0")
	a, b := c.Host(l.A, "vm0", "br0"), c.Host(l.B, "vmb0", "br0")
	require.NoError(t, c.Start(a))
	w := hvconform.World{Source: a, Target: b, VM: "vm1", Where: func(testing.TB) hvconform.Place {
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, p := range []struct {
				ns    string
				place hvconform.Place
			}{{l.A, hvconform.AtSource}, {l.B, hvconform.AtTarget}} {
				if n, _ := lab.Ping(p.ns, lab.VMAddr, 1, 300*time.Millisecond); n > 0 {
					return p.place
				}
			}
			if time.Now().After(deadline) {
				return hvconform.Nowhere
			}
		}
	}}
	if serve != nil {
		w.Source, w.Target = serve(t, a), serve(t, b)
	}
	return w
}
