// Package etcdjournal is a migration.SharedJournal on an etcd cluster:
// several controllers share the journal, each migration is owned by one
// of them (the one that created or claimed it) for as long as that
// controller's lease lives, and a standby controller takes over the
// migrations of one that died or was cut off (Migrator.Standby).
//
// # Keys
//
// Under the prefix (WithPrefix, default "/sealift/"), with IDs and VM
// names path-escaped (no "/" in them):
//
//	m/<id>              the Record, JSON
//	e/<id>/<seq>        an Entry, JSON; seq zero-padded to 20 digits
//	vm/<vm>             the ID of the VM's unfinished migration
//	own/<id>            the owner's name, put with the owner's lease
//
// Every write is one etcd transaction. Create puts the record, the VM's
// key and the owner's key if neither the record nor the VM's key exists
// (ErrBusy across controllers is atomic). Append and Finish hold only if
// own/<id> has this controller's name and lease, in the same
// transaction (else migration.ErrNotOwner); Finish also deletes the VM's
// and the owner's key. Claim puts own/<id> with this controller's lease
// if it is absent and the record is unfinished. When a lease expires,
// etcd deletes its own/ keys: what makes a migration an orphan.
//
// # Owning
//
// Owning ends before etcd can expire the lease: the Journal renews it
// every (TTL − margin)/4 and remembers when it sent the last renewal
// that succeeded (etcd's expiry is at least a TTL after that instant:
// the leader renews when it receives the request, and a new leader
// extends every lease; both clocks are assumed to run at about the same
// rate, not to agree on the time). Owning ends
// when TTL − margin has passed since then (margin: TTL/5, at least
// 500 ms), or at once when etcd says the lease is gone. From then on
// every write returns ErrNotOwner without trying, and the Journal cannot
// own anything again: a controller that wants to go on makes a new
// Journal (a new lease). A write etcd receives before the lease has
// expired holds; one after, its transaction's compare refuses.
//
// A write that fails in a way that leaves its outcome unknown (a lost
// reply, a leader change) is retried until its context ends; each is
// idempotent (a retry recognizes its own earlier write).
package etcdjournal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"
	"unicode"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/sealift/sealift/migration"
)

// ErrInvalid: New was given a bad argument (the error names it).
var ErrInvalid = errors.New("etcdjournal: invalid argument")

// Defaults and limits of the options.
const (
	DefaultTTL    = 10 * time.Second
	MinTTL        = 2 * time.Second
	DefaultPrefix = "/sealift/"
	// MaxAppend is the most entries one Append writes (one transaction;
	// etcd's default limit is 128 operations).
	MaxAppend = 100
)

// Option configures a Journal.
type Option func(*Journal)

// WithTTL sets the lease's TTL (default 10 s, at least 2 s; etcd counts
// it in whole seconds: it is rounded up). A controller cut off from etcd
// stops owning its migrations within the TTL; a standby takes them over
// a little after.
func WithTTL(d time.Duration) Option { return func(j *Journal) { j.ttl = d } }

// WithPrefix sets the prefix of every key (default "/sealift/"; it must
// end with "/"). Controllers share a journal when they use the same
// cluster and prefix.
func WithPrefix(p string) Option { return func(j *Journal) { j.prefix = p } }

// WithLogger sets the logger (default: one that discards).
func WithLogger(l *slog.Logger) Option { return func(j *Journal) { j.log = l } }

// Journal is one controller's view of a journal on etcd.
type Journal struct {
	cli    *clientv3.Client
	name   string
	prefix string
	ttl    time.Duration
	margin time.Duration
	log    *slog.Logger
	lease  clientv3.LeaseID

	owning context.Context
	end    context.CancelCauseFunc
	stop   context.CancelFunc // the keepalive loop
	kaDone chan struct{}

	mu      sync.Mutex
	last    map[string]uint64      // migration ID -> its last Seq, as this controller last saw it
	appends map[string]*sync.Mutex // migration ID -> its Appends, one at a time

	closeOnce sync.Once
	closeErr  error

	// trustServer skips the local check of Owning before a write (tests:
	// to show that etcd refuses it too).
	trustServer bool
}

var (
	_ migration.SharedJournal = (*Journal)(nil)
	_ migration.Lister        = (*Journal)(nil)
)

