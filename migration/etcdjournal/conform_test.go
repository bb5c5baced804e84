package etcdjournal

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sealift/sealift/internal/etcdlab"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/journaltest"
)

// The journal keeps the Journal and SharedJournal contracts on a real
// three-member cluster.
func TestConformance(t *testing.T) {
	c := etcdlab.Start(t, 3)
	cli := c.Client(t)
	t.Run("Journal", func(t *testing.T) {
		journaltest.Run(t, func(t testing.TB) migration.Journal { return open(t, cli, "ctl", prefix()) })
	})
	t.Run("Shared", func(t *testing.T) {
		journaltest.RunShared(t, func(t testing.TB) journaltest.Store {
			p := prefix()
			return journaltest.Store{
				Controller: func(name string) migration.SharedJournal { return open(t, cli, name, p, WithTTL(testTTL)) },
				Expire:     func(j migration.SharedJournal) { expire(t, cli, j.(*Journal)) },
			}
		})
	})
	t.Run("ListPages", func(t *testing.T) {
		defer func(n int64) { listPage = n }(listPage)
		listPage = 2
		j := open(t, cli, "ctl", prefix())
		var want []string
		for i := range 5 {
			id := fmt.Sprintf("m%d", 9-i) // IDs in the other order
			r := record(id, "vm"+id)
			r.Started = time.Now().Add(time.Duration(i-10) * time.Second)
			require.NoError(t, j.Create(t.Context(), r))
			want = append(want, id)
		}
		require.NoError(t, j.Finish(t.Context(), "m7", migration.Completed, ""))
		rs, err := j.List(t.Context())
		require.NoError(t, err)
		var got []string
		for _, r := range rs {
			got = append(got, r.ID)
		}
		assert.Equal(t, want, got, "every record over 3 pages, oldest first")
	})
}

// New refuses bad arguments, naming them.
func TestNewRefuses(t *testing.T) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"127.0.0.1:1"}, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	for _, c := range []struct {
		cli  *clientv3.Client
		name string
		opts []Option
		want string
	}{
		{nil, "a", nil, "client"},
		{cli, "", nil, `name ""`},
		{cli, "a\nb", nil, `name "a\nb"`},
		{cli, "a", []Option{WithPrefix("/sealift")}, `prefix "/sealift"`},
		{cli, "a", []Option{WithTTL(1500 * time.Millisecond)}, "TTL 1.5s"},
		{cli, "a", []Option{WithLogger(nil)}, "logger"},
	} {
		_, err := New(t.Context(), c.cli, c.name, c.opts...)
		if assert.Error(t, err, c.want) {
			assert.True(t, errors.Is(err, ErrInvalid), "%v wraps ErrInvalid", err)
			assert.Contains(t, err.Error(), c.want)
		}
	}
}

// OwnerAlive: true while the owner's lease lives, false once it is gone.
func TestOwnerAlive(t *testing.T) {
	c := etcdlab.Start(t, 3)
	cli := c.Client(t)
	p := prefix()
	a, b := open(t, cli, "ctl-a", WithTTL(testTTL), p), open(t, cli, "ctl-b", WithTTL(testTTL), p)
	ctx := t.Context()
	require.NoError(t, a.Create(ctx, record("m1", "vm1")))
	alive, err := b.OwnerAlive(ctx, "m1")
	require.NoError(t, err)
	assert.True(t, alive, "ctl-a's lease lives")
	expire(t, cli, a)
	alive, err = b.OwnerAlive(ctx, "m1")
	require.NoError(t, err)
	assert.False(t, alive, "ctl-a's lease is gone")
}
