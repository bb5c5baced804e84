package arp_test

import (
	"net/netip"
	"testing"

	"github.com/sealift/sealift/internal/arp"
	"github.com/sealift/sealift/internal/lab"
)

// BenchmarkAnnounce: one gratuitous ARP from a lab host's bridge.
func BenchmarkAnnounce(b *testing.B) {
	lab.RequireRoot(b)
	l := lab.New(b)
	h, err := lab.Handle(l.A)
	if err != nil {
		b.Fatal(err)
	}
	br, err := h.LinkByName("br0")
	h.Close()
	if err != nil {
		b.Fatal(err)
	}
	ip := netip.MustParseAddr("10.1.0.10")
	for b.Loop() {
		if err := arp.Announce(l.A, br.Attrs().Index, ip); err != nil {
			b.Fatal(err)
		}
	}
}
