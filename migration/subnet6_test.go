package migration_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/routing"
)

var (
	subnet6 = netip.MustParsePrefix("fd00:1::/64")
	via6    = netip.MustParseAddr("fd00:64::2")
)

// dualStackPlan: the subnet plan with the VM's IPv6 address, an IPv6
// peer subnet and the subnet's IPv6 prefix moving with it.
func dualStackPlan(s *migrationtest.Setup) migration.Plan {
	p := s.SubnetPlan()
	p.Addrs = append(p.Addrs, netip.MustParsePrefix("fd00:1::10/128"))
	p.Peers = append(p.Peers, netip.MustParsePrefix("fd00:2::/64"))
	p.Subnet.Prefix6, p.Subnet.Via6 = subnet6, via6
	return p
}

// TestSubnetDualStack: a dual-stack subnet's two prefixes are redirected
// in the hook, the Migrator waits for the core's real route to each
// (the IPv6 one announced last), and both redirects go with the tunnel.
func TestSubnetDualStack(t *testing.T) {
	s := migrationtest.NewSetup()
	p := dualStackPlan(s)
	p.Subnet.ConvergeTimeout = 20 * time.Second
	m, j := journaled(t, s)
	// The core learns the IPv6 route only once both redirects exist: the
	// Migrator must still be waiting for it then.
	go func() {
		for {
			rds, _ := s.Router.Redirects(context.Background())
			if len(rds) == 2 {
				time.Sleep(50 * time.Millisecond)
				s.Router.Announce(routing.Route{Prefix: subnet6, Via: via6, Device: "site0", Protocol: "bgp"})
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	rep, err := m.Run(context.Background(), p)
	require.NoError(t, err)
	checkEnd(t, s, j, rep, err, want{outcome: migration.Completed, host: "b", state: hypervisor.Running})
	assert.True(t, rep.SubnetMoved)
	assert.Empty(t, rep.Warnings)
	require.NotNil(t, rep.Converged)
	assert.Equal(t, subnet6, rep.Converged.Route.Prefix, "the last prefix to converge")
	assert.GreaterOrEqual(t, rep.Converged.After, 50*time.Millisecond, "the whole wait")
	rds, err := s.Router.Redirects(context.Background())
	require.NoError(t, err)
	assert.Empty(t, rds, "both redirects removed")
	require.NotNil(t, rep.Redirect)
	assert.Contains(t, rep.Redirect.Spec.Remote.Protected, subnet6, "the redirect tunnel carries the IPv6 prefix")
}

// TestSubnetDualStackIPv6NeverConverges: the IPv4 route comes, the IPv6
// one never does: the subnet has not converged, both redirects and the
// tunnel stay.
func TestSubnetDualStackIPv6NeverConverges(t *testing.T) {
	s := migrationtest.NewSetup()
	p := dualStackPlan(s)
	p.Subnet.ConvergeTimeout = 300 * time.Millisecond
	m, _ := journaled(t, s)
	rep, err := m.Run(context.Background(), p)
	require.NoError(t, err)
	assert.Equal(t, migration.Completed, rep.Outcome)
	assert.Nil(t, rep.Converged)
	require.Len(t, rep.Warnings, 1)
	assert.Contains(t, rep.Warnings[0], "fd00:1::/64")
	rds, err := s.Router.Redirects(context.Background())
	require.NoError(t, err)
	assert.Len(t, rds, 2, "both redirects kept")
}

// TestSubnetDualStackPlanChecks: Prefix6 is IPv6, masked, beside an
// IPv4 Prefix; each address lies in the prefix of its family.
func TestSubnetDualStackPlanChecks(t *testing.T) {
	for _, c := range []struct {
		name string
		edit func(*migration.Plan)
		msg  string
	}{
		{"v4 prefix6", func(p *migration.Plan) { p.Subnet.Prefix6 = netip.MustParsePrefix("10.3.0.0/24") }, "Subnet.Prefix6 10.3.0.0/24"},
		{"host bits", func(p *migration.Plan) { p.Subnet.Prefix6 = netip.MustParsePrefix("fd00:1::1/64") }, "has host bits set"},
		{"v4 via6", func(p *migration.Plan) { p.Subnet.Via6 = netip.MustParseAddr("100.64.0.9") }, "Subnet.Via6 100.64.0.9"},
		{"outside", func(p *migration.Plan) { p.Subnet.Prefix6 = netip.MustParsePrefix("fd00:9::/64") }, "Addrs fd00:1::10/128 is outside"},
		{"no prefix6", func(p *migration.Plan) { p.Subnet.Prefix6, p.Subnet.Via6 = netip.Prefix{}, netip.Addr{} }, "Addrs fd00:1::10/128 is outside Subnet.Prefix 10.1.0.0/24"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := migrationtest.NewSetup()
			p := dualStackPlan(s)
			c.edit(&p)
			m, _ := journaled(t, s)
			_, err := m.Run(context.Background(), p)
			require.ErrorIs(t, err, migration.ErrInvalidPlan)
			assert.ErrorContains(t, err, c.msg)
		})
	}
}
