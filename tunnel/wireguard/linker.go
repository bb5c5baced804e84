// Package wireguard implements tunnel.SecureLinker with WireGuard between
// the secure end host and the remote end host (FIG. 3 block 345): the
// kernel WireGuard device where the host's kernel has it, else an embedded
// wireguard-go device over TUN inside the host's netns, both configured
// through wgctrl with fresh keys for every link.
//
// Each end gets an address-less point-to-point device named
// "slw<ID>s" (secure) or "slw<ID>r" (remote), one peer (the other end,
// at its Underlay address and Port) and allowed IPs = the other end's
// Protected prefixes. Once active, the secure end routes Remote.Protected
// through its device in the main table (unless Spec.NoSecureRoutes), the
// remote end routes Secure.Protected through its device in a table of the
// link's own, looked up by "from <Remote.Protected>" rules, and with
// Spec.ProxyARP each end answers ARP for the other end's addresses on its
// LAN side, so the moved VM and its peers keep their addresses in one
// subnet. Verify proves encryption with WireGuard's handshake and byte
// counters. A state file per link (no keys) lets List and Close find links
// a previous process left behind.
package wireguard

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

var _ tunnel.SecureLinker = (*Linker)(nil)

// Linker sets up WireGuard links. Create it with New; it is safe for
// concurrent use. Embedded (userspace) devices live in this process:
// Close their links before the process exits.
type Linker struct {
	backend       Backend
	log           *slog.Logger
	psk           bool
	keepalive     time.Duration
	verifyTimeout time.Duration
	stateDir      string
	noKernel      atomic.Bool // Auto found no kernel WireGuard

	mu    sync.Mutex
	links map[string]*link
}

// link is one link's in-memory state; mu serialises operations on it.
type link struct {
	mu   sync.Mutex
	st   linkState
	user [2]*userDevice // embedded devices (nil for kernel ones)
	gone bool           // closed and removed from the Linker
	up   bool           // devices up and handshaken (Prepare), nothing routed yet

	// Guarded by Linker.mu: LAN interfaces ("host\x00dev") the link's proxy
	// entries use, and sysctl values handed over by closed links sharing
	// them (restored when this one closes).
	lans      []string
	inherited []inheritedSysctl
	// proxies are the proxy neighbour entries the link uses
	// ("host\x00dev\x00addr").
	proxies []string
	// claims are the ports and tables the link holds per host
	// ("host\x00port/51820"), taken at Prepare although nothing binds
	// or fills them before Activate.
	claims []string
}

type inheritedSysctl struct {
	host string
	save sysctlSave
}

// New returns a Linker configured by opts. It removes the UAPI sockets
// that sealift devices of dead processes left behind (no process serves
// them; see sweepStaleSockets).
func New(opts ...Option) *Linker {
	l := &Linker{
		backend:       Auto,
		log:           discardLogger(),
		keepalive:     DefaultKeepalive,
		verifyTimeout: DefaultVerifyTimeout,
		stateDir:      DefaultStateDir,
		links:         map[string]*link{},
	}
	for _, o := range opts {
		o(l)
	}
	sweepStaleSockets(l.log)
	return l
}

// check rejects specs this backend cannot set up, before anything is
// touched.
func (l *Linker) check(spec tunnel.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if spec.Kind != tunnel.WireGuard {
		return fmt.Errorf("%w: Kind %q (this backend sets up %q)", tunnel.ErrInvalid, spec.Kind, tunnel.WireGuard)
	}
	if spec.Secure.Host == spec.Remote.Host {
		return fmt.Errorf("%w: Secure.Host and Remote.Host are both %q", tunnel.ErrInvalid, spec.Secure.Host)
	}
	ends := []struct {
		name string
		end  tunnel.End
	}{{"Secure", spec.Secure}, {"Remote", spec.Remote}}
	for _, e := range ends {
		if err := nsutil.Check(e.end.Host); err != nil {
			return fmt.Errorf("%w: %s.Host %q: %w", tunnel.ErrInvalid, e.name, e.end.Host, err)
		}
	}
	if !spec.ProxyARP {
		return nil
	}
	for _, e := range []struct{ host, other tunnel.End }{{spec.Secure, spec.Remote}, {spec.Remote, spec.Secure}} {
		if err := forwardingReady(e.host.Host, e.other.Protected); err != nil {
			return err
		}
	}
	// Each end answers, on its LAN, for the other end's protected
	// addresses that it reaches on-link: IPv6 has no proxy_arp for a whole
	// prefix, only proxy NDP per address. An IPv6 prefix the answering
	// host reaches through a gateway (a peer subnet behind a router) needs
	// no proxy and is fine.
	for i, e := range ends {
		answering := ends[1-i].end.Host
		for j, p := range e.end.Protected {
			if !p.Addr().Is6() || p.IsSingleIP() {
				continue
			}
			on, err := reachedOnLink(answering, p)
			if err != nil {
				return err
			}
			if on {
				return fmt.Errorf("%w: %s.Protected[%d] %s: on-link at %s, where proxy NDP would need /128 prefixes", tunnel.ErrInvalid, e.name, j, p, hostName(answering))
			}
		}
	}
	return nil
}

// get returns the in-memory link id or tunnel.ErrNoLink.
func (l *Linker) get(id string) (*link, error) {
	l.mu.Lock()
	lk := l.links[id]
	l.mu.Unlock()
	if lk == nil {
		return nil, fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	return lk, nil
}

// List returns this Linker's links and those recorded in the state
// directory (e.g. left by a previous process; Close removes them).
func (l *Linker) List(ctx context.Context) ([]tunnel.Link, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	lks := make([]*link, 0, len(l.links))
	for _, lk := range l.links {
		lks = append(lks, lk)
	}
	l.mu.Unlock()
	var out []tunnel.Link
	seen := map[string]bool{}
	for _, lk := range lks {
		lk.mu.Lock()
		if !lk.gone && lk.st.Link.ID != "" {
			out = append(out, lk.st.Link)
			seen[lk.st.Link.ID] = true
		}
		lk.mu.Unlock()
	}
	ids, err := l.stateIDs()
	if err != nil {
		return nil, err
	}
	for _, id := range ids {
		if seen[id] {
			continue
		}
		st, ok, err := l.loadState(id)
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, st.Link)
		}
	}
	slices.SortFunc(out, func(a, b tunnel.Link) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}
