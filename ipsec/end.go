package ipsec

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/sealift/sealift/tunnel"
)

// End is one host's ends of XFRM links (tunnel.LinkEnd): the same ESP
// tunnel, policies, routes, proxy entries and probe as the Linker's, set
// up by each host for itself, so no SA key is ever made in one place and
// carried to the other. Two Ends, local or behind agents, make a link
// through tunnel.Pair; an agent serves its host's End.
//
//   - Open makes an X25519 key pair (crypto/ecdh, crypto/rand), keeps the
//     private key in memory only (never logged, written or put in an
//     error), installs this end's policies with action "block" (uncovered
//     traffic is dropped, never sent in clear) and returns the public key
//     and the underlay address (tunnel.Public, port 0).
//   - Connect computes the shared secret with the other end's public key
//     and derives both directions' rfc4106(gcm(aes)) keys and SPIs from it
//     (deriveLink, derive.go: the other end derives the same), installs
//     the receiving SA, then the sending one, names the sending SA in the
//     out policies (still blocking) and drops the private key: it served
//     its one exchange. (Go's crypto/ecdh has no way to zero a key's
//     memory; the End keeps no reference to it, and the derived keys and
//     the shared secret are zeroed once installed.) A new exchange, a
//     rekey, is a new Open. Connect then sends a probe (probe.go) through
//     the new sending SA, so the other end's receiving SA, if it is
//     connected already, counts one packet from this end.
//   - Activate switches the in and fwd policies, then the out ones, to
//     allow and adds the routes and proxy ARP entries, announced by
//     gratuitous ARP; on an active end it only announces again.
//   - Verify proves the end with counters of this host's kernel: it sends
//     a probe through the sending SA, which must count it, and the
//     receiving SA must have decrypted a packet of the other end (a probe
//     it sent at its Connect or Verify, or the link's traffic), which
//     only the other end's keys produce. tunnel.Pair verifies both ends
//     at once: each end's Verify probe proves the other's receiving SA
//     (and the remote end's Connect probe, sent last, proved the secure
//     end's already), so a link nothing else crosses is proven too.
//   - Close removes what carries the link's reqid here (ReqID: the same
//     tag the Linker uses), its routes and proxy entries; List returns
//     this End's ends and the ones the kernel holds that it does not know
//     (a previous run's), as the Linker's List does: ID "r" + the reqid's
//     low 24 bits, the role from the out policy's SPI (derive.go), no
//     public key (it was in the previous run's memory only). Neither
//     needs the private key.
//
// With WithEndStateDir, each end is recorded in a file before what it
// records is installed (its Spec, role, public parts and SPIs, never a
// key), and NewEnd reads the files: a restarted agent lists the ends a
// previous run left with their IDs and public keys, and can Activate,
// Verify and Close them (the SAs stay in the kernel); only Connect needs
// the private key, which died with the previous run.
type End struct {
	host      string
	log       *slog.Logger
	stateDir  string
	probeWait time.Duration

	mu   sync.Mutex
	ends map[string]*oneEnd
	// recovered maps the IDs List gave links found only in the kernel to
	// their reqids, so Close takes them.
	recovered map[string]uint32
}

var _ tunnel.LinkEnd = (*End)(nil)

// EndOption configures an End.
type EndOption func(*End)

// WithEndLogger sets the End's logger (default: discard). Keys are never
// logged.
func WithEndLogger(l *slog.Logger) EndOption { return func(e *End) { e.log = l } }

// WithEndStateDir records the End's ends in dir (one JSON file per end,
// no key), so a new End on the same dir finds them. Give each End a
// directory of its own. Without it, ends live in memory, and a new End
// finds the previous one's in the kernel only (List).
func WithEndStateDir(dir string) EndOption { return func(e *End) { e.stateDir = dir } }

// WithEndProbeTimeout bounds how long Verify waits for the SA counters
// (default 3s; the probe is sent again after a third of it). The context
// passed to Verify bounds it too.
func WithEndProbeTimeout(d time.Duration) EndOption { return func(e *End) { e.probeWait = d } }

// NewEnd returns host's End ("" = the current netns), with the ends its
// state dir records.
func NewEnd(host string, opts ...EndOption) *End {
	e := &End{host: host, log: slog.New(slog.NewTextHandler(io.Discard, nil)), probeWait: defaultProbeTimeout,
		ends: map[string]*oneEnd{}, recovered: map[string]uint32{}}
	for _, o := range opts {
		o(e)
	}
	e.load()
	return e
}

