package migration_test

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/journaltest"
	"github.com/sealift/sealift/migration/migrationtest"
)

// MemJournal, BoltJournal and migrationtest's SharedJournal keep the
// journal contracts (migration/journaltest).
func TestJournalConformance(t *testing.T) {
	t.Run("Mem", func(t *testing.T) {
		journaltest.Run(t, func(testing.TB) migration.Journal { return migration.NewMemJournal() })
	})
	t.Run("Bolt", func(t *testing.T) {
		journaltest.Run(t, func(t testing.TB) migration.Journal {
			j, err := migration.OpenBoltJournal(filepath.Join(t.TempDir(), "j.db"))
			require.NoError(t, err)
			t.Cleanup(func() { j.Close() })
			return j
		})
	})
	t.Run("SharedStore", func(t *testing.T) {
		journaltest.Run(t, func(testing.TB) migration.Journal {
			return migrationtest.NewSharedStore().Controller("ctl")
		})
	})
	t.Run("SharedStoreShared", func(t *testing.T) {
		journaltest.RunShared(t, func(testing.TB) journaltest.Store {
			s := migrationtest.NewSharedStore()
			return journaltest.Store{
				Controller: func(name string) migration.SharedJournal { return s.Controller(name) },
				Expire:     func(j migration.SharedJournal) { j.(*migrationtest.SharedJournal).Expire() },
			}
		})
	})
}
