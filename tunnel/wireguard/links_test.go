package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
	"github.com/vishvananda/netlink"
)

// TestTwoLinksShareHosts: two links between the same hosts get distinct
// ports, routing tables and fresh keys; a duplicate ID is ErrExists; both
// close cleanly.
func TestTwoLinksShareHosts(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil, WithPresharedKey(true))
	ctx := context.Background()
	s1, s2 := w.spec(), w.spec()
	s2.Remote.Protected = []netip.Prefix{netip.MustParsePrefix("10.1.0.11/32")}
	l1, err := lk.Prepare(ctx, s1)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, s1.ID)
	l2, err := lk.Prepare(ctx, s2)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, s2.ID)
	if _, err := lk.Prepare(ctx, s1); !errors.Is(err, tunnel.ErrExists) {
		t.Errorf("duplicate ID: %v, want ErrExists", err)
	}
	// Another Linker (another process) cannot take the names either, and
	// its failed Prepare leaves the first link's devices alone.
	if _, err := testLinker(t, nil).Prepare(ctx, s1); !errors.Is(err, tunnel.ErrExists) {
		t.Errorf("same ID from another Linker: %v, want ErrExists", err)
	}
	for _, e := range []struct{ host, dev string }{{w.l.A, l1.SecureDevice}, {w.l.B, l1.RemoteDevice}} {
		devState(t, e.host, e.dev) // fails the test if the device is gone
	}
	if l1.Secure.Port == l2.Secure.Port || l1.Remote.Port == l2.Remote.Port {
		t.Errorf("ports %d/%d and %d/%d collide", l1.Secure.Port, l1.Remote.Port, l2.Secure.Port, l2.Remote.Port)
	}
	lk.mu.Lock()
	t1, t2 := lk.links[s1.ID].st.Ends[1].Table, lk.links[s2.ID].st.Ends[1].Table
	lk.mu.Unlock()
	if t1 == t2 || t1 == 0 {
		t.Errorf("remote tables %d and %d", t1, t2)
	}
	// Fresh keys: four distinct private keys; each link's two ends share a
	// preshared key that the other link does not have.
	privs := map[wgtypes.Key]string{}
	psks := map[wgtypes.Key]string{}
	for _, e := range []struct{ id, host, dev string }{
		{l1.ID, w.l.A, l1.SecureDevice}, {l1.ID, w.l.B, l1.RemoteDevice},
		{l2.ID, w.l.A, l2.SecureDevice}, {l2.ID, w.l.B, l2.RemoteDevice},
	} {
		err := withWG(e.host, func(c *wgctrl.Client) error {
			d, err := c.Device(e.dev)
			if err != nil {
				return err
			}
			if other, dup := privs[d.PrivateKey]; dup {
				t.Errorf("%s has the private key of %s", e.dev, other)
			}
			privs[d.PrivateKey] = e.dev
			psk := d.Peers[0].PresharedKey
			if psk == (wgtypes.Key{}) {
				t.Errorf("%s: no preshared key (WithPresharedKey)", e.dev)
			}
			if id, seen := psks[psk]; seen && id != e.id {
				t.Errorf("links %s and %s share a preshared key", id, e.id)
			}
			psks[psk] = e.id
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(psks) != 2 {
		t.Errorf("%d distinct preshared keys, want 2 (one per link)", len(psks))
	}
	for _, l := range []tunnel.Link{l1, l2} {
		if err := lk.Close(ctx, l.ID); err != nil {
			t.Fatal(err)
		}
		assertClean(t, lk, l, nil, w)
	}
}

// TestCloseAfterRestart: a new Linker (a restarted process) finds an
// active link through its state file and Close removes everything the
// first one installed.
func TestCloseAfterRestart(t *testing.T) {
	w := newWorld(t)
	dir := t.TempDir()
	ctx := context.Background()
	before := w.sysctls(t)
	first := New(WithStateDir(dir))
	link, err := first.Prepare(ctx, w.spec())
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Activate(ctx, link.ID); err != nil {
		t.Fatal(err)
	}
	// The first process dies: its embedded devices go with it (kernel
	// devices stay); routes, rules, proxy entries and sysctls stay.
	first.mu.Lock()
	for _, u := range first.links[link.ID].user {
		if u != nil {
			_ = u.close()
		}
	}
	first.mu.Unlock()
	pe, err := proxyEntries(w.l.A)
	if err != nil || len(pe) == 0 {
		t.Fatalf("proxy entries at A before recovery: %v, %v (want some left behind)", pe, err)
	}

	second := New(WithStateDir(dir))
	t.Cleanup(func() { _ = second.Close(ctx, link.ID) })
	links, err := second.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].ID != link.ID || !links[0].Active || links[0].Backend != link.Backend {
		t.Fatalf("List after restart = %+v, want the active link %s", links, link.ID)
	}
	if err := second.Close(ctx, link.ID); err != nil {
		t.Fatal(err)
	}
	assertClean(t, second, link, before, w)
}

// TestTwoMovedVMsShareThePeer: two VMs moved to B, one link each from A,
// both with the peer as Secure.Protected. B routes by source, so each
// VM's traffic takes its own link; the proxy entry for the peer at B is
// shared and outlives the first link's Close.
func TestTwoMovedVMsShareThePeer(t *testing.T) {
	w := newWorld(t)
	vm2Addr := netip.MustParseAddr("10.1.0.11")
	vm2, err := w.l.AttachVM("vmc", w.l.B, "vmc0", "10.1.0.11/24")
	if err != nil {
		t.Fatal(err)
	}
	lk := testLinker(t, nil)
	ctx := context.Background()
	before := w.sysctls(t)
	s1, s2 := w.spec(), w.spec()
	s2.Remote.Protected = []netip.Prefix{netip.PrefixFrom(vm2Addr, 32)}
	var links []tunnel.Link
	for _, s := range []tunnel.Spec{s1, s2} {
		l, err := lk.Prepare(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		closeOnCleanup(t, lk, s.ID)
		if err := lk.Activate(ctx, s.ID); err != nil {
			t.Fatal(err)
		}
		links = append(links, l)
	}
	tx := func(l tunnel.Link) int64 {
		p, err := peerStats(l.Secure.Host, l.SecureDevice)
		if err != nil {
			t.Fatal(err)
		}
		return p.TransmitBytes
	}
	capt, err := lab.StartCapture(w.l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Stop()
	payload := append([]byte("payload "), marker...)
	for i, vm := range []struct {
		ns   string
		addr netip.Addr
	}{{w.vm, lab.VMAddr}, {vm2, vm2Addr}} {
		tx0, other0 := tx(links[i]), tx(links[1-i])
		w.exchangeWith(t, vm.ns, vm.addr, payload)
		// 20 TCP + UDP payloads from the peer alone cross the link.
		if got := tx(links[i]) - tx0; got < 20*int64(len(payload)) {
			t.Errorf("VM %s: link %s carried %d bytes from A", vm.addr, links[i].ID, got)
		}
		if got := tx(links[1-i]) - other0; got > 1024 {
			t.Errorf("VM %s: the other link %s carried %d bytes from A", vm.addr, links[1-i].ID, got)
		}
	}
	st := capt.Stop()
	t.Logf("wan capture: %+v", st)
	if st.Marker != 0 || st.Dropped != 0 {
		t.Errorf("wan: %d frames with the marker in clear, %d dropped", st.Marker, st.Dropped)
	}
	ports := []uint16{links[0].Secure.Port, links[0].Remote.Port, links[1].Secure.Port, links[1].Remote.Port}
	for port, n := range st.UDPPorts {
		if !slices.Contains(ports, port) {
			t.Errorf("wan saw %d UDP frames on port %d, want only the links' %v", n, port, ports)
		}
	}

	if err := lk.Close(ctx, links[0].ID); err != nil {
		t.Fatal(err)
	}
	pe, err := proxyEntries(w.l.B)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(pe, proxyEntry{Dev: "br0", Addr: lab.PeerAddr}) {
		t.Fatalf("B lost the shared proxy entry for the peer with the first link: %v", pe)
	}
	forgetNeighbour(t, vm2, "eth0", lab.PeerAddr) // make VM 2 ask B again
	w.exchangeWith(t, vm2, vm2Addr, payload)
	if r, _ := lab.Ping(w.vm, lab.PeerAddr, 2, 300*time.Millisecond); r != 0 {
		t.Errorf("VM 10.1.0.10 still reaches the peer (%d replies) after its link closed", r)
	}
	if err := lk.Close(ctx, links[1].ID); err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		assertClean(t, lk, l, before, w)
	}
}

// forgetNeighbour deletes ns's neighbour entry for addr on dev.
func forgetNeighbour(t *testing.T, ns, dev string, addr netip.Addr) {
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
	n := &netlink.Neigh{LinkIndex: l.Attrs().Index, Family: netlink.FAMILY_V4, IP: net.IP(addr.AsSlice())}
	if err := h.NeighDel(n); err != nil {
		t.Fatalf("%s: forget neighbour %s: %v", ns, addr, err)
	}
}

// TestNoSecureRoutes: with Spec.NoSecureRoutes the secure end installs no
// route (the caller routes, e.g. a redirect route on the routing core);
// the remote end still routes by source; Verify still proves the link.
func TestNoSecureRoutes(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil)
	ctx := context.Background()
	spec := w.spec()
	spec.NoSecureRoutes = true
	link, err := lk.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, spec.ID)
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if up, routes, _ := devState(t, w.l.A, link.SecureDevice); !up || len(routes) != 0 {
		t.Errorf("secure end: up=%v routes=%v, want up without routes", up, routes)
	}
	if up, routes, _ := devState(t, w.l.B, link.RemoteDevice); !up || !slices.Equal(routes, []string{peerHost.String()}) {
		t.Errorf("remote end: up=%v routes=%v, want up with %s", up, routes, peerHost)
	}
	if _, err := lk.Verify(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if err := lk.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	assertClean(t, lk, link, nil, w)
}

// TestMoreSpecificSourceWins: at a host where two links end, one for a
// whole subnet (a batch's redirect tunnel, prepared first) and one for a
// VM of it (prepared after), the VM's traffic to the peers takes the
// VM's own link: the rule of the more specific source comes first,
// whatever the order the links came in (before, same-priority rules
// went by age and the VM's replies took the redirect, losing what was in
// it when the redirect closed).
func TestMoreSpecificSourceWins(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil)
	ctx := context.Background()
	wide, own := w.spec(), w.spec()
	wide.Remote.Protected = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}
	wide.ProxyARP, wide.NoSecureRoutes = false, true
	lw, err := lk.Prepare(ctx, wide)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, wide.ID)
	lo, err := lk.Prepare(ctx, own)
	if err != nil {
		t.Fatal(err)
	}
	closeOnCleanup(t, lk, own.ID)
	for _, id := range []string{wide.ID, own.ID} {
		if err := lk.Activate(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	dev := func(from string) string {
		t.Helper()
		out, err := lab.Exec(w.l.B, "ip", "-o", "route", "get", lab.PeerAddr.String(), "from", from, "iif", "br0")
		if err != nil {
			t.Fatalf("ip route get from %s at B: %v: %s", from, err, out)
		}
		f := strings.Fields(string(out))
		if i := slices.Index(f, "dev"); i >= 0 && i+1 < len(f) {
			return f[i+1]
		}
		t.Fatalf("ip route get from %s: no dev in %q", from, out)
		return ""
	}
	if got := dev(lab.VMAddr.String()); got != lo.RemoteDevice {
		t.Errorf("from the VM (%s) the peers are reached by %s, want its own link's %s (the subnet's is %s)", lab.VMAddr, got, lo.RemoteDevice, lw.RemoteDevice)
	}
	if got := dev("10.1.0.12"); got != lw.RemoteDevice {
		t.Errorf("from another address of the subnet: %s, want the subnet link's %s", got, lw.RemoteDevice)
	}
}

// TestCloseRemovesRulesOfAnyPriority: a link whose remote-end rule has a
// priority this sealift would not give it (an older one put every rule at
// rulePriority) is closed without leaving the rule: Close matches rules
// by source and table.
func TestCloseRemovesRulesOfAnyPriority(t *testing.T) {
	w := newWorld(t)
	lk := testLinker(t, nil)
	ctx := context.Background()
	spec := w.spec()
	spec.Remote.Protected = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}
	spec.ProxyARP, spec.NoSecureRoutes = false, true
	if _, err := lk.Prepare(ctx, spec); err != nil {
		t.Fatal(err)
	}
	if err := lk.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	rules := func() []string {
		t.Helper()
		out, err := lab.Exec(w.l.B, "ip", "-4", "rule", "show", "from", "10.1.0.0/24")
		if err != nil {
			t.Fatalf("ip rule at B: %v: %s", err, out)
		}
		return strings.Split(strings.TrimSpace(string(out)), "\n")
	}
	got := rules()
	if len(got) != 1 || !strings.HasPrefix(got[0], fmt.Sprintf("%d:", rulePriority+8)) {
		t.Fatalf("rules from the /24 at B: %q, want one at priority %d", got, rulePriority+8)
	}
	table := strings.Fields(got[0])[len(strings.Fields(got[0]))-1]
	// As an older sealift left it: the same rule at rulePriority.
	if out, err := lab.Exec(w.l.B, "ip", "-4", "rule", "del", "from", "10.1.0.0/24", "lookup", table); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := lab.Exec(w.l.B, "ip", "-4", "rule", "add", "from", "10.1.0.0/24", "lookup", table, "priority", fmt.Sprint(rulePriority)); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := lk.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if got := rules(); len(got) != 1 || got[0] != "" {
		t.Errorf("rules left at B after Close: %q", got)
	}
}
