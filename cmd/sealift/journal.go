package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/etcdjournal"
)

// EtcdConfig is a journal on etcd, shared by several controllers: each
// migration is owned by the controller that runs it, for as long as its
// lease lives; `sealift controller` takes over those whose owner died.
type EtcdConfig struct {
	Endpoints []string `json:"endpoints"`
	// Name is this controller's identity in the journal (the owner of
	// what it runs); default: the host name and the process ID. -name
	// overrides it.
	Name string `json:"name,omitempty"`
	// TTL of the controller's lease (a Go duration; default 10s): a dead
	// controller's migrations are taken over this long after it died, at
	// the latest.
	TTL string `json:"ttl,omitempty"`
	// Prefix of the journal's keys (default /sealift/).
	Prefix string `json:"prefix,omitempty"`
	// TLS to the etcd cluster (its CA, and a client certificate if the
	// cluster asks for one); none: plain connections (a lab on loopback).
	TLS *struct {
		CA   string `json:"ca"`
		Cert string `json:"cert,omitempty"`
		Key  string `json:"key,omitempty"`
	} `json:"tls,omitempty"`
}

// openJournal opens the configuration's journal: etcd's if it has one,
// else the bbolt file.
func openJournal(ctx context.Context, cfg Config, path, name string, log *slog.Logger) (migration.Journal, error) {
	e := cfg.Etcd
	if e == nil {
		if cfg.Journal == "" {
			return nil, fmt.Errorf("%w: %s: journal is empty (a bbolt file), and there is no etcd", errConfig, path)
		}
		return migration.OpenBoltJournal(cfg.Journal)
	}
	if cfg.Journal != "" {
		return nil, fmt.Errorf("%w: %s: journal %q and etcd: choose one", errConfig, path, cfg.Journal)
	}
	if len(e.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: %s: etcd.endpoints is empty", errConfig, path)
	}
	var opts []etcdjournal.Option
	if e.TTL != "" {
		d, err := time.ParseDuration(e.TTL)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: etcd.ttl %q: %w", errConfig, path, e.TTL, err)
		}
		opts = append(opts, etcdjournal.WithTTL(d))
	}
	if e.Prefix != "" {
		opts = append(opts, etcdjournal.WithPrefix(e.Prefix))
	}
	name = cmpOr(name, e.Name)
	if name == "" {
		host, _ := os.Hostname()
		name = host + "-" + strconv.Itoa(os.Getpid())
	}
	// The client's own log (zap, JSON) is off: what fails reaches the
	// journal's callers as errors, and the journal logs its retries.
	cc := clientv3.Config{Endpoints: e.Endpoints, DialTimeout: 5 * time.Second, Context: ctx, Logger: zap.NewNop()}
	if t := e.TLS; t != nil {
		tc, err := etcdTLS(t.CA, t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: etcd.tls: %w", errConfig, path, err)
		}
		cc.TLS = tc
	}
	cli, err := clientv3.New(cc)
	if err != nil {
		return nil, fmt.Errorf("etcd %v: %w", e.Endpoints, err)
	}
	if err := probeEtcd(ctx, cli, e.Endpoints, cc.TLS); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd: no endpoint answered within %s (check etcd.endpoints, and etcd.tls: the CA of the cluster's certificates, a client certificate if it asks for one): %w", etcdProbeTimeout, err)
	}
	j, err := etcdjournal.New(ctx, cli, name, append(opts, etcdjournal.WithLogger(log.With("journal", "etcd")))...)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcd journal: %w", err)
	}
	return &closingJournal{Journal: j, cli: cli}, nil
}

// closingJournal closes its etcd client with the journal.
type closingJournal struct {
	*etcdjournal.Journal
	cli *clientv3.Client
}

func (j *closingJournal) Close() error {
	err := j.Journal.Close()
	j.cli.Close()
	return err
}

// etcdProbeTimeout bounds the first contact with the cluster.
const etcdProbeTimeout = 5 * time.Second

// probeEtcd asks every endpoint for its status at once and returns nil
// as soon as one answers: a wrong address or TLS setting then fails at
// once, with its reason, instead of every later call retrying it until
// its context ends (the client retries a failed connection silently).
func probeEtcd(ctx context.Context, cli *clientv3.Client, endpoints []string, tc *tls.Config) error {
	ctx, cancel := context.WithTimeout(ctx, etcdProbeTimeout)
	defer cancel()
	errs := make(chan error, len(endpoints))
	for _, ep := range endpoints {
		go func() {
			_, err := cli.Status(ctx, ep)
			if err != nil {
				err = fmt.Errorf("%s: %w%s", ep, err, tlsReason(ep, tc))
			}
			errs <- err
		}()
	}
	var all []error
	for range endpoints {
		err := <-errs
		if err == nil {
			return nil
		}
		all = append(all, err)
	}
	return errors.Join(all...)
}

// tlsReason tells why a TLS connection to endpoint fails, from a
// handshake of its own and a short read (in TLS 1.3 a server that wants a
// client certificate says so after the handshake); "" if it does not.
func tlsReason(endpoint string, tc *tls.Config) string {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return ""
	}
	if tc == nil {
		if u.Scheme == "https" {
			return " (the endpoint is https and etcd.tls is not set)"
		}
		return ""
	}
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: 2 * time.Second}, Config: tc}
	c, err := d.Dial("tcp", u.Host)
	if err != nil {
		return " (TLS: " + strings.TrimPrefix(err.Error(), "tls: ") + ")"
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return " (TLS: " + err.Error() + ")"
	}
	return ""
}

func etcdTLS(ca, cert, key string) (*tls.Config, error) {
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca %q: no certificate", ca)
	}
	tc := &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}
	if cert != "" || key != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, fmt.Errorf("cert %q, key %q: %w", cert, key, err)
		}
		tc.Certificates = []tls.Certificate{c}
	}
	return tc, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
