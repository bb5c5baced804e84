package linkstate

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/fence"
)

// No kernel needed: the alias record.

func TestRecordRoundTrip(t *testing.T) {
	r := record{VM: "vm \"one\"", MAC: "02:00:00:00:00:01", Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10")},
		Since: 42, Alias: "operator note"}
	a, err := encode(r)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := decode(a)
	if !ok || got.VM != r.VM || got.Alias != r.Alias || len(got.Addrs) != 1 || got.Since != 42 {
		t.Errorf("decode(encode) = %+v, %v", got, ok)
	}
	for _, bad := range []string{"", "operator note", AliasPrefix, AliasPrefix + "{}", AliasPrefix + "{"} {
		if _, ok := decode(bad); ok {
			t.Errorf("decode(%q) found a fence", bad)
		}
	}
	// Too many addresses: they are dropped to fit the alias.
	for i := 0; i < 30; i++ {
		r.Addrs = append(r.Addrs, netip.MustParseAddr(fmt.Sprintf("2001:db8::%x", i+1)))
	}
	a, err = encode(r)
	if err != nil || len(a) > maxAlias {
		t.Fatalf("encode with many addresses: %d bytes, %v", len(a), err)
	}
	if got, _ := decode(a); got.Addrs != nil || got.VM != r.VM {
		t.Errorf("decode = %+v", got)
	}
	r.VM = strings.Repeat("x", 300)
	if _, err := encode(r); !errors.Is(err, fence.ErrInvalid) {
		t.Errorf("encode with a 300-byte VM: %v", err)
	}
}

func TestCheckRejectsWhatLinkStateCannotDo(t *testing.T) {
	ok := fence.Spec{VM: "v", Port: "tap0"}
	if err := check(ok); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		s    fence.Spec
		want error
	}{
		{fence.Spec{VM: "v", Port: "tap0", AllowVia: []string{"wg0"}}, fence.ErrUnsupported},
		{fence.Spec{VM: "v", Port: "tap0", AllowMarks: []uint32{1}}, fence.ErrUnsupported},
		{fence.Spec{VM: "", Port: "tap0"}, fence.ErrInvalid},
		{fence.Spec{VM: "v\x00", Port: "tap0"}, fence.ErrInvalid},
	} {
		if err := check(c.s); !errors.Is(err, c.want) {
			t.Errorf("check(%+v) = %v, want %v", c.s, err, c.want)
		}
	}
}

// Link state cannot filter by destination: a Spec with Peers is refused
// with ErrUnsupported naming the field, not silently half-enforced.
func TestCheckRefusesPeers(t *testing.T) {
	s := fence.Spec{VM: "v", Port: "tap0", Peers: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")}}
	err := check(s)
	require.Error(t, err)
	assert.ErrorIs(t, err, fence.ErrUnsupported)
	assert.Contains(t, err.Error(), "Peers")
	assert.Contains(t, err.Error(), "10.2.0.0/24")
}

// Link state cannot see XFRM either: AllowIPsec is refused, by name.
func TestCheckRefusesAllowIPsec(t *testing.T) {
	s := fence.Spec{VM: "v", Port: "tap0", Addrs: []netip.Addr{netip.MustParseAddr("10.1.0.10")}, AllowIPsec: true}
	err := check(s)
	require.Error(t, err)
	assert.ErrorIs(t, err, fence.ErrUnsupported)
	assert.Contains(t, err.Error(), "AllowIPsec")
}
