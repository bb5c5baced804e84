package migration_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/sealift/sealift/migration"
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

func benchJournal(b *testing.B) *migration.BoltJournal {
	b.Helper()
	j, err := migration.OpenBoltJournal(filepath.Join(b.TempDir(), "journal.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { j.Close() })
	err = j.Create(context.Background(), migration.Record{ID: "m1", Plan: migration.Plan{VM: "vm1"}, Started: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	return j
}

// BenchmarkBoltAppend: one journal entry, one fsynced bbolt transaction
// (what every step outside the switchover hook costs, twice).
func BenchmarkBoltAppend(b *testing.B) {
	j := benchJournal(b)
	ctx := context.Background()
	e := migration.Entry{Time: time.Now(), Block: migration.BlockRestart, Phase: migration.PhaseBegin, Data: map[string]string{"link": "l0123456"}}
	b.ReportAllocs()
	for b.Loop() {
		if err := j.Append(ctx, "m1", e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBoltHookEntries: the switchover hook's eight entries (325,
// 320, 335, 340, begin and done), inside the VM's downtime: "batched" is
// what the Migrator does (one Append, one fsync), "one-by-one" what it did.
func BenchmarkBoltHookEntries(b *testing.B) {
	var es []migration.Entry
	for _, blk := range []migration.Block{migration.BlockPause, migration.BlockFence, migration.BlockSubnetMoved, migration.BlockRedirect} {
		for _, ph := range []migration.Phase{migration.PhaseBegin, migration.PhaseDone} {
			es = append(es, migration.Entry{Time: time.Now(), Block: blk, Phase: ph})
		}
	}
	ctx := context.Background()
	b.Run("batched", func(b *testing.B) {
		j := benchJournal(b)
		for b.Loop() {
			if err := j.Append(ctx, "m1", es...); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("one-by-one", func(b *testing.B) {
		j := benchJournal(b)
		for b.Loop() {
			for _, e := range es {
				if err := j.Append(ctx, "m1", e); err != nil {
					b.Fatal(err)
				}
			}
		}
	})
}
