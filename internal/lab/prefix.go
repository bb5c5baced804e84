package lab

import (
	"crypto/rand"
	"encoding/hex"
)

// NewPrefixFrom returns a short unique prefix: base + 6 hex digits (base
// names whose labs they are, when several share a machine).
func NewPrefixFrom(base string) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base + hex.EncodeToString(b)
}

// NewWithPrefix is New with namespaces named p-a, p-core...; p must be
// unique on the machine (NewPrefixFrom makes one).
func NewWithPrefix(t TB, p string) *Lab {
	t.Helper()
	l := &Lab{Prefix: p, A: p + "-a", Core: p + "-core", WAN: p + "-wan", B: p + "-b",
		VM: p + "-vm", Peer: p + "-peer", Peer2: p + "-peer2"}
	t.Cleanup(l.Close)
	if err := l.build(); err != nil {
		t.Fatalf("lab: %v", err)
	}
	return l
}
