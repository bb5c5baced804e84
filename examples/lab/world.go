package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"

	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/internal/guest"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/ipsec"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/routing/gobgp"
	"github.com/sealift/sealift/routing/netlinkroute"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// Lab addresses beyond internal/lab's reference topology.
var (
	vm2Addr     = netip.MustParseAddr("10.1.0.11")
	unusedAddr  = netip.MustParseAddr("10.1.0.99") // in the moved subnet, no VM
	vm2Addr6    = netip.MustParseAddr("fd00:1::11")
	coreSite    = netip.MustParseAddr("100.64.0.1") // core's end of the operator's site link
	bSite       = netip.MustParseAddr("100.64.0.2") // B's end: the proper route's next hop
	coreSite6   = netip.MustParseAddr("fd00:64::1") // the same, IPv6 (-subnet -ipv6)
	bSite6      = netip.MustParseAddr("fd00:64::2")
	unusedAddr6 = netip.MustParseAddr("fd00:1::99")
	siteLinkID  = "site"
)

// The baselines' own network: their guests live on a bridge br9 in A and
// B, stretched at layer 2 by a plain VXLAN across a network of their own
// (bwan), so they migrate A -> B exactly as the secure guests do, with
// nothing of sealift, and none of their traffic is on the secure wan.
var (
	baseNet    = netip.MustParsePrefix("10.9.0.0/24")
	baseGW     = netip.MustParseAddr("10.9.0.1") // nobody: the peer is on-link
	basePeer   = netip.MustParseAddr("10.9.0.20")
	baseUnderA = netip.MustParseAddr("10.254.1.1")
	baseUnderB = netip.MustParseAddr("10.254.2.1")
	baseTLS    = vmSpec{name: "basetls", addr: netip.MustParseAddr("10.9.0.10"), subnet: baseNet, gw: baseGW, bridge: "br9"}
	basePlain  = vmSpec{name: "baseplain", addr: netip.MustParseAddr("10.9.0.11"), subnet: baseNet, gw: baseGW, bridge: "br9"}
)

// vmSpec is one guest of the lab.
type vmSpec struct {
	name   string
	addr   netip.Addr
	subnet netip.Prefix
	gw     netip.Addr
	bridge string
	// addr6: the guest's IPv6 address in lab.VMSubnet6 (dual-stack
	// guests, -ipv6), gateway lab.Gateway6; invalid for IPv4 only.
	addr6 netip.Addr
}

// secureVM is a guest on br0; a6 is its IPv6 address (invalid: IPv4 only).
func secureVM(name string, a, a6 netip.Addr) vmSpec {
	return vmSpec{name: name, addr: a, subnet: lab.VMSubnet, gw: lab.Gateway, bridge: "br0", addr6: a6}
}

func (v vmSpec) net(tap string) guest.Net {
	n := guest.Net{Addr: netip.PrefixFrom(v.addr, v.subnet.Bits()), Gateway: v.gw, MAC: guest.MAC(v.addr), Tap: tap, Bridge: v.bridge}
	if v.addr6.IsValid() {
		n.Addr6, n.Gateway6 = netip.PrefixFrom(v.addr6, lab.VMSubnet6.Bits()), lab.Gateway6
	}
	return n
}

// underA, underCore and underB are A's, the core's and B's underlay
// addresses: the link's endpoints and the migration stream's (IPv6 with
// -wan6, the wan being IPv6 only).
func (w *world) underA() netip.Addr {
	if w.opts.WAN6 {
		return lab.AUplink6
	}
	return lab.AUplink
}

func (w *world) underCore() netip.Addr {
	if w.opts.WAN6 {
		return lab.CoreWAN6
	}
	return lab.CoreWAN
}

// underlays are the hosts' addresses the wan capture expects link and
// migration traffic between: -wan6, the IPv6 ones only (an IPv4 frame on
// an IPv6-only wan is of no expected kind); else both families'.
func (w *world) underlays() []netip.Addr {
	v6 := []netip.Addr{lab.AUplink6, lab.CoreWAN6, lab.BUnderlay6}
	if w.opts.WAN6 {
		return v6
	}
	return append([]netip.Addr{lab.AUplink, lab.CoreWAN, lab.BUnderlay}, v6...)
}

