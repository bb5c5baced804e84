package conntrack_test

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/internal/conntest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// TestAuditAtTargetOverWireGuard is the patent's case with the real
// secure link: the VM moved to host B, whose sockets B cannot reach; B
// routes between its bridge, the wan (in clear) and a WireGuard link to A.
// Sessions: plaintext to peer2:8080 and TLS to peer2:443 across the wan,
// and one to the peer at A (10.1.0.20) through the link. The audit on B
// keeps the TLS and link sessions and resets the plain one at both ends;
// once the link also covers peer2, the client's new connection is secure.
func TestAuditAtTargetOverWireGuard(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	// Move the VM to B: 10.1.0.10 exists only behind B's br0.
	h, err := lab.Handle(l.A)
	if err != nil {
		t.Fatal(err)
	}
	if port, err := h.LinkByName("vm0"); err == nil {
		if err := h.LinkDel(port); err != nil {
			t.Fatal(err)
		}
	}
	h.Close()
	if err := netns.DeleteNamed(l.VM); err != nil {
		t.Fatal(err)
	}
	vm, err := l.AttachVM("vmb", l.B, "vmb0", "10.1.0.10/24")
	if err != nil {
		t.Fatal(err)
	}
	// The clear path from peer2 back to the moved VM, across the wan.
	for _, r := range []struct{ ns, dst, gw string }{
		{l.Core, "10.1.0.10/32", "198.51.100.2"}, {l.WAN, "10.1.0.10/32", "203.0.113.1"},
	} {
		if err := lab.AddRoute(r.ns, r.dst, r.gw, ""); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := lab.Exec(l.B, "nft", "add table inet track; add chain inet track tracked { type filter hook forward priority 0; }; add rule inet track tracked ct state established counter"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	srvTLS, cliTLS := conntest.SelfSigned(t, "10.2.0.20")
	plainSrv := conntest.ListenIn(t, l.Peer2, "tcp4", "10.2.0.20:8080", nil)
	conntest.ListenIn(t, l.Peer2, "tcp4", "10.2.0.20:443", srvTLS)
	conntest.ListenIn(t, l.Peer, "tcp4", "10.1.0.20:9000", nil)
	plain := conntest.DialIn(t, vm, "tcp4", "10.2.0.20:8080")
	tlsConn := tls.Client(conntest.DialIn(t, vm, "tcp4", "10.2.0.20:443"), cliTLS)

	ctx := t.Context()
	linker := wireguard.New(wireguard.WithStateDir(t.TempDir()))
	open := func(id string, protected ...netip.Prefix) tunnel.Link {
		t.Helper()
		lk, err := linker.Prepare(ctx, tunnel.Spec{ID: id, Kind: tunnel.WireGuard, ProxyARP: true,
			Secure: tunnel.End{Host: l.A, Underlay: lab.AUplink, Protected: protected},
			Remote: tunnel.End{Host: l.B, Underlay: lab.BUnderlay, Protected: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}})
		if err != nil {
			lab.Missing(t, "working tunnel/wireguard backend: "+err.Error())
		}
		t.Cleanup(func() { _ = linker.Close(context.Background(), id) })
		if err := linker.Activate(ctx, id); err != nil {
			t.Fatalf("activate link %s: %v", id, err)
		}
		return lk
	}
	id := lab.NewPrefixFrom("") // random hex: device names are host-wide
	link := open("a"+id, netip.PrefixFrom(lab.PeerAddr, 32))
	secure := conntest.DialIn(t, vm, "tcp4", "10.1.0.20:9000")
	for name, c := range map[string]net.Conn{"plain": plain, "tls": tlsConn, "secure": secure} {
		if err := conntest.Echo(c, "hello "+name); err != nil {
			t.Fatalf("%s echo: %v", name, err)
		}
	}
	if _, err := linker.Verify(ctx, link.ID); err != nil {
		t.Fatalf("link not proven: %v", err)
	}

	a := conntrack.New(conntrack.WithHost(l.B))
	sel := conn.Selector{Addrs: []netip.Prefix{netip.PrefixFrom(lab.VMAddr, 32)}}
	conns, err := a.List(ctx, sel)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"10.2.0.20:8080": "wan0", "10.2.0.20:443": "wan0", "10.1.0.20:9000": link.RemoteDevice}
	if len(conns) != len(want) {
		t.Fatalf("List: %v", conns)
	}
	for _, c := range conns {
		if want[c.Remote.String()] != c.Device {
			t.Errorf("%v on %q, want %q", c, c.Device, want[c.Remote.String()])
		}
	}
	policy := conn.Policy{WireGuardDevices: []string{link.RemoteDevice}}
	cl := conn.Classify(conns, policy)
	if len(cl.Reset) != 1 || cl.Reset[0].Conn.Remote.String() != "10.2.0.20:8080" || len(cl.Keep) != 2 {
		t.Fatalf("Classify: %+v", cl)
	}
	res, err := a.Reset(ctx, sel, []conn.Conn{cl.Reset[0].Conn})
	if err != nil || res.Reset != 1 {
		t.Fatalf("Reset = %+v, %v", res, err)
	}
	if err := conntest.ReadErr(plain); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("VM side of plain session: %v, want ECONNRESET", err)
	}
	if err := plainSrv.EndOf(t, plain.LocalAddr().String()); !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("peer2 side of plain session: %v, want ECONNRESET", err)
	}
	for name, c := range map[string]net.Conn{"tls": tlsConn, "secure": secure} {
		if err := conntest.Echo(c, "still "+name); err != nil {
			t.Errorf("%s session after audit: %v", name, err)
		}
	}

	// The link now covers peer2 as well (a new link; A reaches peer2 via
	// core, and core sends the VM's traffic back to A).
	if err := linker.Close(ctx, link.ID); err != nil {
		t.Fatal(err)
	}
	link = open("b"+id, netip.PrefixFrom(lab.PeerAddr, 32), netip.PrefixFrom(lab.Peer2Addr, 32))
	if out, err := lab.Exec(l.Core, "ip", "route", "replace", "10.1.0.10/32", "via", "10.255.1.1"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	re := conntest.DialIn(t, vm, "tcp4", "10.2.0.20:8080")
	if err := conntest.Echo(re, "again"); err != nil {
		t.Fatal(err)
	}
	policy = conn.Policy{WireGuardDevices: []string{link.RemoteDevice}}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	vs, err := conn.WaitReestablished(wctx, a, sel, []conn.Conn{cl.Reset[0].Conn}, policy)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 1 || !vs[0].Secure || vs[0].Reason != conn.ReasonWireGuard || vs[0].Conn.Local.String() != re.LocalAddr().String() {
		t.Fatalf("reestablished: %+v (client %s)", vs, re.LocalAddr())
	}
	if _, err := linker.Verify(ctx, link.ID); err != nil {
		t.Fatalf("new link not proven: %v", err)
	}
}