// New grants the controller's lease on the cluster cli talks to and
// returns its journal. name identifies the controller (Record.Owner):
// controllers sharing a journal need different names. The caller keeps
// cli (Close does not close it).
func New(ctx context.Context, cli *clientv3.Client, name string, opts ...Option) (*Journal, error) {
	j := &Journal{cli: cli, name: name, prefix: DefaultPrefix, ttl: DefaultTTL,
		log:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		last: map[string]uint64{}, appends: map[string]*sync.Mutex{}}
	for _, o := range opts {
		o(j)
	}
	if err := j.validate(); err != nil {
		return nil, err
	}
	j.ttl = (j.ttl + time.Second - 1).Truncate(time.Second)
	j.margin = max(j.ttl/5, 500*time.Millisecond)
	j.log = j.log.With("controller", name)
	if err := j.grant(ctx); err != nil {
		return nil, err
	}
	return j, nil
}

func (j *Journal) validate() error {
	switch {
	case j.cli == nil:
		return fmt.Errorf("%w: client is nil", ErrInvalid)
	case j.name == "" || len(j.name) > 256 || strings.ContainsFunc(j.name, unicode.IsControl):
		return fmt.Errorf("%w: name %q: want 1 to 256 characters, none a control character", ErrInvalid, j.name)
	case !strings.HasSuffix(j.prefix, "/"):
		return fmt.Errorf("%w: prefix %q: want one that ends with \"/\"", ErrInvalid, j.prefix)
	case j.ttl < MinTTL:
		return fmt.Errorf("%w: TTL %s: want at least %s", ErrInvalid, j.ttl, MinTTL)
	case j.log == nil:
		return fmt.Errorf("%w: logger is nil", ErrInvalid)
	}
	return nil
}

// Name is the controller's name (Record.Owner of what it owns).
func (j *Journal) Name() string { return j.name }

// Lease is the controller's lease: revoking it (etcdctl lease revoke)
// makes this controller's unfinished migrations orphans at once.
func (j *Journal) Lease() clientv3.LeaseID { return j.lease }

// Owning ends when this controller may no longer act as an owner: before
// etcd can expire its lease, when etcd says the lease is gone, or on
// Close. Its cause wraps migration.ErrNotOwner and says why.
func (j *Journal) Owning() context.Context { return j.owning }

// live returns nil while this controller owns what it owns, else
// ErrNotOwner and why.
func (j *Journal) live() error {
	if j.trustServer || j.owning.Err() == nil {
		return nil
	}
	return context.Cause(j.owning)
}

// Close ends Owning, stops renewing the lease and revokes it (waiting up
// to the TTL): the controller's unfinished migrations become orphans at
// once, for a standby to take over. Reads still work after Close; writes
// return ErrNotOwner.
func (j *Journal) Close() error {
	j.closeOnce.Do(func() {
		j.end(fmt.Errorf("%w: controller %q closed its journal", migration.ErrNotOwner, j.name))
		j.stop()
		<-j.kaDone
		ctx, cancel := context.WithTimeout(context.Background(), j.ttl)
		defer cancel()
		if err := j.revoke(ctx); err != nil {
			j.closeErr = fmt.Errorf("etcdjournal: revoke the lease of controller %q: %w", j.name, err)
		}
	})
	return j.closeErr
}

// Keys.

func esc(s string) string { return url.PathEscape(s) }

func (j *Journal) recKey(id string) string  { return j.prefix + "m/" + esc(id) }
func (j *Journal) ownKey(id string) string  { return j.prefix + "own/" + esc(id) }
func (j *Journal) vmKey(vm string) string   { return j.prefix + "vm/" + esc(vm) }
func (j *Journal) entries(id string) string { return j.prefix + "e/" + esc(id) + "/" }
func (j *Journal) ownPrefix() string        { return j.prefix + "own/" }
func (j *Journal) vmPrefix() string         { return j.prefix + "vm/" }
func (j *Journal) entryKey(id string, seq uint64) string {
	return fmt.Sprintf("%s%020d", j.entries(id), seq)
}

// idOfOwnKey returns the migration ID of an own/ key.
func (j *Journal) idOfOwnKey(k string) (string, bool) {
	e, ok := strings.CutPrefix(k, j.ownPrefix())
	if !ok {
		return "", false
	}
	id, err := url.PathUnescape(e)
	return id, err == nil
}