func (w *world) underB() netip.Addr {
	if w.opts.WAN6 {
		return lab.BUnderlay6
	}
	return lab.BUnderlay
}

// world is the built lab: topology, guests and the real backends.
type world struct {
	opts   Options
	log    *slog.Logger
	dir    string
	l      *lab.Lab
	img    guest.Image
	vms    []vmSpec
	tlsDir string // X.509 credentials for the migration stream (A and B: libvirt)
	// tlsDirA, tlsDirB: A's and B's own credentials (QEMU), one CA.
	tlsDirA, tlsDirB string
	hv               *hypervisors
	// The baselines: the same backend at A and B over bwan, with a TLS
	// stream (bt*) and without (bp*); bpeer pings their guests from A's
	// br9; bt/bpTap are their ports at B.
	btA, btB, bpA, bpB hypervisor.Hypervisor
	btTap, bpTap       string
	bwan, bpeer        string
	// current is the VM being migrated; resumes gets, once its incoming
	// instance exists, the channel that will tell when it resumed.
	current atomic.Value
	// loaded is when the incoming QEMU at B last said it had the whole VM
	// (time.Time; its MIGRATION "completed" event).
	loaded  atomic.Value
	resumes chan (<-chan time.Time)
	audit   *conntrack.Auditor
	wan     *lab.Capture // the wan, from the topology on
	links   map[tunnel.Kind]tunnel.SecureLinker
	wg      *wireguard.Linker
	core    *gobgp.Watcher // the routing core's BGP speaker (subnet scenario)
	bgpB    *gobgp.Watcher // B's speaker
	cfg     migration.Config
	rm      *remote // -remote: the agents and the controller's namespace
	// batchLeft: batch members yet to complete (-vms).
	batchLeft atomic.Int32
}

