package arp

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
)

// TestNAFrame decodes an unsolicited neighbour advertisement field by
// field: to all nodes, hop limit 255, Override set and Solicited clear,
// the target and its link-layer address option, and a checksum that sums
// to zero over the IPv6 pseudo-header (computed here independently).
func TestNAFrame(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	src := netip.MustParseAddr("fe80::11:22ff:fe33:4455")
	target := netip.MustParseAddr("fd00:1::10")
	for _, router := range []bool{false, true} {
		f := naFrame(mac, src, target, router)
		if !bytes.Equal(f[0:6], []byte{0x33, 0x33, 0, 0, 0, 1}) || !bytes.Equal(f[6:12], mac) {
			t.Fatalf("Ethernet %x -> %x, want %s -> 33:33:00:00:00:01", f[6:12], f[0:6], mac)
		}
		if et := binary.BigEndian.Uint16(f[12:]); et != unix.ETH_P_IPV6 {
			t.Fatalf("ethertype %#x", et)
		}
		ip := f[14:]
		plen := int(binary.BigEndian.Uint16(ip[4:]))
		if ip[0]>>4 != 6 || ip[6] != unix.IPPROTO_ICMPV6 || ip[7] != 255 || plen != len(ip)-40 {
			t.Fatalf("IPv6 header version %d next %d hop limit %d payload %d/%d", ip[0]>>4, ip[6], ip[7], plen, len(ip)-40)
		}
		s, _ := netip.AddrFromSlice(ip[8:24])
		d, _ := netip.AddrFromSlice(ip[24:40])
		if s != src || d != netip.MustParseAddr("ff02::1") {
			t.Fatalf("IPv6 %s -> %s", s, d)
		}
		na := ip[40:]
		if na[0] != 136 || na[1] != 0 {
			t.Fatalf("ICMPv6 type %d code %d, want 136 0", na[0], na[1])
		}
		if na[4]&0x20 == 0 || na[4]&0x40 != 0 || (na[4]&0x80 != 0) != router || na[4]&0x1f != 0 || na[5]|na[6]|na[7] != 0 {
			t.Fatalf("flags %08b (router %v): want O set, S clear, R = router, reserved 0", na[4], router)
		}
		if tg, _ := netip.AddrFromSlice(na[8:24]); tg != target {
			t.Fatalf("target %s", tg)
		}
		if na[24] != 2 || na[25] != 1 || !bytes.Equal(na[26:32], mac) {
			t.Fatalf("option %x, want target link-layer address %s", na[24:], mac)
		}
		pseudo := append(append(append([]byte{}, ip[8:40]...), 0, 0, byte(len(na)>>8), byte(len(na))), 0, 0, 0, 58)
		if c := lab.Checksum(append(pseudo, na...)); c != 0 {
			t.Fatalf("checksum does not verify (residue %#04x)", c)
		}
	}
}

// TestAnnounceIPv6 sends unsolicited neighbour advertisements from a
// host's LAN interface to a neighbour that holds entries at old MACs: a
// REACHABLE one for a proxied address and a router's for the host's own
// (forwarding) address. Both switch to the host's MAC at once, the
// router's keeps its router flag, and an address the neighbour has no
// entry for gets none.
func TestAnnounceIPv6(t *testing.T) {
	lab.RequireRoot(t)
	p := lab.NewPrefix()
	host, nb := p+"-h", p+"-n"
	for _, ns := range []string{host, nb} {
		if err := lab.AddNS(ns); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = netns.DeleteNamed(ns) })
	}
	if err := lab.Veth(host, "v6bh0", "", nb, "eth0", ""); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddAddr(host, "v6bh0", "fd00:1::1/64"); err != nil {
		t.Fatal(err)
	}
	if err := lab.AddAddr(nb, "eth0", "fd00:1::20/64"); err != nil {
		t.Fatal(err)
	}
	if err := lab.Sysctl(host, "net/ipv6/conf/v6bh0/forwarding", "1"); err != nil {
		t.Fatal(err)
	}
	const oldVM, oldGW = "02:00:00:00:00:99", "02:00:00:00:00:98"
	for _, c := range [][]string{
		{"fd00:1::10", "lladdr", oldVM, "dev", "eth0", "nud", "reachable"},
		{"fd00:1::1", "lladdr", oldGW, "dev", "eth0", "nud", "stale", "router"},
	} {
		if out, err := lab.Exec(nb, "ip", append([]string{"-6", "neigh", "replace"}, c...)...); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	entry := func(a string) *netlink.Neigh {
		t.Helper()
		h, err := lab.Handle(nb)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		l, err := h.LinkByName("eth0")
		if err != nil {
			t.Fatal(err)
		}
		ns, err := h.NeighList(l.Attrs().Index, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		for i := range ns {
			if ns[i].IP.Equal(net.ParseIP(a)) {
				return &ns[i]
			}
		}
		return nil
	}
	if e := entry("fd00:1::10"); e == nil || e.HardwareAddr.String() != oldVM {
		t.Fatalf("before: neighbour's entry for the VM %+v, want %s", e, oldVM)
	}
	hostMAC := func() string {
		h, err := lab.Handle(host)
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		l, err := h.LinkByName("v6bh0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().HardwareAddr.String()
	}()

	err := AnnounceAll(host, []Own{
		{Dev: "v6bh0", Addr: netip.MustParseAddr("fd00:1::10")},
		{Dev: "v6bh0", Addr: netip.MustParseAddr("fd00:1::1")},
		{Dev: "v6bh0", Addr: netip.MustParseAddr("fd00:1::30")},
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Second)
	for {
		vm, gw := entry("fd00:1::10"), entry("fd00:1::1")
		ok := vm != nil && gw != nil && vm.HardwareAddr.String() == hostMAC && gw.HardwareAddr.String() == hostMAC
		if ok || time.Now().After(deadline) {
			if !ok {
				t.Fatalf("after the announcement: VM entry %+v, gateway entry %+v, want both at %s", vm, gw, hostMAC)
			}
			if gw.Flags&netlink.NTF_ROUTER == 0 {
				t.Errorf("the gateway's entry lost its router flag: %+v", gw)
			}
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if e := entry("fd00:1::30"); e != nil {
		t.Errorf("an announcement created an entry for an address the neighbour never asked for: %+v", e)
	}
	// Announce (one address, by interface index) does the same.
	if out, err := lab.Exec(nb, "ip", "-6", "neigh", "replace", "fd00:1::10", "lladdr", oldVM, "dev", "eth0", "nud", "reachable"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	idx, err := ifindex(host, "v6bh0")
	if err != nil {
		t.Fatal(err)
	}
	if err := Announce(host, idx, netip.MustParseAddr("fd00:1::10")); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(time.Second)
	for e := entry("fd00:1::10"); e == nil || e.HardwareAddr.String() != hostMAC; e = entry("fd00:1::10") {
		if time.Now().After(deadline) {
			t.Fatalf("after Announce: VM entry %+v, want %s", e, hostMAC)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ifindex(ns, dev string) (int, error) {
	h, err := lab.Handle(ns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	l, err := h.LinkByName(dev)
	if err != nil {
		return 0, err
	}
	return l.Attrs().Index, nil
}
