package fence_test

import (
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sealift/sealift/fence"
)

func TestValidatePeers(t *testing.T) {
	base := fence.Spec{VM: "v", Port: "tap0", Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10")}}
	ok := base
	ok.Peers = []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("10.1.0.20/32"),
		netip.MustParsePrefix("fd00:2::/64")}
	assert.NoError(t, ok.Validate())

	for _, c := range []struct {
		peer  netip.Prefix
		words string
	}{
		{netip.Prefix{}, "Peers[0] is not a valid prefix"},
		{netip.MustParsePrefix("10.2.0.5/24"), "Peers[0] 10.2.0.5/24 has host bits set (want 10.2.0.0/24)"},
		{netip.MustParsePrefix("0.0.0.0/0"), "Peers[0] 0.0.0.0/0 covers every address"},
		{netip.MustParsePrefix("::/0"), "Peers[0] ::/0 covers every address"},
		{netip.MustParsePrefix("::ffff:10.2.0.0/120"), "Peers[0] ::ffff:10.2.0.0/120 is IPv4-mapped"},
		{netip.MustParsePrefix("10.1.0.0/24"), "Peers[0] 10.1.0.0/24 contains the VM's address 10.1.0.10"},
	} {
		s := base
		s.Peers = []netip.Prefix{c.peer}
		err := s.Validate()
		assert.ErrorIs(t, err, fence.ErrInvalid, c.words)
		assert.ErrorContains(t, err, c.words)
	}
}

func TestValidateRefusesResetMarkInAllowMarks(t *testing.T) {
	s := fence.Spec{VM: "v", Port: "tap0", AllowMarks: []uint32{7, fence.ResetMark}}
	err := s.Validate()
	assert.ErrorIs(t, err, fence.ErrInvalid)
	assert.ErrorContains(t, err, "AllowMarks[1] 0x5ea1f1c7 is ResetMark")
}

func TestValidateAllowIPsecNeedsAddrs(t *testing.T) {
	s := fence.Spec{VM: "v", Port: "tap0", AllowIPsec: true}
	err := s.Validate()
	assert.ErrorIs(t, err, fence.ErrInvalid)
	assert.ErrorContains(t, err, "AllowIPsec is set but Addrs is empty")
	s.Addrs = []netip.Addr{netip.MustParseAddr("10.1.0.10")}
	assert.NoError(t, s.Validate())
}
