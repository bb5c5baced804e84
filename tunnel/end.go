package tunnel

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"
)

// A link has two ends on two hosts. A LinkEnd configures the ends on its
// own host, so a host's private or symmetric key material is made there
// and never leaves it: the ends exchange only Public parts, through
// whoever composes them (Pair, in the controller). Pair makes two ends,
// local or behind agents, one SecureLinker, so the Migrator does not
// change. Backends: tunnel/wireguard.End (a key pair per device) and
// ipsec.End (an X25519 key pair per end, from which each host derives
// the same SA keys and SPIs with HKDF); their Linkers still configure
// both ends from one process.

// Role says which end of a link a host holds.
type Role string

const (
	SecureRole Role = "secure" // Spec.Secure: the secure environment's side
	RemoteRole Role = "remote" // Spec.Remote: the different environment's side
)

// Public is what one end gives the other: nothing secret.
type Public struct {
	// Key is the end's public key (base64): WireGuard's, or the X25519
	// key from which both ends of an XFRM link derive their SA keys.
	Key string
	// Endpoint is where the other end reaches this one (its underlay
	// address and port; the port is 0 where the backend needs none).
	Endpoint netip.AddrPort
}

// Validate names the first bad field.
func (p Public) Validate() error {
	if p.Key == "" {
		return fmt.Errorf("%w: Public.Key is empty", ErrInvalid)
	}
	if !p.Endpoint.Addr().IsValid() {
		return fmt.Errorf("%w: Public.Endpoint %q has no address", ErrInvalid, p.Endpoint)
	}
	return nil
}

// EndState is one end as its host knows it.
type EndState struct {
	Spec    Spec
	Role    Role
	Backend string // as Link.Backend
	// Device is the interface traffic enters the link through here (""
	// for XFRM policy-based links).
	Device string
	Public Public
	// Connected: the peer's Public is configured; Active: the end
	// carries traffic (Activate ran).
	Connected, Active bool
}

// LinkEnd configures the ends of secure links on one host.
type LinkEnd interface {
	// Open creates this host's end of spec in role, with a key pair made
	// here, carrying nothing (uncovered traffic is dropped, never sent in
	// clear); it returns the end, with the Public part the other end needs.
	Open(ctx context.Context, spec Spec, role Role) (EndState, error)
	// Connect gives the end the other end's Public part. Both connected,
	// the ends can prove each other (handshake), still carrying nothing.
	Connect(ctx context.Context, id string, peer Public) error
	// Activate makes the end carry traffic and announce what it proxies
	// (SecureLinker.Activate, for this end); on an active end it only
	// announces again.
	Activate(ctx context.Context, id string) error
	// Verify proves this end encrypts (SecureLinker.Verify, as seen here).
	Verify(ctx context.Context, id string) (Proof, error)
	// Close removes the end; closing an absent end is a no-op.
	Close(ctx context.Context, id string) error
	// List returns the ends found on this host (for recovery).
	List(ctx context.Context) ([]EndState, error)
}

// Pair is a SecureLinker made of two LinkEnds: Secure for the Spec's
// Secure end (host A, or the routing core), Remote for its Remote end.
type Pair struct {
	Secure, Remote LinkEnd
}

var _ SecureLinker = Pair{}

// Prepare opens both ends (each makes its own keys), then gives each the
// other's Public part. If anything fails, whatever was opened is closed.
func (p Pair) Prepare(ctx context.Context, spec Spec) (Link, error) {
	if err := spec.Validate(); err != nil {
		return Link{}, err
	}
	s, err := p.Secure.Open(ctx, spec, SecureRole)
	if err != nil {
		return Link{}, fmt.Errorf("secure end: %w", err)
	}
	undo := func(cause error) (Link, error) {
		return Link{}, errors.Join(cause, p.close(context.WithoutCancel(ctx), spec.ID))
	}
	r, err := p.Remote.Open(ctx, spec, RemoteRole)
	if err != nil {
		return undo(fmt.Errorf("remote end: %w", err))
	}
	for _, e := range []struct {
		name string
		st   EndState
	}{{"secure", s}, {"remote", r}} {
		if err := e.st.Public.Validate(); err != nil {
			return undo(fmt.Errorf("%s end's public part: %w", e.name, err))
		}
	}
	if err := p.Secure.Connect(ctx, spec.ID, r.Public); err != nil {
		return undo(fmt.Errorf("secure end: %w", err))
	}
	if err := p.Remote.Connect(ctx, spec.ID, s.Public); err != nil {
		return undo(fmt.Errorf("remote end: %w", err))
	}
	return link(spec, s, r), nil
}