// oneEnd is one link's end on this host. op serializes the operations on
// it; st is read by List under End.mu, so it changes under End.mu too.
type oneEnd struct {
	op sync.Mutex
	// l is the link as the Linker knows one: spec, reqid, algorithm, SPIs,
	// active, and this end's routes and proxy entries at index i.
	l *link
	i int
	// st is the end's state ("" ID: being opened).
	st tunnel.EndState
	// priv is the X25519 private key, from Open until Connect has
	// installed the SAs: never logged, stored or put in an error.
	priv *ecdh.PrivateKey
	// peer is what Connect was given.
	peer tunnel.Public
	// gone: closed (or its Open failed) while another call waited for op.
	gone bool
}

// roleIndex is the index of role's end in a link's per-end arrays.
func roleIndex(role tunnel.Role) int {
	if role == tunnel.RemoteRole {
		return 1
	}
	return 0
}

// endFor is role's end of spec at host, with handle h.
func endFor(host string, h *netlink.Handle, spec tunnel.Spec, role tunnel.Role) *end {
	if role == tunnel.RemoteRole {
		return &end{host: host, h: h, local: spec.Remote, peer: spec.Secure, out: remoteToSecure, in: secureToRemote}
	}
	return &end{host: host, h: h, local: spec.Secure, peer: spec.Remote, out: secureToRemote, in: remoteToSecure}
}

// hostLabel names the End's host in messages.
func (e *End) hostLabel() string {
	if e.host == "" {
		return "the current netns"
	}
	return fmt.Sprintf("host %q", e.host)
}

// checkID validates a link ID as tunnel.Spec.Validate does.
func checkID(id string) error {
	if id == "" || len(id) > 8 {
		return fmt.Errorf("%w: ID %q must be 1 to 8 characters", tunnel.ErrInvalid, id)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return fmt.Errorf("%w: ID %q may hold only a-z and 0-9", tunnel.ErrInvalid, id)
		}
	}
	return nil
}

// get returns id's end, locked (op); the caller unlocks it.
func (e *End) get(id string) (*oneEnd, error) {
	e.mu.Lock()
	o := e.ends[id]
	e.mu.Unlock()
	if o != nil {
		o.op.Lock()
		if !o.gone {
			return o, nil
		}
		o.op.Unlock()
	}
	return nil, fmt.Errorf("%w: %q on %s", tunnel.ErrNoLink, id, e.hostLabel())
}

// setState updates o's state (under e.mu, for List).
func (e *End) setState(o *oneEnd, f func(*tunnel.EndState)) {
	e.mu.Lock()
	f(&o.st)
	e.mu.Unlock()
}

// Open installs this host's end of spec in role: a fresh X25519 key
// pair, and the end's policies, blocking. Nothing is touched if spec or
// role is invalid (tunnel.ErrInvalid, naming the field), the host does
// not exist, or the link's reqid or selectors are in use here
// (tunnel.ErrExists).
func (e *End) Open(ctx context.Context, spec tunnel.Spec, role tunnel.Role) (tunnel.EndState, error) {
	if err := checkSpec(spec); err != nil {
		return tunnel.EndState{}, err
	}
	if role != tunnel.SecureRole && role != tunnel.RemoteRole {
		return tunnel.EndState{}, fmt.Errorf("%w: role %q (want %q or %q)", tunnel.ErrInvalid, role, tunnel.SecureRole, tunnel.RemoteRole)
	}
	if err := ctx.Err(); err != nil {
		return tunnel.EndState{}, err
	}
	e.mu.Lock()
	if _, ok := e.ends[spec.ID]; ok {
		e.mu.Unlock()
		return tunnel.EndState{}, fmt.Errorf("%w: ID %q on %s", tunnel.ErrExists, spec.ID, e.hostLabel())
	}
	o := &oneEnd{l: &link{spec: spec, reqid: ReqID(spec.ID), alg: AESGCM}, i: roleIndex(role)}
	o.op.Lock()
	defer o.op.Unlock()
	e.ends[spec.ID] = o // reserved; removed again if Open fails
	e.mu.Unlock()
	st, err := e.open(o, role)
	if err != nil {
		e.mu.Lock()
		delete(e.ends, spec.ID)
		o.gone = true
		e.mu.Unlock()
		return tunnel.EndState{}, err
	}
	return st, nil
}

