// Package conn is the contract for auditing a VM's non-managed connections
// after it restarts at the target (FIG. 3 blocks 355-365, claim 10): list
// them, keep those already secure, reset the unsecured ones so they come
// back over the secure link. Backends: conn/conntrack (flows through a
// host) and conn/sockdiag (sockets inside a namespace).
package conn

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/sealift/sealift/host"
)

var (
	ErrInvalid = errors.New("conn: invalid argument")
	// ErrNoHost: the namespace named in the selector (or the backend's
	// own) does not exist. It is host.ErrNotFound, the sentinel every
	// contract uses for a missing host.
	//
	// Deprecated: test for host.ErrNotFound.
	ErrNoHost = host.ErrNotFound
)

// Proto is a transport protocol.
type Proto string

const (
	TCP Proto = "tcp"
	UDP Proto = "udp"
)

// Conn is one connection as a backend sees it, from the VM's side when
// known (Local is the VM's address), else as originated.
type Conn struct {
	Proto  Proto
	Local  netip.AddrPort
	Remote netip.AddrPort
	State  string // "ESTABLISHED", ...
	// Device is the interface the flow uses, when the backend knows it.
	Device string
	// ULP is the socket's upper layer protocol ("tls" for kernel TLS).
	ULP string
	// Mark is the conntrack or socket mark.
	Mark uint32
	// ID identifies the entry to the backend (conntrack id, socket cookie).
	ID uint64
}

func (c Conn) String() string { return fmt.Sprintf("%s %s->%s", c.Proto, c.Local, c.Remote) }

// Selector picks the connections of one VM.
type Selector struct {
	// Host is the namespace to look in ("" = the current one).
	Host string
	// Addrs are the VM's addresses; a connection with either end in
	// one of them is selected.
	Addrs []netip.Prefix
}

// Validate names the first bad field.
func (s Selector) Validate() error {
	if len(s.Addrs) == 0 {
		return fmt.Errorf("%w: Selector.Addrs is empty", ErrInvalid)
	}
	for i, p := range s.Addrs {
		if !p.IsValid() {
			return fmt.Errorf("%w: Selector.Addrs[%d] is not a valid prefix", ErrInvalid, i)
		}
	}
	return nil
}

// Result of one Reset.
type ResetResult struct {
	Reset  int // endpoints torn down / entries removed
	Missed int // connections already gone
}

// ConnAuditor lists and resets a VM's connections on one host.
type ConnAuditor interface {
	// List returns the connections selected by sel.
	List(ctx context.Context, sel Selector) ([]Conn, error)
	// Reset tears down conns in one batch, so their endpoints reconnect.
	Reset(ctx context.Context, sel Selector, conns []Conn) (ResetResult, error)
}