func link(spec Spec, s, r EndState) Link {
	return Link{Spec: spec, Backend: s.Backend, SecureDevice: s.Device, RemoteDevice: r.Device, Active: s.Active && r.Active}
}

// both runs f on the secure end and on the remote end at once (they are
// two hosts: in the switchover hook, each round trip to an agent adds to
// the VM's downtime) and joins their errors, each named by its end.
func (p Pair) both(f func(remote bool, e LinkEnd) error) error {
	errc := make(chan error, 1)
	go func() {
		if err := f(true, p.Remote); err != nil {
			errc <- fmt.Errorf("remote end: %w", err)
			return
		}
		errc <- nil
	}()
	var serr error
	if err := f(false, p.Secure); err != nil {
		serr = fmt.Errorf("secure end: %w", err)
	}
	return errors.Join(serr, <-errc)
}

// Activate activates both ends at once (neither carries anything for
// the other until both are active: the VM is paused meanwhile).
func (p Pair) Activate(ctx context.Context, id string) error {
	return p.both(func(_ bool, e LinkEnd) error { return e.Activate(ctx, id) })
}

// Verify needs both ends' proof (asked at once); the result sums their
// counters and keeps the older handshake (the link is proven since both
// saw one).
func (p Pair) Verify(ctx context.Context, id string) (Proof, error) {
	var s, r Proof
	err := p.both(func(remote bool, e LinkEnd) error {
		pr, err := e.Verify(ctx, id)
		if remote {
			r = pr
		} else {
			s = pr
		}
		return err
	})
	if err != nil {
		return Proof{}, err
	}
	hs := s.Handshake
	if r.Handshake.Before(hs) {
		hs = r.Handshake
	}
	return Proof{Handshake: hs, TxPackets: s.TxPackets + r.TxPackets, RxPackets: s.RxPackets + r.RxPackets,
		TxBytes: s.TxBytes + r.TxBytes, RxBytes: s.RxBytes + r.RxBytes,
		Detail: "secure end: " + s.Detail + "; remote end: " + r.Detail}, nil
}

// Close closes both ends, trying both whatever happens.
func (p Pair) Close(ctx context.Context, id string) error { return p.close(ctx, id) }

func (p Pair) close(ctx context.Context, id string) error {
	var errs []error
	if err := p.Remote.Close(ctx, id); err != nil {
		errs = append(errs, fmt.Errorf("remote end: %w", err))
	}
	if err := p.Secure.Close(ctx, id); err != nil {
		errs = append(errs, fmt.Errorf("secure end: %w", err))
	}
	return errors.Join(errs...)
}

// List pairs the ends both hosts report by link ID. A link with one end
// only (a crash between the two Opens, or one host's end closed) is
// listed too, inactive, so recovery closes it.
func (p Pair) List(ctx context.Context) ([]Link, error) {
	ss, err := p.Secure.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("secure end: %w", err)
	}
	rs, err := p.Remote.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("remote end: %w", err)
	}
	return pairEnds(ss, rs), nil
}

// Hosts is a SecureLinker over many hosts' link ends: a link's ends are
// the LinkEnds of its Spec's Secure.Host and Remote.Host (the names the
// Migrator's Environments use: Environment.Host, Core.Host), composed
// as a Pair. A controller with an agent per host builds it from the
// agents' clients. Links it did not prepare (after a restart) are found
// by listing every host's ends.
type Hosts struct {
	ends map[string]LinkEnd
	mu   sync.Mutex
	// pairs remembers each prepared link's pair, by ID.
	pairs map[string]Pair
}

var _ SecureLinker = (*Hosts)(nil)

// NewHosts returns a linker over ends, keyed by host name.
func NewHosts(ends map[string]LinkEnd) *Hosts {
	return &Hosts{ends: maps.Clone(ends), pairs: map[string]Pair{}}
}

