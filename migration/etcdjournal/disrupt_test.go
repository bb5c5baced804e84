package etcdjournal

import (
	"context"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/etcdlab"
	"github.com/sealift/sealift/migration"
)

// While a controller appends entries one after the other, the leader is
// killed, the leadership moved, and the killed member restarted: every
// Append returns nil, and the journal has each entry once, numbered
// 1..n in order; the controller never stops owning the migration.
func TestAppendsThroughKillAndLeaderMove(t *testing.T) {
	c := etcdlab.Start(t, 3)
	j := open(t, c.Client(t), "ctl-a", WithTTL(testTTL))
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Second)
	defer cancel()
	require.NoError(t, j.Create(ctx, record("m1", "vm1")))

	var appended atomic.Int64
	stop := make(chan struct{})
	result := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				result <- nil
				return
			default:
			}
			e := entry(330, migration.PhaseBegin)
			e.Data = map[string]string{"i": strconv.Itoa(i)}
			actx, cancel := context.WithTimeout(ctx, 20*time.Second)
			err := j.Append(actx, "m1", e, entry(330, migration.PhaseDone))
			cancel()
			if err != nil {
				result <- fmt.Errorf("Append %d: %w", i, err)
				return
			}
			appended.Add(1)
		}
	}()
	// more waits until 20 more Appends have returned.
	more := func(what string) {
		t.Helper()
		want := appended.Load() + 20
		for appended.Load() < want {
			select {
			case err := <-result:
				t.Fatalf("%s: the appends stopped: %v", what, err)
			case <-ctx.Done():
				t.Fatalf("%s: %d appends, want %d", what, appended.Load(), want)
			case <-time.After(5 * time.Millisecond):
			}
		}
	}

	more("before")
	lead, err := c.Leader(ctx)
	require.NoError(t, err)
	start := time.Now()
	c.Kill(lead)
	more("leader killed")
	newLead, err := c.Leader(ctx)
	require.NoError(t, err)
	t.Logf("member %d (leader) killed; member %d leads %s later", lead, newLead, time.Since(start).Round(time.Millisecond))
	to := 3 - lead - newLead // the other member still running
	require.NoError(t, c.MoveLeader(ctx, to))
	t.Logf("leadership moved from member %d to %d", newLead, to)
	more("leader moved")
	require.NoError(t, c.Restart(lead))
	t.Logf("member %d restarted", lead)
	more("member restarted")
	close(stop)
	require.NoError(t, <-result)

	_, es, err := j.Load(ctx, "m1")
	require.NoError(t, err)
	n := int(appended.Load())
	t.Logf("%d Appends of 2 entries", n)
	require.Len(t, es, 2*n, "entries")
	for k, e := range es {
		if !assert.Equal(t, uint64(k+1), e.Seq, "entry %d", k) {
			break
		}
		if k%2 == 0 && !assert.Equal(t, strconv.Itoa(k/2), e.Data["i"], "entry %d: written once, in order", k) {
			break
		}
	}
	assert.NoError(t, j.Owning().Err(), "Owning ended: %v", context.Cause(j.Owning()))
}