// build makes the topology, starts the wan capture, boots the guests at
// A and wires the backends. On an error after the capture started it
// returns the world too, so the run can still report what the wan saw.
func build(ctx context.Context, t lab.TB, o Options, log *slog.Logger) (*world, error) {
	w := &world{opts: o, log: log, resumes: make(chan (<-chan time.Time), 1)}
	var err error
	if w.dir, err = os.MkdirTemp("", "sealift-lab-"); err != nil {
		return nil, err
	}
	t.Cleanup(func() {
		if o.Logs != "" { // the agents' and the controller's logs, the controller's journal
			keepLogs(w.dir, o.Logs, log)
		}
		os.RemoveAll(w.dir)
	})
	var a6, a62 netip.Addr
	if o.IPv6 {
		a6, a62 = lab.VMAddr6, vm2Addr6
	}
	w.vms = []vmSpec{secureVM("vm1", lab.VMAddr, a6)}
	if o.Subnet {
		w.vms = append(w.vms, secureVM("vm2", vm2Addr, a62))
	}
	if o.VMs > 0 {
		w.vms = batchVMs(o.VMs, o.IPv6)
	}
	log.Info("building the guest image (Debian kernel + busybox + agent)")
	if w.img, err = guest.Build(ctx, guest.WithLogger(log)); err != nil {
		return nil, err
	}
	base := o.NSPrefix
	if base == "" {
		base = "sl"
	}
	w.l = lab.NewWithPrefix(t, lab.NewPrefixFrom(base))
	if o.NSPrefix != "" && o.NSPrefix != "sl" {
		// The site VPN's WireGuard devices are named after its link ID,
		// and their UAPI sockets are host-wide: another lab on the machine
		// must not share them.
		// Link IDs hold at most 8 of a-z0-9: "s" and the prefix's random
		// part.
		siteLinkID = "s" + w.l.Prefix[len(w.l.Prefix)-6:]
	}
	// The guests replace the reference topology's stand-in VM endpoint.
	if err := netns.DeleteNamed(w.l.VM); err != nil {
		return nil, err
	}
	if err := w.topology(); err != nil {
		return nil, err
	}
	if o.IPv6 || o.WAN6 {
		if err := w.l.DualStack(o.WAN6); err != nil {
			return nil, fmt.Errorf("dual-stack topology: %w", err)
		}
	}
	if o.Subnet && o.IPv6 {
		// The core's IGP route to the subnet's IPv6 prefix, as IPv4's:
		// metric 8192, below the redirect's (4096) and BGP's (20).
		for _, c := range [][]string{
			{"-6", "route", "replace", lab.VMSubnet6.String(), "via", lab.AUplink6.String(), "metric", "8192"},
			{"-6", "route", "del", lab.VMSubnet6.String(), "via", lab.AUplink6.String(), "metric", "1024"},
		} {
			if out, err := lab.Exec(w.l.Core, "ip", c...); err != nil {
				return nil, fmt.Errorf("%v: %s", err, out)
			}
		}
	}
	if err := w.baselineNet(); err != nil {
		return nil, fmt.Errorf("baseline network: %w", err)
	}
	// The wan, every interface, from here to the end of the run: each
	// packet counted once, where it entered the untrusted network.
	if w.wan, err = lab.StartCaptureWith(w.l.WAN, lab.CaptureOptions{IngressOnly: true, Marker: marker,
		Classify: &lab.Classifier{Watch: []netip.Prefix{lab.VMSubnet, lab.Peer2Net, lab.VMSubnet6, lab.Peer2Net6},
			Underlay: w.underlays()}}); err != nil {
		return nil, err
	}
	t.Cleanup(func() { w.wan.Stop() })
	// The migration stream crosses the wan too: TLS, with a fresh CA.
	// libvirt's daemons share one directory; QEMU hosts get credentials
	// of their own (one CA), so each target accepts the stream from the
	// source host alone (hypervisor.VM.Identity, QEMU's tls-authz).
	migAddrs := []netip.Addr{lab.AUplink, lab.BUnderlay, baseUnderA, baseUnderB, lab.AUplink6, lab.BUnderlay6}
	w.tlsDir = filepath.Join(w.dir, "tls")
	if err := migtls.NewDir(w.tlsDir, migAddrs); err != nil {
		return w, err
	}
	ca, err := migtls.NewCA()
	if err != nil {
		return w, err
	}
	w.tlsDirA, w.tlsDirB = filepath.Join(w.dir, "tls-a"), filepath.Join(w.dir, "tls-b")
	if err := ca.HostDir(w.tlsDirA, "host-a", migAddrs); err != nil {
		return w, err
	}
	if err := ca.HostDir(w.tlsDirB, "host-b", migAddrs); err != nil {
		return w, err
	}
	switch {
	case o.Remote:
		if err := w.startRemote(ctx, t); err != nil {
			return w, fmt.Errorf("remote lab: %w", err)
		}
		w.hv, err = w.remoteQEMU(t)
	case o.Hypervisor == "libvirt":
		w.hv, err = w.libvirtHypervisors(ctx, t)
	default:
		w.hv, err = w.qemuHypervisors(t)
	}
	if err != nil {
		return w, err
	}
	for i, v := range w.vms {
		if err := w.hv.boot(ctx, i, v); err != nil {
			return w, fmt.Errorf("boot %s at A: %w", v.name, err)
		}
	}
	baselines := []vmSpec{baseTLS, basePlain}
	if o.Kill != "" || o.VMs > 0 { // the crash scenario measures no blackout; a batch compares with itself
		baselines = nil
	} else {
		if w.btA, w.btB, w.btTap, err = w.hv.baseline(ctx, t, baseTLS, true); err != nil {
			return w, fmt.Errorf("baseline guest %s: %w", baseTLS.name, err)
		}
		if w.bpA, w.bpB, w.bpTap, err = w.hv.baseline(ctx, t, basePlain, false); err != nil {
			return w, fmt.Errorf("baseline guest %s: %w", basePlain.name, err)
		}
	}
	for _, v := range w.vms {
		if _, err := guest.WaitReady(ctx, w.l.Peer2, v.addr); err != nil {
			return w, fmt.Errorf("%s not ready: %w", v.name, err)
		}
	}
	for _, v := range baselines {
		if _, err := guest.WaitReady(ctx, w.bpeer, v.addr); err != nil {
			return w, fmt.Errorf("%s not ready: %w", v.name, err)
		}
	}
	if o.Remote {
		if o.Subnet {
			if err := w.remoteSubnet(ctx, t); err != nil {
				return w, fmt.Errorf("remote lab: %w", err)
			}
		}
		if err := w.startAgents(ctx, t); err != nil {
			return w, fmt.Errorf("remote lab: %w", err)
		}
		w.hv.a, w.hv.b = w.rm.agents["host-a"].client.Hypervisor(), w.rm.agents["host-b"].client.Hypervisor()
		return w, nil
	}
	return w, w.backends(ctx, t)
}

