package wireguard

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/tunnel"
)

// TestPrepareRejectsBadSpecs: bad input fails with tunnel.ErrInvalid,
// names the field, and touches nothing (no state file, no link).
func TestPrepareRejectsBadSpecs(t *testing.T) {
	good := tunnel.Spec{
		ID: "v1", Kind: tunnel.WireGuard,
		Secure: tunnel.End{Host: "", Underlay: netip.MustParseAddr("192.0.2.1"),
			Protected: []netip.Prefix{netip.MustParsePrefix("10.1.0.20/32")}},
		Remote: tunnel.End{Host: "sealift-no-such-netns-x", Underlay: netip.MustParseAddr("192.0.2.2"),
			Protected: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}},
	}
	cases := []struct {
		name, field string
		edit        func(*tunnel.Spec)
		also        error // a second sentinel the error must wrap
	}{
		{"empty ID", "ID", func(s *tunnel.Spec) { s.ID = "" }, nil},
		{"long ID", "ID", func(s *tunnel.Spec) { s.ID = "abcdefghi" }, nil},
		{"bad ID char", "ID", func(s *tunnel.Spec) { s.ID = "Ab" }, nil},
		{"ipsec kind", "Kind", func(s *tunnel.Spec) { s.Kind = tunnel.IPsec }, nil},
		{"no underlay", "Remote.Underlay", func(s *tunnel.Spec) { s.Remote.Underlay = netip.Addr{} }, nil},
		{"no protected", "Secure.Protected", func(s *tunnel.Spec) { s.Secure.Protected = nil }, nil},
		{"same underlay", "Underlay", func(s *tunnel.Spec) { s.Remote.Underlay = s.Secure.Underlay }, nil},
		{"mtu", "MTU", func(s *tunnel.Spec) { s.MTU = 576 }, nil},
		{"bad MAC", `Remote.MAC "52:54:00"`, func(s *tunnel.Spec) { s.Remote.MAC = "52:54:00" }, nil},
		{"same host", "Host", func(s *tunnel.Spec) { s.Remote.Host = s.Secure.Host }, nil},
		{"missing netns", `Remote.Host "sealift-no-such-netns-x"`, func(s *tunnel.Spec) {}, host.ErrNotFound},
		{"missing secure netns", `Secure.Host "sealift-no-such-netns-y"`, func(s *tunnel.Spec) {
			s.Secure.Host = "sealift-no-such-netns-y"
		}, host.ErrNotFound},
	}
	dir := t.TempDir()
	lk := New(WithStateDir(dir))
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := good
			c.edit(&s)
			_, err := lk.Prepare(context.Background(), s)
			require.ErrorIs(t, err, tunnel.ErrInvalid)
			assert.ErrorContains(t, err, c.field)
			if c.also != nil {
				assert.ErrorIs(t, err, c.also)
			}
		})
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 0 {
		t.Errorf("rejected specs left %d state files", len(ents))
	}
	if links, err := lk.List(context.Background()); err != nil || len(links) != 0 {
		t.Errorf("List after rejected specs = %v, %v", links, err)
	}
}

// TestUnknownLink: Activate and Verify of an unknown link fail with
// ErrNoLink; Close is a no-op.
func TestUnknownLink(t *testing.T) {
	lk := New(WithStateDir(t.TempDir()))
	ctx := context.Background()
	if err := lk.Activate(ctx, "nope"); !errors.Is(err, tunnel.ErrNoLink) {
		t.Errorf("Activate: %v", err)
	}
	if _, err := lk.Verify(ctx, "nope"); !errors.Is(err, tunnel.ErrNoLink) {
		t.Errorf("Verify: %v", err)
	}
	if err := lk.Close(ctx, "nope"); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestDeviceNames(t *testing.T) {
	for _, id := range []string{"a", "abcdefgh"} {
		s, r := deviceName(id, roleSecure), deviceName(id, roleRemote)
		if s == r || len(s) > 15 || len(r) > 15 || !strings.HasPrefix(s, "slw") {
			t.Errorf("names for %q: %q %q", id, s, r)
		}
	}
}
