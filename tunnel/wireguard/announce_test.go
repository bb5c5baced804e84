package wireguard

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

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

// TestActivateReadiesTargetLAN: with Remote.MAC, Activate gives B a
// neighbour entry for the VM before the VM has sent or answered anything
// (what the link carries to a VM that is still paused waits in its port,
// not behind ARP), and announces B's own address on the VM's LAN so a VM
// that cached its old gateway's MAC switches to B's; Close removes the
// entry again.
func TestActivateReadiesTargetLAN(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil, WithBackend(Userspace))
	spec := w.spec()
	vmMAC := macOf(t, w.vm, "eth0")
	spec.Remote.MAC = vmMAC
	ctx := context.Background()
	if _, err := lk.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, spec.ID)
	neigh := func(ns, addr, dev string) string {
		t.Helper()
		out, err := lab.Exec(ns, "ip", "neigh", "show", addr, "dev", dev)
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	vm := lab.VMAddr.String()
	if _, err := lab.Exec(w.l.B, "ip", "neigh", "flush", "dev", "br0"); err != nil {
		t.Fatal(err)
	}
	if got := neigh(w.l.B, vm, "br0"); got != "" {
		t.Fatalf("before Activate B already has %q", got)
	}
	const oldGateway = "02:00:00:00:00:98"
	gw := lab.Gateway.String()
	if out, err := lab.Exec(w.vm, "ip", "neigh", "replace", gw, "lladdr", oldGateway, "dev", "eth0", "nud", "stale"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if got := neigh(w.l.B, vm, "br0"); !strings.Contains(got, vmMAC) {
		t.Errorf("after Activate B's entry for the VM is %q, want lladdr %s", got, vmMAC)
	}
	if got, want := neigh(w.vm, gw, "eth0"), macOf(t, w.l.B, "br0"); !strings.Contains(got, want) {
		t.Errorf("after Activate the VM's entry for its gateway %s is %q, want B's br0 MAC %s", gw, got, want)
	}
	w.exchange(t, []byte("ready"))

	if err := lk.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if got := neigh(w.l.B, vm, "br0"); strings.Contains(got, vmMAC) && !strings.Contains(got, "REACHABLE") {
		// The VM's own traffic may have confirmed it (REACHABLE): then it
		// is the kernel's, learnt, not ours.
		t.Errorf("after Close B still has %q", got)
	}
}

// TestActivateAnnouncesProxiesIPv6: with IPv6 hosts protected, Activate
// sends unsolicited neighbour advertisements for the proxied addresses
// (proxy NDP alone only answers solicitations): the peer's entry for the
// VM's old MAC and the moved VM's entries for the peer and for its
// gateway switch to the proxying hosts' MACs at once; then ICMPv6 flows
// peer <-> VM through the link.
func TestActivateAnnouncesProxiesIPv6(t *testing.T) {
	w := newWorld(t)
	w.dualStack(t)
	lk := testLinker(t, nil, WithBackend(Userspace))
	spec := w.spec6()
	spec.Remote.MAC = macOf(t, w.vm, "eth0")
	ctx := context.Background()
	if _, err := lk.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, spec.ID)
	const stale = "02:00:00:00:00:99"
	cases := []struct{ ns, addr, proxy string }{
		{w.l.Peer, vmAddr6.String(), w.l.A},
		{w.vm, peerAddr6.String(), w.l.B},
		{w.vm, gateway6.String(), w.l.B},
	}
	for _, c := range cases {
		if out, err := lab.Exec(c.ns, "ip", "-6", "neigh", "replace", c.addr, "lladdr", stale, "dev", "eth0", "nud", "reachable"); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		out, err := lab.Exec(c.ns, "ip", "-6", "neigh", "show", c.addr, "dev", "eth0")
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		if mac := macOf(t, c.proxy, "br0"); !strings.Contains(string(out), mac) {
			t.Errorf("after Activate %s's entry for %s is %q, want %s's br0 MAC %s", c.ns, c.addr, strings.TrimSpace(string(out)), c.proxy, mac)
		}
	}
	for _, d := range []struct {
		from string
		to   netip.Addr
	}{{w.l.Peer, vmAddr6}, {w.vm, peerAddr6}} {
		if n, err := lab.Ping(d.from, d.to, 5, 2*time.Second); n != 5 {
			t.Errorf("ping6 %s -> %s through the link: %d/5 (%v)", d.from, d.to, n, err)
		}
	}
}