func (e *End) open(o *oneEnd, role tunnel.Role) (tunnel.EndState, error) {
	l := o.l
	h, err := openHandle(e.host)
	if err != nil {
		return tunnel.EndState{}, err
	}
	defer h.Close()
	x := endFor(e.host, h, l.spec, role)
	// Check everything that can be checked before touching anything.
	if err := x.checkFree(l); err != nil {
		return tunnel.EndState{}, err
	}
	if _, err := x.routePlan(l.spec.MTU, l.alg); err != nil {
		return tunnel.EndState{}, err
	}
	if l.spec.ProxyARP {
		if _, err := x.proxyPlan(); err != nil {
			return tunnel.EndState{}, err
		}
	}
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return tunnel.EndState{}, fmt.Errorf("ipsec: generate the X25519 key: %w", err)
	}
	// Until Connect, the out policies name a placeholder SPI that has
	// the direction's fixed bits (derive.go): a restarted End without
	// records still tells this end's role.
	l.spi[x.out] = spiDirBits(x.out)
	st := tunnel.EndState{Spec: l.spec, Role: role, Backend: Backend,
		Public: tunnel.Public{Key: base64.StdEncoding.EncodeToString(priv.PublicKey().Bytes()), Endpoint: netip.AddrPortFrom(x.local.Underlay, 0)}}
	// Recorded before anything is installed: a crash leaves a record.
	if err := e.save(st, l.spi, tunnel.Public{}); err != nil {
		return tunnel.EndState{}, err
	}
	if err := x.addPolicies(l, netlinkBlock, l.spi[x.out]); err != nil {
		return tunnel.EndState{}, errors.Join(err, x.remove(l.reqid, nil), e.forget(l.spec.ID))
	}
	o.priv = priv
	e.setState(o, func(s *tunnel.EndState) { *s = st })
	e.log.Info("ipsec end opened", "link", l.spec.ID, "role", role, "host", e.host, "reqid", fmt.Sprintf("0x%08x", l.reqid))
	return st, nil
}

// Connect derives the SAs from this end's private key and the other
// end's public key, installs them (receiving first), names the sending
// SA in the out policies (still blocking), drops the private key and
// sends a probe through the sending SA. A bad peer (key not base64 or not
// 32 bytes, endpoint other than the other end's Underlay with port 0) is
// tunnel.ErrInvalid, naming the field and value, with nothing touched.
// Connecting again with the same peer is a no-op; with another, ErrExists.
func (e *End) Connect(ctx context.Context, id string, peer tunnel.Public) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := peer.Validate(); err != nil {
		return err
	}
	pub, err := parsePublicKey(peer.Key)
	if err != nil {
		return err
	}
	o, err := e.get(id)
	if err != nil {
		return err
	}
	defer o.op.Unlock()
	l, role := o.l, o.st.Role
	x := endFor(e.host, nil, l.spec, role)
	if ep := peer.Endpoint; ep.Addr().Unmap() != x.peer.Underlay.Unmap() || ep.Port() != 0 {
		return fmt.Errorf("%w: Public.Endpoint %q: the other end of link %q is at %s, port 0", tunnel.ErrInvalid, ep, id, x.peer.Underlay)
	}
	if o.st.Connected {
		if peer.Key == o.peer.Key {
			return nil
		}
		return fmt.Errorf("%w: end %q on %s is connected to another key; a new exchange needs a new Open", tunnel.ErrExists, id, e.hostLabel())
	}
	if o.priv == nil {
		return fmt.Errorf("%w: ID %q: the end was opened by an earlier run and its private key is gone with it; close it and open it again", tunnel.ErrInvalid, id)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	keys, spis, err := deriveLink(o.priv, pub, role, id)
	defer keys.wipe()
	if err != nil {
		return err
	}
	h, err := openHandle(e.host)
	if err != nil {
		return err
	}
	defer h.Close()
	x.h = h
	if err := x.addStates(l, spis, keys); err != nil {
		return err
	}
	if err := x.updatePolicies(x.outPolicies(l, netlinkBlock, spis[x.out])); err != nil {
		return errors.Join(err, x.deleteSAs(l, spis))
	}
	l.spi = spis
	o.priv = nil // served its one exchange
	o.peer = peer
	e.setState(o, func(s *tunnel.EndState) { s.Connected = true })
	if err := e.save(o.st, l.spi, peer); err != nil {
		return err
	}
	e.log.Info("ipsec end connected", "link", id, "role", role, "host", e.host,
		"spi_out", fmt.Sprintf("0x%08x", spis[x.out]), "spi_in", fmt.Sprintf("0x%08x", spis[x.in]))
	if err := x.sendProbe(x.outPolicies(l, netlinkAllow, spis[x.out])[0].Tmpls[0], probePayload(id, "connect")); err != nil {
		e.log.Warn("ipsec end: the probe after Connect was not sent", "link", id, "err", err)
	}
	return nil
}

