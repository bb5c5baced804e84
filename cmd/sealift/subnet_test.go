package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSubnetFlagsDualStack: -subnet and -via take one prefix and one
// next hop per family; the IPv4 ones are Prefix and Via, the IPv6 ones
// Prefix6 and Via6 (an IPv6-only subnet is Prefix and Via).
func TestSubnetFlagsDualStack(t *testing.T) {
	sn, err := subnetFlags("10.1.0.0/24, fd00:1::/64", "vm1,vm2", "100.64.0.2,fd00:64::2", time.Minute)
	require.NoError(t, err)
	assert.Equal(t, netip.MustParsePrefix("10.1.0.0/24"), sn.Prefix)
	assert.Equal(t, netip.MustParsePrefix("fd00:1::/64"), sn.Prefix6)
	assert.Equal(t, netip.MustParseAddr("100.64.0.2"), sn.Via)
	assert.Equal(t, netip.MustParseAddr("fd00:64::2"), sn.Via6)
	assert.Equal(t, []string{"vm1", "vm2"}, sn.Members)

	sn, err = subnetFlags("fd00:1::/64", "", "fd00:64::2", 0)
	require.NoError(t, err)
	assert.Equal(t, netip.MustParsePrefix("fd00:1::/64"), sn.Prefix)
	assert.Equal(t, netip.MustParseAddr("fd00:64::2"), sn.Via)
	assert.False(t, sn.Prefix6.IsValid())

	sn, err = subnetFlags("10.1.0.0/24", "", "100.64.0.2", 0)
	require.NoError(t, err)
	assert.False(t, sn.Prefix6.IsValid() || sn.Via6.IsValid(), "IPv4 only: %+v", sn)

	_, err = subnetFlags("10.1.0.0/24,10.2.0.0/24", "", "", 0)
	assert.ErrorContains(t, err, "at most one IPv4 and one IPv6 prefix")
	_, err = subnetFlags("10.1.0.0/24", "", "100.64.0.2,100.64.0.3", 0)
	assert.ErrorContains(t, err, "one address per -subnet prefix")
}
