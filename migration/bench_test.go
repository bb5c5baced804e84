package migration_test

import (
	"context"
	"testing"

	"github.com/sealift/sealift/migration/migrationtest"
)

// BenchmarkRunOverhead: the Migrator's own cost per migration (journal,
// events, classification) on the fakes, back and forth.
func BenchmarkRunOverhead(b *testing.B) {
	s := migrationtest.NewSetup()
	s.Cloud.Auditor.SetConns(plainConn, tlsConn)
	m := newMigrator(b, s)
	there, back := s.Plan(), s.Plan()
	back.From, back.To = "cloud", "secure"
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p := there
		if i%2 == 1 {
			p = back
		}
		if _, err := m.Run(context.Background(), p); err != nil {
			b.Fatal(err)
		}
	}
}
