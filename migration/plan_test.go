package migration_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
)

func TestPlanValidation(t *testing.T) {
	pfx := netip.MustParsePrefix
	cases := []struct {
		name string
		edit func(*migration.Plan)
		want string // the message must name the field and value
	}{
		{"empty VM", func(p *migration.Plan) { p.VM = "" }, "VM is empty"},
		{"unknown From", func(p *migration.Plan) { p.From = "nowhere" }, `From "nowhere" is not a configured environment`},
		{"unknown To", func(p *migration.Plan) { p.To = "mars" }, `To "mars" is not a configured environment`},
		{"same env", func(p *migration.Plan) { p.To = "secure" }, `To "secure" is the same environment as From`},
		{"bad link", func(p *migration.Plan) { p.Link = "gre" }, `Link "gre"`},
		{"bad fence mode", func(p *migration.Plan) { p.FenceMode = "later" }, `FenceMode "later"`},
		{"no addrs", func(p *migration.Plan) { p.Addrs = nil }, "Addrs is empty"},
		{"addr not host", func(p *migration.Plan) { p.Addrs = []netip.Prefix{pfx("10.1.0.10/24")} }, "Addrs[0] 10.1.0.10/24 is not a single address"},
		{"invalid addr", func(p *migration.Plan) { p.Addrs = []netip.Prefix{{}} }, "Addrs[0] is not a valid prefix"},
		{"no peers", func(p *migration.Plan) { p.Peers = nil }, "Peers is empty"},
		{"peer host bits", func(p *migration.Plan) { p.Peers = []netip.Prefix{pfx("10.2.0.5/24")} }, "Peers[0] 10.2.0.5/24 has host bits set (want 10.2.0.0/24)"},
		{"peer overlaps vm", func(p *migration.Plan) { p.Peers = []netip.Prefix{pfx("10.1.0.0/24")} }, "Peers 10.1.0.0/24 overlaps Addrs 10.1.0.10/32"},
		{"subnet host bits", func(p *migration.Plan) {
			p.Subnet = &migration.Subnet{Prefix: pfx("10.1.0.1/24")}
		}, "Subnet.Prefix 10.1.0.1/24 has host bits set"},
		{"vm outside subnet", func(p *migration.Plan) {
			p.Subnet = &migration.Subnet{Prefix: pfx("10.9.0.0/24")}
		}, "Addrs 10.1.0.10/32 is outside Subnet.Prefix 10.9.0.0/24"},
		{"subnet moved bad", func(p *migration.Plan) {
			p.Subnet = &migration.Subnet{Prefix: pfx("10.1.0.0/24"), Moved: "maybe"}
		}, `Subnet.Moved "maybe"`},
		{"negative timeout", func(p *migration.Plan) {
			p.Subnet = &migration.Subnet{Prefix: pfx("10.1.0.0/24"), ConvergeTimeout: -time.Second}
		}, "Subnet.ConvergeTimeout -1s is negative"},
		{"via family", func(p *migration.Plan) {
			p.Subnet = &migration.Subnet{Prefix: pfx("10.1.0.0/24"), Via: netip.MustParseAddr("2001:db8::1")}
		}, "Subnet.Via 2001:db8::1 is not of the family"},
		{"long port", func(p *migration.Plan) { p.TargetPort = "a-very-long-port-name" }, `TargetPort "a-very-long-port-name" is longer than 15`},
		{"negative downtime", func(p *migration.Plan) { p.MaxDowntime = -time.Millisecond }, "MaxDowntime -1ms is negative"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := migrationtest.NewSetup()
			m := newMigrator(t, s)
			p := s.Plan()
			c.edit(&p)
			err := m.Validate(p)
			assert.ErrorIs(t, err, migration.ErrInvalidPlan)
			assert.ErrorContains(t, err, c.want, "the message names the field and value")
			// Run refuses it the same way, before touching anything.
			rep, err := m.Run(context.Background(), p)
			assert.ErrorIs(t, err, migration.ErrInvalidPlan, "Run")
			assert.Nil(t, rep, "Run")
			assert.Empty(t, s.Calls(), "a refused plan touched the fakes")
		})
	}
	// A subnet plan needs the source's routing core.
	s := migrationtest.NewSetup()
	env := s.Config.Environments["secure"]
	env.Core = nil
	s.Config.Environments["secure"] = env
	p := s.SubnetPlan()
	err := newMigrator(t, s).Validate(p)
	assert.ErrorIs(t, err, migration.ErrInvalidPlan)
	assert.ErrorContains(t, err, `From "secure" has no routing Core`)
}

// FuzzPlanValidate: validation never panics, never touches a fake, and
// any plan it accepts runs to a definite outcome with the VM in exactly
// one place.
func FuzzPlanValidate(f *testing.F) {
	f.Add("vm1", "secure", "cloud", "wireguard", "at-switchover", "10.1.0.10/32", "10.2.0.0/24", "", "")
	f.Add("vm1", "secure", "cloud", "ipsec", "before-copy", "10.1.0.10/32", "10.1.0.20/32", "10.1.0.0/24", "yes")
	f.Add("", "x", "x", "", "", "", "", "", "")
	f.Fuzz(func(t *testing.T, vm, from, to, link, mode, addr, peer, subnet, moved string) {
		s := migrationtest.NewSetup()
		m := newMigrator(t, s)
		p := migration.Plan{VM: vm, From: from, To: to, Link: tunnelKind(link), FenceMode: migration.FenceMode(mode)}
		if a, err := netip.ParsePrefix(addr); err == nil {
			p.Addrs = []netip.Prefix{a}
		}
		if a, err := netip.ParsePrefix(peer); err == nil {
			p.Peers = []netip.Prefix{a}
		}
		if a, err := netip.ParsePrefix(subnet); err == nil {
			p.Subnet = &migration.Subnet{Prefix: a, Moved: migration.SubnetMoved(moved), Via: migrationtest.SiteVia}
		}
		err := m.Validate(p)
		require.Empty(t, s.Calls(), "Validate touched the fakes")
		if err != nil {
			require.ErrorIs(t, err, migration.ErrInvalidPlan)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		rep, _ := m.Run(ctx, p)
		if rep == nil {
			return // e.g. a busy journal; nothing touched
		}
		require.Empty(t, s.Violations(), "VM in two places")
		if vm == "vm1" {
			require.Len(t, s.Where("vm1"), 1, "vm1 active at %v", s.Where("vm1"))
		}
	})
}