// topology adds what the scenario needs to the reference topology.
func (w *world) topology() error {
	l := w.l
	// B routes traffic of moved VMs between links and its bridge; replies
	// to peers may leave by another link than the one a request came in.
	for _, k := range []string{"all", "default"} {
		if err := lab.Sysctl(l.B, "net/ipv4/conf/"+k+"/rp_filter", "0"); err != nil {
			return err
		}
	}
	// The hosts run a stateful firewall, as hypervisor hosts do: without a
	// rule that uses conntrack a namespace tracks no connections, and the
	// audit (conn/conntrack) would see none.
	for _, h := range []string{l.A, l.B} {
		if out, err := lab.Exec(h, "nft", "add table inet lab_stateful; add chain inet lab_stateful tracked { type filter hook forward priority 10; }; add rule inet lab_stateful tracked ct state established counter"); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
	}
	if !w.opts.Subnet {
		return nil
	}
	// Subnet scenario: the whole 10.1.0.0/24 moves; no peer stays in it.
	if err := netns.DeleteNamed(l.Peer); err != nil {
		return err
	}
	// The core's route to the subnet through A is its IGP route: metric
	// 8192, so the redirect (4096) beats it and BGP's (20) beats both.
	if _, err := lab.Exec(l.Core, "ip", "route", "replace", "10.1.0.0/24", "via", lab.AUplink.String(), "metric", "8192"); err != nil {
		return err
	}
	_, err := lab.Exec(l.Core, "ip", "route", "del", "10.1.0.0/24", "via", lab.AUplink.String(), "metric", "0")
	return err
}

// baselineNet builds the baselines' network: bwan routes between A's
// and B's addresses on it, a VXLAN over it joins br9 at A and B, and a
// peer (bpeer) sits on A's br9.
func (w *world) baselineNet() error {
	l := w.l
	w.bwan, w.bpeer = l.Prefix+"-bwan", l.Prefix+"-bpeer"
	steps := []func() error{
		func() error { return l.AddHost(w.bwan) },
		func() error { return l.AddHost(w.bpeer) },
		func() error { return lab.Veth(l.A, "bw0", baseUnderA.String()+"/30", w.bwan, "a0", "10.254.1.2/30") },
		func() error { return lab.Veth(w.bwan, "b0", "10.254.2.2/30", l.B, "bw0", baseUnderB.String()+"/30") },
		func() error { return lab.AddRoute(l.A, "10.254.2.0/30", "10.254.1.2", "") },
		func() error { return lab.AddRoute(l.B, "10.254.1.0/30", "10.254.2.2", "") },
		func() error { return lab.Sysctl(w.bwan, "net/ipv4/ip_forward", "1") },
		func() error { return lab.Bridge(l.A, "br9", "") },
		func() error { return lab.Bridge(l.B, "br9", "") },
		func() error { return l.Endpoint(w.bpeer, l.A, "bp0", "br9", basePeer.String()+"/24", netip.Addr{}) },
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return err
		}
	}
	// VXLAN's 50 bytes of overhead fit: the underlay links carry 1600.
	for _, c := range [][]string{
		{l.A, "bw0"}, {w.bwan, "a0"}, {w.bwan, "b0"}, {l.B, "bw0"},
	} {
		if _, err := lab.Exec(c[0], "ip", "link", "set", c[1], "mtu", "1600"); err != nil {
			return err
		}
	}
	for _, h := range []struct {
		ns           string
		local, other netip.Addr
	}{{l.A, baseUnderA, baseUnderB}, {l.B, baseUnderB, baseUnderA}} {
		if _, err := lab.Exec(h.ns, "ip", "link", "add", "vx9", "type", "vxlan", "id", "9", "local", h.local.String(),
			"remote", h.other.String(), "dstport", "4789"); err != nil {
			return err
		}
		if _, err := lab.Exec(h.ns, "ip", "link", "set", "vx9", "master", "br9", "up"); err != nil {
			return err
		}
	}
	return nil
}

