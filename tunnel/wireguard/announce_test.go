package wireguard

import (
	"context"
	"strings"
	"testing"

	"github.com/sealift/sealift/internal/lab"
)

// TestActivateAnnouncesProxies: neighbours holding a stale entry for a
// proxied address (the peer still has the VM's old MAC; the moved VM
// still has the peer's) switch to the proxying host's MAC when the link
// activates, and again when Activate is called on the active link (what
// the Migrator does once the VM's fence opens).
func TestActivateAnnouncesProxies(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil, WithBackend(Userspace))
	spec := w.spec()
	spec.ProxyARP = true
	ctx := context.Background()
	if _, err := lk.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, spec.ID)
	const stale = "02:00:00:00:00:99"
	poison := func() {
		t.Helper()
		for _, c := range []struct{ ns, addr string }{{w.l.Peer, lab.VMAddr.String()}, {w.vm, lab.PeerAddr.String()}} {
			if out, err := lab.Exec(c.ns, "ip", "neigh", "replace", c.addr, "lladdr", stale, "dev", "eth0", "nud", "stale"); err != nil {
				t.Fatalf("%v: %s", err, out)
			}
		}
	}
	check := func(when string) {
		t.Helper()
		for _, c := range []struct{ ns, addr, proxy, dev string }{
			{w.l.Peer, lab.VMAddr.String(), w.l.A, "br0"}, {w.vm, lab.PeerAddr.String(), w.l.B, "br0"},
		} {
			out, err := lab.Exec(c.ns, "ip", "neigh", "show", c.addr, "dev", "eth0")
			if err != nil {
				t.Fatalf("%v: %s", err, out)
			}
			mac := macOf(t, c.proxy, c.dev)
			if strings.Contains(string(out), stale) || !strings.Contains(string(out), mac) {
				t.Errorf("%s: %s's entry for %s is %q, want the proxy's MAC %s", when, c.ns, c.addr, strings.TrimSpace(string(out)), mac)
			}
		}
	}
	poison()
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	check("after Activate")
	poison()
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	check("after Activate on the active link")
}

func macOf(t testing.TB, ns, dev string) string {
	t.Helper()
	h, err := lab.Handle(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	return l.Attrs().HardwareAddr.String()
}
