package routing

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestExpectValidate(t *testing.T) {
	p := netip.MustParsePrefix("10.1.0.0/24")
	cases := []struct {
		name string
		e    Expect
		want string // "" = valid; else a word the error must name
	}{
		{"ok", Expect{Prefix: p}, ""},
		{"ok via", Expect{Prefix: p, Via: netip.MustParseAddr("100.64.0.2"), NotDevice: "rt0"}, ""},
		{"ok v6", Expect{Prefix: netip.MustParsePrefix("2001:db8::/64"), Via: netip.MustParseAddr("fe80::1")}, ""},
		{"no prefix", Expect{}, "Expect.Prefix"},
		{"host bits", Expect{Prefix: netip.MustParsePrefix("10.1.0.10/24")}, "10.1.0.0/24"},
		{"family", Expect{Prefix: p, Via: netip.MustParseAddr("2001:db8::1")}, "Expect.Via 2001:db8::1"},
	}
	for _, c := range cases {
		err := c.e.Validate()
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrInvalid naming %q", c.name, err, c.want)
		}
	}
}

func TestExpectMatches(t *testing.T) {
	p := netip.MustParsePrefix("10.1.0.0/24")
	via := netip.MustParseAddr("100.64.0.2")
	bgp := Route{Prefix: p, Via: via, Device: "s0", Protocol: "bgp"}
	redirect := Route{Prefix: p, Via: netip.MustParseAddr("100.64.1.2"), Device: "rt0", Protocol: "sealift"}
	cases := []struct {
		name string
		e    Expect
		r    Route
		want bool
	}{
		{"prefix only", Expect{Prefix: p}, redirect, true},
		{"other prefix", Expect{Prefix: netip.MustParsePrefix("10.1.0.0/16")}, bgp, false},
		{"via", Expect{Prefix: p, Via: via}, bgp, true},
		{"wrong via", Expect{Prefix: p, Via: via}, redirect, false},
		{"device", Expect{Prefix: p, Device: "s0"}, bgp, true},
		{"wrong device", Expect{Prefix: p, Device: "s0"}, redirect, false},
		{"not the tunnel", Expect{Prefix: p, NotDevice: "rt0"}, bgp, true},
		{"the tunnel", Expect{Prefix: p, NotDevice: "rt0"}, redirect, false},
		{"all fields", Expect{Prefix: p, Via: via, Device: "s0", NotDevice: "rt0"}, bgp, true},
		{"no device known", Expect{Prefix: p, Via: via, NotDevice: "rt0"}, Route{Prefix: p, Via: via}, true},
	}
	for _, c := range cases {
		if got := c.e.Matches(c.r); got != c.want {
			t.Errorf("%s: Matches(%+v) = %v, want %v", c.name, c.r, got, c.want)
		}
	}
}

func TestRedirectValidate(t *testing.T) {
	p := netip.MustParsePrefix("10.1.0.0/24")
	cases := []struct {
		name string
		r    Redirect
		want string
	}{
		{"ok", Redirect{Prefix: p, Device: "wg0"}, ""},
		{"ok metric", Redirect{Prefix: p, Device: "wg0", Metric: 4096, Via: netip.MustParseAddr("100.64.1.2")}, ""},
		{"no prefix", Redirect{Device: "wg0"}, "Redirect.Prefix"},
		{"host bits", Redirect{Prefix: netip.MustParsePrefix("10.1.0.1/24"), Device: "wg0"}, "host bits"},
		{"no device", Redirect{Prefix: p}, "Redirect.Device"},
		{"negative metric", Redirect{Prefix: p, Device: "wg0", Metric: -1}, "Redirect.Metric -1"},
	}
	for _, c := range cases {
		err := c.r.Validate()
		if c.want == "" {
			if err != nil {
				t.Errorf("%s: %v", c.name, err)
			}
			continue
		}
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want ErrInvalid naming %q", c.name, err, c.want)
		}
	}
}
