// Package etcdlab runs a real etcd cluster inside a test (embedded etcd
// servers on 127.0.0.1, their data in t.TempDir()), and breaks it as
// tests need: a member stopped or killed and restarted, the leader
// moved, a client cut off from the cluster by a TCP proxy (Proxy). It is
// for tests, and for the lab program (examples/lab: StartIn); nothing
// else imports it.
//
// Raft ticks are short (25 ms heartbeat, 250 ms election) so that a
// cluster starts and elects in well under a second; fsync is off (a
// member killed here is a stopped server in a live process: nothing of
// what it wrote is lost with the page cache). Each member's log (level
// error) is <name>.log beside its data directory. t.Cleanup stops everything.
package etcdlab

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Timing of the cluster's raft.
const (
	TickMs     = 25
	ElectionMs = 250
)

// TB is what the lab needs of a test: testing.TB has it, and so has
// internal/lab's TB (a program's adapter, e.g. examples/lab's).
type TB interface {
	Helper()
	Cleanup(func())
	Fatalf(format string, args ...any)
	Logf(format string, args ...any)
}

// Cluster is a running etcd cluster of embedded members.
type Cluster struct {
	Members []*Member
	initial string    // --initial-cluster
	tls     *TLSFiles // nil: plain client connections
}

// Member is one etcd server of a Cluster.
type Member struct {
	Name      string
	Dir       string
	ClientURL url.URL
	PeerURL   url.URL

	c       *Cluster
	mu      sync.Mutex
	etcd    *embed.Etcd   // nil while stopped
	stopped chan struct{} // closed once the last stop has released everything
}

// Start starts a cluster of n members on 127.0.0.1, their data in
// t.TempDir(), and waits until it has a leader (it fails t after 20 s).
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c, err := StartIn(t, n, "127.0.0.1", t.TempDir())
	if err != nil {
		t.Fatalf("etcdlab: %v", err)
	}
	return c
}

// StartIn starts a cluster of n members listening on host (an IP
// address of this machine) on ports free when it starts, their data
// under dir, and waits until it has a leader (20 s at most).
// t.Cleanup stops it.
func StartIn(t TB, n int, host, dir string) (*Cluster, error) {
	t.Helper()
	return startIn(t, n, host, dir, nil)
}

