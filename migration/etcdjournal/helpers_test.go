package etcdjournal

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealift/sealift/migration"
)

// open returns controller name's journal on cli, closed by t.Cleanup.
func open(t testing.TB, cli *clientv3.Client, name string, opts ...Option) *Journal {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	j, err := New(ctx, cli, name, opts...)
	require.NoError(t, err, "New %s", name)
	t.Cleanup(func() { j.Close() })
	return j
}

var prefixes atomic.Int64

// prefix returns a prefix no other journal of the test binary uses.
func prefix() Option { return WithPrefix(fmt.Sprintf("/t%d/", prefixes.Add(1))) }

// expire revokes j's lease as etcd does when it expires, and waits until
// j has noticed (its Owning has ended).
func expire(t testing.TB, cli *clientv3.Client, j *Journal) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Revoke(ctx, j.Lease()); err != nil {
		t.Fatalf("revoke the lease of %s: %v", j.Name(), err)
	}
	select {
	case <-j.Owning().Done():
	case <-ctx.Done():
		t.Fatalf("%s: Owning has not ended within 10 s of its lease's revocation", j.Name())
	}
}

func entry(b migration.Block, ph migration.Phase) migration.Entry {
	return migration.Entry{Time: time.Now(), Block: b, Phase: ph}
}

func record(id, vm string) migration.Record {
	return migration.Record{ID: id, Plan: migration.Plan{VM: vm, From: "secure", To: "cloud"}, Started: time.Now()}
}

// testTTL is the tests' lease TTL: a margin of 1 s, for a Go timer that
// fires late on a loaded machine (tests of every package at once, with
// the race detector, on 2 cores).
const testTTL = 5 * time.Second