// Prepare prepares spec between the LinkEnds of its two hosts; a host
// without one is ErrInvalid, naming it.
func (h *Hosts) Prepare(ctx context.Context, spec Spec) (Link, error) {
	if err := spec.Validate(); err != nil {
		return Link{}, err
	}
	var p Pair
	for _, e := range []struct {
		field, host string
		end         *LinkEnd
	}{{"Secure.Host", spec.Secure.Host, &p.Secure}, {"Remote.Host", spec.Remote.Host, &p.Remote}} {
		le, ok := h.ends[e.host]
		if !ok {
			return Link{}, fmt.Errorf("%w: %s %q has no link end", ErrInvalid, e.field, e.host)
		}
		*e.end = le
	}
	l, err := p.Prepare(ctx, spec)
	if err != nil {
		return Link{}, err
	}
	h.mu.Lock()
	h.pairs[spec.ID] = p
	h.mu.Unlock()
	return l, nil
}

// pair returns link id's pair: remembered, or found on the hosts.
func (h *Hosts) pair(ctx context.Context, id string) (Pair, error) {
	h.mu.Lock()
	p, ok := h.pairs[id]
	h.mu.Unlock()
	if ok {
		return p, nil
	}
	for _, le := range h.ends {
		ends, err := le.List(ctx)
		if err != nil {
			return Pair{}, err
		}
		for _, e := range ends {
			if e.Spec.ID != id {
				continue
			}
			s, sok := h.ends[e.Spec.Secure.Host]
			r, rok := h.ends[e.Spec.Remote.Host]
			if !sok || !rok {
				return Pair{}, fmt.Errorf("%w: link %q between %q and %q: a host has no link end", ErrNoLink, id, e.Spec.Secure.Host, e.Spec.Remote.Host)
			}
			p = Pair{Secure: s, Remote: r}
			h.mu.Lock()
			h.pairs[id] = p
			h.mu.Unlock()
			return p, nil
		}
	}
	return Pair{}, fmt.Errorf("%w: %q", ErrNoLink, id)
}

func (h *Hosts) Activate(ctx context.Context, id string) error {
	p, err := h.pair(ctx, id)
	if err != nil {
		return err
	}
	return p.Activate(ctx, id)
}

func (h *Hosts) Verify(ctx context.Context, id string) (Proof, error) {
	p, err := h.pair(ctx, id)
	if err != nil {
		return Proof{}, err
	}
	return p.Verify(ctx, id)
}

// Close closes the link's ends; an unknown link is a no-op.
func (h *Hosts) Close(ctx context.Context, id string) error {
	p, err := h.pair(ctx, id)
	if errors.Is(err, ErrNoLink) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := p.Close(ctx, id); err != nil {
		return err
	}
	h.mu.Lock()
	delete(h.pairs, id)
	h.mu.Unlock()
	return nil
}

// List pairs every host's ends by link ID (a link with one end found is
// listed inactive, for recovery).
func (h *Hosts) List(ctx context.Context) ([]Link, error) {
	var secure, remote []EndState
	for host, le := range h.ends {
		ends, err := le.List(ctx)
		if err != nil {
			return nil, fmt.Errorf("host %q: %w", host, err)
		}
		for _, e := range ends {
			if e.Role == SecureRole {
				secure = append(secure, e)
			} else {
				remote = append(remote, e)
			}
		}
	}
	return pairEnds(secure, remote), nil
}

// pairEnds joins secure and remote ends by link ID, sorted by ID.
func pairEnds(ss, rs []EndState) []Link {
	byID := map[string]*[2]*EndState{}
	var ids []string
	add := func(list []EndState, role Role, i int) {
		for k := range list {
			e := &list[k]
			if e.Role != role {
				continue
			}
			if byID[e.Spec.ID] == nil {
				byID[e.Spec.ID] = &[2]*EndState{}
				ids = append(ids, e.Spec.ID)
			}
			byID[e.Spec.ID][i] = e
		}
	}
	add(ss, SecureRole, 0)
	add(rs, RemoteRole, 1)
	slices.Sort(ids)
	out := make([]Link, 0, len(ids))
	for _, id := range ids {
		ends := byID[id]
		var s, r EndState
		spec := Spec{ID: id}
		if ends[0] != nil {
			s, spec = *ends[0], ends[0].Spec
		}
		if ends[1] != nil {
			r = *ends[1]
			if ends[0] == nil {
				spec = r.Spec
			}
		}
		l := link(spec, s, r)
		if l.Backend == "" {
			l.Backend = r.Backend
		}
		out = append(out, l)
	}
	return out
}
