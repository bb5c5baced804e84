package etcdlab

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The lab's cluster serves, survives its leader's death, moves its
// leader, takes a killed member back, and its proxy cuts a client off
// and lets it back.
func TestCluster(t *testing.T) {
	c := Start(t, 3)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	cli := c.Client(t)
	_, err := cli.Put(ctx, "k", "v1")
	require.NoError(t, err)

	lead, err := c.Leader(ctx)
	require.NoError(t, err)
	c.Kill(lead)
	next, err := c.Leader(ctx)
	require.NoError(t, err)
	assert.NotEqual(t, lead, next, "a new leader")
	alive := c.Client(t, c.Members[next].ClientURL.String())
	_, err = alive.Put(ctx, "k", "v2")
	require.NoError(t, err, "a Put with one member dead")

	to := 3 - lead - next
	require.NoError(t, c.MoveLeader(ctx, to))
	now, err := c.Leader(ctx)
	require.NoError(t, err)
	assert.Equal(t, to, now, "the leader moved")

	require.NoError(t, c.Restart(lead))
	back := c.Client(t, c.Members[lead].ClientURL.String())
	resp, err := back.Get(ctx, "k") // linearizable: through the leader
	require.NoError(t, err)
	require.Len(t, resp.Kvs, 1)
	assert.Equal(t, "v2", string(resp.Kvs[0].Value), "the restarted member caught up")

	p := c.Proxy(t, to)
	via := c.Client(t, p.Endpoint())
	_, err = via.Get(ctx, "k")
	require.NoError(t, err, "through the proxy")
	p.Cut()
	cctx, ccancel := context.WithTimeout(ctx, time.Second)
	_, err = via.Get(cctx, "k")
	ccancel()
	assert.True(t, errors.Is(err, context.DeadlineExceeded), "a Get through the cut proxy: %v", err)
	p.Heal()
	_, err = via.Get(ctx, "k")
	assert.NoError(t, err, "through the healed proxy")
}
