package migrationtest

import (
	"fmt"
	"net/netip"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

// Env groups the fakes of one environment.
type Env struct {
	Hypervisor *Hypervisor
	Fencer     *Fencer
	Auditor    *Auditor
}

// Setup is a ready world: a "secure" environment (host "a", with a
// routing core) and a "cloud" environment (host "b"), one fake linker
// serving both link kinds, and a VM "vm1" running at "a".
type Setup struct {
	*World
	Secure, Cloud Env
	Linker        *Linker
	Router        *Router
	Config        migration.Config
}

// Addresses used by Setup's plans.
var (
	VMAddr  = netip.MustParsePrefix("10.1.0.10/32")
	Subnet  = netip.MustParsePrefix("10.1.0.0/24")
	Peers   = []netip.Prefix{netip.MustParsePrefix("10.1.0.20/32"), netip.MustParsePrefix("10.2.0.0/24")}
	SiteVia = netip.MustParseAddr("100.64.0.2")
)

// NewSetup builds the world with an in-memory journal.
func NewSetup() *Setup {
	w := NewWorld()
	s := &Setup{World: w, Linker: w.Linker(), Router: w.Router()}
	s.Secure = Env{w.Hypervisor("a"), w.Fencer("a"), w.Auditor("a")}
	s.Cloud = Env{w.Hypervisor("b"), w.Fencer("b"), w.Auditor("b")}
	w.AddVM("a", "vm1", "tap-vm1", "52:54:00:00:00:01")
	s.Config = migration.Config{
		Environments: map[string]migration.Environment{
			"secure": {Hypervisor: s.Secure.Hypervisor, Fencer: s.Secure.Fencer, Auditor: s.Secure.Auditor,
				Host: "a", Underlay: netip.MustParseAddr("192.0.2.1"),
				Core: &migration.Core{Host: "core", Underlay: netip.MustParseAddr("192.0.2.254"), Routing: s.Router}},
			"cloud": {Hypervisor: s.Cloud.Hypervisor, Fencer: s.Cloud.Fencer, Auditor: s.Cloud.Auditor,
				Host: "b", Underlay: netip.MustParseAddr("203.0.113.1"), SecureDevices: []string{"site0"}},
		},
		Linkers: map[tunnel.Kind]tunnel.SecureLinker{tunnel.WireGuard: s.Linker, tunnel.IPsec: s.Linker},
	}
	return s
}

// Plan returns a valid plan moving vm1 from "secure" to "cloud".
func (s *Setup) Plan() migration.Plan {
	return migration.Plan{VM: "vm1", From: "secure", To: "cloud", Addrs: []netip.Prefix{VMAddr}, Peers: Peers}
}

// SubnetPlan returns a plan whose subnet has moved (redirect tunnel, core
// watch); the core learns the route via SiteVia as soon as the redirect
// is in place.
func (s *Setup) SubnetPlan() migration.Plan {
	p := s.Plan()
	p.Peers = Peers[1:] // the whole subnet moves: no peer left inside it
	p.Subnet = &migration.Subnet{Prefix: Subnet, Moved: migration.SubnetYes, Via: SiteVia}
	s.Router.AnnounceOnRedirect(routing.Route{Prefix: Subnet, Via: SiteVia, Device: "site0", Protocol: "bgp"})
	return p
}

// Batch returns a batch moving n VMs of the subnet from "secure" to
// "cloud": vm1 (VMAddr) and, added at "a" now, vm2 .. vmN (10.1.0.11 ..),
// each with Peers outside the subnet; as with SubnetPlan, the core learns
// the subnet's route via SiteVia once a redirect is in place.
func (s *Setup) Batch(n int) migration.Batch {
	b := migration.Batch{From: "secure", To: "cloud", Subnet: migration.Subnet{Prefix: Subnet, Via: SiteVia}}
	for i := range n {
		name := fmt.Sprintf("vm%d", i+1)
		if i > 0 {
			s.AddVM("a", name, "tap-"+name, fmt.Sprintf("52:54:00:00:00:%02x", i+1))
		}
		b.Plans = append(b.Plans, migration.Plan{VM: name, Peers: Peers[1:],
			Addrs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(10 + i)}), 32)}})
	}
	s.Router.AnnounceOnRedirect(routing.Route{Prefix: Subnet, Via: SiteVia, Device: "site0", Protocol: "bgp"})
	return b
}