// Activate switches the end's in and fwd policies, then its out
// policies, to allow with the ESP template, adds the routes for the other
// end's Protected prefixes and, with ProxyARP, the proxy entries,
// announced by gratuitous ARP. On an active end it only announces again.
func (e *End) Activate(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	o, err := e.get(id)
	if err != nil {
		return err
	}
	defer o.op.Unlock()
	if !o.st.Connected {
		return fmt.Errorf("%w: end %q on %s is not connected (Connect gives it the other end's public key)", tunnel.ErrInvalid, id, e.hostLabel())
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	h, err := openHandle(e.host)
	if err != nil {
		return err
	}
	defer h.Close()
	l := o.l
	x := endFor(e.host, h, l.spec, o.st.Role)
	if l.active {
		proxies := l.proxies[o.i]
		if len(proxies) == 0 && l.spec.ProxyARP {
			// Activated by a previous run: the entries are the plan's.
			if proxies, err = x.proxyPlan(); err != nil {
				return err
			}
		}
		return x.announce(proxies)
	}
	if err := x.allowIn(l); err != nil {
		return err
	}
	if err := x.allowOut(l); err != nil {
		return err
	}
	if len(l.routes[o.i]) == 0 {
		if err := x.addRoutes(l, o.i); err != nil {
			return err
		}
	}
	l.active = true
	e.setState(o, func(s *tunnel.EndState) { s.Active = true })
	if err := e.save(o.st, l.spi, o.peer); err != nil {
		return err
	}
	e.log.Info("ipsec end active", "link", id, "role", o.st.Role, "host", e.host)
	return nil
}

// Verify checks the end's policies (all in place, allowed, the out ones
// naming the sending SA) and proves its SAs with this host's counters:
// the sending SA counts a probe Verify sends through it, the receiving
// SA has decrypted the other end's packets (see End). It returns the two
// SAs' counters; without that proof, tunnel.ErrNotProven.
func (e *End) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	if err := checkID(id); err != nil {
		return tunnel.Proof{}, err
	}
	o, err := e.get(id)
	if err != nil {
		return tunnel.Proof{}, err
	}
	defer o.op.Unlock()
	if !o.l.active {
		return tunnel.Proof{}, fmt.Errorf("%w: end %q on %s is not active", tunnel.ErrNotProven, id, e.hostLabel())
	}
	h, err := openHandle(e.host)
	if err != nil {
		return tunnel.Proof{}, err
	}
	defer h.Close()
	x := endFor(e.host, h, o.l.spec, o.st.Role)
	if err := x.checkPolicies(o.l); err != nil {
		return tunnel.Proof{}, err
	}
	return x.prove(ctx, o.l, e.probeWait)
}

// Close removes what the link installed here: routes and proxy entries
// (those another sealift link here still needs stay), policies and SAs,
// all found by the link's reqid, so Close works for an end a previous
// run opened too. Closing an absent end is a no-op.
func (e *End) Close(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	o := e.ends[id]
	reqid, ok := e.recovered[id]
	if !ok {
		reqid = ReqID(id)
	}
	e.mu.Unlock()
	var dsts []netip.Prefix
	if o != nil {
		o.op.Lock()
		defer o.op.Unlock()
		if o.gone {
			return nil
		}
		dsts = slices.Clone(endFor(e.host, nil, o.l.spec, o.st.Role).peer.Protected)
		for i := range dsts {
			dsts[i] = dsts[i].Masked()
		}
	}
	h, err := openHandle(e.host)
	switch {
	case hostGone(err):
		// The namespace is gone with everything in it.
	case err != nil:
		return err
	default:
		err = (&end{host: e.host, h: h}).remove(reqid, dsts)
		h.Close()
		if err != nil {
			return err // the record stays: Close again
		}
	}
	if err := e.forget(id); err != nil {
		return err
	}
	e.mu.Lock()
	delete(e.ends, id)
	delete(e.recovered, id)
	if o != nil {
		o.gone, o.priv = true, nil
	}
	e.mu.Unlock()
	e.log.Info("ipsec end closed", "link", id, "host", e.host)
	return nil
}