func startIn(t TB, n int, host, dir string, tls *TLSFiles) (*Cluster, error) {
	c := &Cluster{tls: tls}
	scheme := "http"
	if tls != nil {
		scheme = "https"
	}
	ports, err := freePorts(host, 2*n)
	if err != nil {
		return nil, err
	}
	var initial []string
	for i := range n {
		m := &Member{Name: fmt.Sprintf("m%d", i), Dir: filepath.Join(dir, fmt.Sprintf("m%d", i)), c: c,
			ClientURL: url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(ports[2*i]))},
			PeerURL:   url.URL{Scheme: "http", Host: net.JoinHostPort(host, strconv.Itoa(ports[2*i+1]))}}
		c.Members = append(c.Members, m)
		initial = append(initial, m.Name+"="+m.PeerURL.String())
	}
	c.initial = strings.Join(initial, ",")
	t.Cleanup(c.stopAll)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, m := range c.Members {
		wg.Go(func() { errs[i] = m.start() })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			return nil, fmt.Errorf("etcdlab: start member %d: %w", i, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Leader(ctx); err != nil {
		return nil, fmt.Errorf("etcdlab: the cluster elected no leader: %w", err)
	}
	return c, nil
}

// freePorts returns n TCP ports free on host a moment ago.
func freePorts(host string, n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return nil, fmt.Errorf("etcdlab: find a free port on %s: %w", host, err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func (m *Member) config() *embed.Config {
	cfg := embed.NewConfig()
	cfg.Name = m.Name
	cfg.Dir = m.Dir
	cfg.ListenClientUrls = []url.URL{m.ClientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.ClientURL}
	cfg.ListenPeerUrls = []url.URL{m.PeerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.PeerURL}
	cfg.InitialCluster = m.c.initial
	cfg.InitialClusterToken = "etcdlab"
	cfg.TickMs, cfg.ElectionMs = TickMs, ElectionMs
	cfg.UnsafeNoFsync = true
	cfg.EnableGRPCGateway = false
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{m.Dir + ".log"}
	if f := m.c.tls; f != nil {
		cfg.ClientTLSInfo = transport.TLSInfo{CertFile: f.serverCert, KeyFile: f.serverKey,
			TrustedCAFile: f.CA, ClientCertAuth: true}
	}
	return cfg
}

// start starts the member's server (from its data directory, if it has
// one) and waits until it is ready to serve.
func (m *Member) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.etcd != nil {
		return nil
	}
	if m.stopped != nil {
		<-m.stopped // the last stop released the ports and the data
	}
	e, err := embed.StartEtcd(m.config())
	if err != nil {
		return err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(20 * time.Second):
		e.Server.HardStop()
		e.Close()
		return fmt.Errorf("member %s not ready after 20 s", m.Name)
	}
	m.etcd, m.stopped = e, nil
	return nil
}

// Endpoints returns the client URLs of every member.
func (c *Cluster) Endpoints() []string {
	var eps []string
	for _, m := range c.Members {
		eps = append(eps, m.ClientURL.String())
	}
	return eps
}

// Client returns a client of endpoints (default: every member's),
// closed by t.Cleanup.
func (c *Cluster) Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	if len(endpoints) == 0 {
		endpoints = c.Endpoints()
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatalf("etcdlab: client of %v: %v", endpoints, err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// Leader returns the index of the member the running members agree is
// the leader, waiting until they do or ctx ends.
func (c *Cluster) Leader(ctx context.Context) (int, error) {
	for {
		if i, ok := c.leader(); ok {
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("etcdlab: no leader: %w", ctx.Err())
		case <-time.After(TickMs * time.Millisecond):
		}
	}
}

func (c *Cluster) leader() (int, bool) {
	lead, agreed := uint64(0), 0
	for _, m := range c.Members {
		e := m.server()
		if e == nil {
			continue
		}
		l := e.Server.Lead()
		if l == 0 || (lead != 0 && l != lead) {
			return -1, false
		}
		lead = l
		agreed++
	}
	for i, m := range c.Members {
		if e := m.server(); e != nil && uint64(e.Server.MemberID()) == lead && agreed > len(c.Members)/2 {
			return i, true
		}
	}
	return -1, false
}

func (m *Member) server() *embed.Etcd {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd
}

// MoveLeader makes member `to` the leader, through the maintenance API
// of the current leader, and waits until every running member follows
// it.
func (c *Cluster) MoveLeader(ctx context.Context, to int) error {
	from, err := c.Leader(ctx)
	if err != nil {
		return err
	}
	if from == to {
		return nil
	}
	target := c.Members[to].server()
	if target == nil {
		return fmt.Errorf("etcdlab: member %d is stopped", to)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Members[from].ClientURL.String()},
		DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	if _, err := cli.MoveLeader(ctx, uint64(target.Server.MemberID())); err != nil {
		return fmt.Errorf("etcdlab: move the leader from member %d to %d: %w", from, to, err)
	}
	for {
		if i, err := c.Leader(ctx); err != nil {
			return err
		} else if i == to {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(TickMs * time.Millisecond):
		}
	}
}

// Stop stops member i gracefully (a leader hands its leadership over
// first) and waits until it has.
func (c *Cluster) Stop(i int) {
	m := c.Members[i]
	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Kill stops member i at once, as a crash would: its raft stops and it
// accepts no connection; what its clients had open fails. It returns at
// once (the member's goroutines end in the background; Restart waits
// for them).
func (c *Cluster) Kill(i int) {
	m := c.Members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.etcd
	if e == nil {
		return
	}
	m.etcd = nil
	e.Server.HardStop()
	for _, l := range e.Clients {
		l.Close()
	}
	for _, p := range e.Peers {
		p.Close()
	}
	done := make(chan struct{})
	m.stopped = done
	go func() {
		defer close(done)
		e.Close() // a leader's tries to hand over its leadership time out first (~5 s)
	}()
}

// Restart starts stopped or killed member i again from its data, and
// waits until it is ready.
func (c *Cluster) Restart(i int) error {
	if err := c.Members[i].start(); err != nil {
		return fmt.Errorf("etcdlab: restart member %d: %w", i, err)
	}
	return nil
}

// stopAll stops every member: the followers first (side by side), so
// that no leader tries to hand over its leadership to a member that is
// stopping.
func (c *Cluster) stopAll() {
	lead, _ := c.leader()
	var wg sync.WaitGroup
	for i := range c.Members {
		if i != lead {
			wg.Go(func() { c.Stop(i) })
		}
	}
	wg.Wait()
	if lead >= 0 {
		c.Stop(lead)
	}
	for _, m := range c.Members {
		m.mu.Lock()
		s := m.stopped
		m.mu.Unlock()
		if s != nil {
			<-s
		}
	}
}