// backends builds the real backends and the Migrator's configuration.
func (w *world) backends(ctx context.Context, t lab.TB) error {
	l := w.l
	w.wg = wireguard.New(wireguard.WithStateDir(filepath.Join(w.dir, "wg")), wireguard.WithLogger(w.log))
	w.links = map[tunnel.Kind]tunnel.SecureLinker{tunnel.WireGuard: w.wg, tunnel.IPsec: ipsec.New(ipsec.WithLogger(w.log))}
	t.Cleanup(func() { w.closeLinks() })
	w.audit = conntrack.New(conntrack.WithHost(l.B), conntrack.WithLogger(w.log))
	secure := migration.Environment{
		Hypervisor: w.hv.a, Fencer: nft.New(nft.WithHost(l.A), nft.WithLogger(w.log)),
		Auditor: conntrack.New(conntrack.WithHost(l.A)), Host: l.A, Underlay: w.underA(),
	}
	cloud := migration.Environment{
		Hypervisor: w.hv.b, Fencer: nft.New(nft.WithHost(l.B), nft.WithLogger(w.log)),
		Auditor: w.audit, Host: l.B, Underlay: w.underB(),
	}
	if w.opts.Subnet {
		site, err := w.siteLink(ctx)
		if err != nil {
			return err
		}
		cloud.SecureDevices = []string{site.RemoteDevice}
		if err := w.speakers(ctx, t); err != nil {
			return err
		}
	}
	// The Migrator watches the core's kernel routing table (what really
	// forwards), which BGP feeds in the subnet scenario.
	secure.Core = &migration.Core{Host: l.Core, Underlay: w.underCore(),
		Routing: netlinkroute.New(netlinkroute.WithHost(l.Core), netlinkroute.WithLogger(w.log))}
	w.cfg = migration.Config{
		Environments: map[string]migration.Environment{"secure": secure, "cloud": cloud},
		Linkers:      w.links,
		Logger:       w.log,
	}
	return nil
}