// List returns this End's ends and the sealift XFRM links the kernel
// holds here that it does not know (see End), sorted by ID.
func (e *End) List(ctx context.Context) ([]tunnel.EndState, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	found, err := scan([]string{e.host})
	if err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	known := map[uint32]bool{}
	var out []tunnel.EndState
	for _, o := range e.ends {
		known[o.l.reqid] = true // being opened too: its policies may be in
		if o.st.Spec.ID != "" {
			out = append(out, o.st)
		}
	}
	for _, f := range found {
		if known[f.reqid] {
			continue
		}
		st := e.recoveredEnd(f)
		e.recovered[st.Spec.ID] = f.reqid
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b tunnel.EndState) int { return strings.Compare(a.Spec.ID, b.Spec.ID) })
	return out, nil
}

// recoveredEnd is the end of a link found only in the kernel here.
func (e *End) recoveredEnd(f *found) tunnel.EndState {
	spec := tunnel.Spec{ID: fmt.Sprintf("r%06x", f.reqid&0xffffff), Kind: tunnel.IPsec}
	st := tunnel.EndState{Role: tunnel.SecureRole, Backend: Backend, Connected: f.states >= 2, Active: f.active}
	if len(f.ends) > 0 {
		fe := f.ends[0]
		if r, ok := spiRole(fe.outSPI); ok {
			st.Role = r
		}
		local := tunnel.End{Host: e.host, Underlay: fe.underlay, Protected: fe.protected}
		peer := tunnel.End{Underlay: fe.peerUnd, Protected: fe.peerPro}
		spec.Secure, spec.Remote = local, peer
		if st.Role == tunnel.RemoteRole {
			spec.Secure, spec.Remote = peer, local
		}
		st.Public.Endpoint = netip.AddrPortFrom(fe.underlay, 0)
	}
	st.Spec = spec
	return st
}

// endRecord is an end's state file: public parts only, never a key.
type endRecord struct {
	State tunnel.EndState `json:"state"`
	// SPI are the link's SPIs by direction (secure->remote,
	// remote->secure); before Connect, the out direction's placeholder.
	SPI  [2]uint32     `json:"spi"`
	Peer tunnel.Public `json:"peer"`
}

func (e *End) recordPath(id string) string { return filepath.Join(e.stateDir, "end-"+id+".json") }

// save writes an end's record (no-op without a state dir).
func (e *End) save(st tunnel.EndState, spi [2]uint32, peer tunnel.Public) error {
	if e.stateDir == "" {
		return nil
	}
	if err := os.MkdirAll(e.stateDir, 0o700); err != nil {
		return fmt.Errorf("ipsec: state dir: %w", err)
	}
	b, err := json.MarshalIndent(endRecord{State: st, SPI: spi, Peer: peer}, "", "  ")
	if err != nil {
		return err
	}
	path := e.recordPath(st.Spec.ID)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("ipsec: state file: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("ipsec: state file: %w", err)
	}
	return nil
}

// forget removes id's record.
func (e *End) forget(id string) error {
	if e.stateDir == "" {
		return nil
	}
	if err := os.Remove(e.recordPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("ipsec: state file: %w", err)
	}
	return nil
}

// load reads the state dir's records (NewEnd); a record it cannot read
// is logged and left for an operator.
func (e *End) load() {
	if e.stateDir == "" {
		return
	}
	paths, _ := filepath.Glob(filepath.Join(e.stateDir, "end-*.json"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		var r endRecord
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err == nil {
			err = checkSpec(r.State.Spec)
		}
		if err != nil {
			e.log.Warn("ipsec end: unreadable state file", "path", p, "err", err)
			continue
		}
		l := &link{spec: r.State.Spec, reqid: ReqID(r.State.Spec.ID), alg: AESGCM, spi: r.SPI, active: r.State.Active}
		e.ends[r.State.Spec.ID] = &oneEnd{l: l, i: roleIndex(r.State.Role), st: r.State, peer: r.Peer}
		e.log.Info("ipsec end found", "link", r.State.Spec.ID, "role", r.State.Role, "host", e.host)
	}
}
