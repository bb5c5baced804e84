package qmptest_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor/qemu/qmp"
	"github.com/sealift/sealift/hypervisor/qemu/qmp/qmptest"
)

func TestMonitor(t *testing.T) {
	ctx := context.Background()
	m := qmptest.NewMonitor()

	// Replies in turn, the last one repeating; an error reply is an error.
	m.Reply("query-status", map[string]any{"status": "running"}, &qmp.Error{Class: "GenericError", Desc: "busy"},
		map[string]any{"status": "paused"})
	var st struct{ Status string }
	require.NoError(t, m.Execute(ctx, "query-status", nil, &st))
	assert.Equal(t, "running", st.Status)
	var qe *qmp.Error
	require.ErrorAs(t, m.Execute(ctx, "query-status", nil, &st), &qe)
	assert.Equal(t, "busy", qe.Desc)
	for range 2 {
		require.NoError(t, m.Execute(ctx, "query-status", nil, &st))
		assert.Equal(t, "paused", st.Status)
	}

	// A handler sees the arguments; an unscripted command is unknown.
	var got map[string]any
	m.Handle("migrate", func(args json.RawMessage) (any, error) {
		return nil, json.Unmarshal(args, &got)
	})
	require.NoError(t, m.Execute(ctx, "migrate", map[string]any{"uri": "tcp:10.0.0.1:4444"}, nil))
	assert.Equal(t, map[string]any{"uri": "tcp:10.0.0.1:4444"}, got)
	require.ErrorAs(t, m.Execute(ctx, "nosuch", nil, nil), &qe)
	assert.Equal(t, "CommandNotFound", qe.Class)
	assert.Equal(t, []string{"query-status", "query-status", "query-status", "query-status", "migrate", "nosuch"}, m.Names())
	assert.Equal(t, 4, m.Count("query-status"))
	assert.JSONEq(t, `{"uri":"tcp:10.0.0.1:4444"}`, string(m.Commands()[4].Args))

	// Events reach subscribers, not those who left.
	ev1, unsub1 := m.Subscribe()
	ev2, _ := m.Subscribe()
	unsub1()
	m.Emit("MIGRATION", map[string]any{"status": "active"})
	_, open := <-ev1
	assert.False(t, open, "an ended subscription's channel is closed")
	e := <-ev2
	assert.Equal(t, "MIGRATION", e.Name)
	assert.JSONEq(t, `{"status":"active"}`, string(e.Data))

	// A dropped connection closes subscriptions and fails commands.
	require.NoError(t, m.Err())
	m.Drop()
	_, open = <-ev2
	assert.False(t, open, "a subscription outlived the connection")
	require.ErrorIs(t, m.Err(), qmp.ErrClosed)
	require.ErrorIs(t, m.Execute(ctx, "query-status", nil, &st), qmp.ErrClosed)
	assert.False(t, m.Closed(), "Drop is not the client's Close")
	ev3, _ := m.Subscribe()
	_, open = <-ev3
	assert.False(t, open, "subscribing to an ended connection gives a closed channel")
	require.NoError(t, m.Close())
	assert.True(t, m.Closed(), "Close after a Drop is recorded")

	// Close is recorded as the client's.
	c := qmptest.NewMonitor()
	require.NoError(t, c.Close())
	assert.True(t, c.Closed())
	require.ErrorIs(t, c.Execute(ctx, "cont", nil, nil), qmp.ErrClosed)

	// A context that ended fails the command before it is run.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	d := qmptest.NewMonitor()
	d.Reply("cont")
	require.ErrorIs(t, d.Execute(cctx, "cont", nil, nil), context.Canceled)
	assert.Zero(t, d.Count("cont"))
}