// siteLink is the operator's permanent site-to-site VPN between the
// routing core and B (WireGuard across the wan), over which routes to the
// subnet's new place go once BGP has converged. Routes into it come from
// BGP (NoSecureRoutes), except the one to B's site address.
func (w *world) siteLink(ctx context.Context) (tunnel.Link, error) {
	l := w.l
	spec := tunnel.Spec{ID: siteLinkID, Kind: tunnel.WireGuard, NoSecureRoutes: true,
		Secure: tunnel.End{Host: l.Core, Underlay: w.underCore(),
			Protected: []netip.Prefix{lab.Peer2Net, netip.PrefixFrom(coreSite, 32)}},
		Remote: tunnel.End{Host: l.B, Underlay: w.underB(),
			Protected: []netip.Prefix{lab.VMSubnet, netip.PrefixFrom(bSite, 32)}},
	}
	if w.opts.IPv6 { // the dual-stack subnet's IPv6 routes go over it too
		spec.Secure.Protected = append(spec.Secure.Protected, lab.Peer2Net6, netip.PrefixFrom(coreSite6, 128))
		spec.Remote.Protected = append(spec.Remote.Protected, lab.VMSubnet6, netip.PrefixFrom(bSite6, 128))
	}
	site, err := w.wg.Prepare(ctx, spec)
	if err != nil {
		return site, fmt.Errorf("site link: %w", err)
	}
	if err := w.wg.Activate(ctx, spec.ID); err != nil {
		return site, fmt.Errorf("site link: %w", err)
	}
	steps := []func() error{
		func() error { return lab.AddAddr(l.Core, "lo", coreSite.String()+"/32") },
		func() error { return lab.AddAddr(l.B, "lo", bSite.String()+"/32") },
		func() error { return lab.AddRoute(l.Core, bSite.String()+"/32", "", site.SecureDevice) },
	}
	if w.opts.IPv6 {
		steps = append(steps,
			func() error { return lab.AddAddr(l.Core, "lo", coreSite6.String()+"/128") },
			func() error { return lab.AddAddr(l.B, "lo", bSite6.String()+"/128") },
			func() error { return lab.AddRoute(l.Core, bSite6.String()+"/128", "", site.SecureDevice) })
	}
	for _, s := range steps {
		if err := s(); err != nil {
			return site, fmt.Errorf("site link: %w", err)
		}
	}
	return site, nil
}

// speakers starts the core's BGP speaker (with a FIB stand-in for zebra)
// and B's, joined over the site link.
func (w *world) speakers(ctx context.Context, t lab.TB) error {
	l := w.l
	var err error
	w.core, err = gobgp.New(ctx, gobgp.WithHost(l.Core), gobgp.WithLogger(w.log), gobgp.WithSpeaker(gobgp.Speaker{
		AS: 65001, RouterID: coreSite, ListenAddrs: []netip.Addr{coreSite},
		Neighbors: []gobgp.Neighbor{{Address: bSite, AS: 65002}}}))
	if err != nil {
		return err
	}
	t.Cleanup(func() { w.core.Close(context.Background()) })
	w.bgpB, err = gobgp.New(ctx, gobgp.WithHost(l.B), gobgp.WithLogger(w.log), gobgp.WithSpeaker(gobgp.Speaker{
		AS: 65002, RouterID: bSite, ListenAddrs: []netip.Addr{bSite},
		Neighbors: []gobgp.Neighbor{{Address: coreSite, AS: 65001}}}))
	if err != nil {
		return err
	}
	t.Cleanup(func() { w.bgpB.Close(context.Background()) })
	closeSessions, err := gobgp.Connect(ctx, w.core, coreSite, w.bgpB, bSite)
	if err != nil {
		return err
	}
	t.Cleanup(closeSessions)
	stopFIB, err := w.core.SyncFIB(ctx, 20)
	if err != nil {
		return err
	}
	t.Cleanup(stopFIB)
	return nil
}

// announceSubnet makes B's speaker announce the subnet (both prefixes of
// a dual-stack one): what the target environment's routing does once
// the subnet is up there.
func (w *world) announceSubnet() {
	if err := w.bgpB.Announce(context.Background(), lab.VMSubnet, bSite); err != nil {
		w.log.Error("B: announce the subnet", "err", err)
	}
	if w.opts.IPv6 {
		if err := w.bgpB.Announce(context.Background(), lab.VMSubnet6, bSite6); err != nil {
			w.log.Error("B: announce the subnet's IPv6 prefix", "err", err)
		}
	}
}

// closeLinks closes every link the lab's linkers still have.
func (w *world) closeLinks() {
	ctx := context.Background()
	for _, lk := range w.links {
		ls, err := lk.List(ctx)
		if err != nil {
			continue
		}
		for _, k := range ls {
			if err := lk.Close(ctx, k.ID); err != nil && !errors.Is(err, tunnel.ErrNoLink) {
				w.log.Warn("close link", "id", k.ID, "err", err)
			}
		}
	}
}
