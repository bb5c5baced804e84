// Package ipsec is the XFRM backend of tunnel.SecureLinker: an ESP tunnel
// between the Secure and the Remote end host, policy based (no device).
// The Linker configures both hosts from one process with keys it makes;
// End (end.go) is one host's half, a tunnel.LinkEnd, whose SA keys each
// host derives for itself from an X25519 exchange (derive.go).
//
// Per link, at each end (a network namespace):
//
//   - two SAs (one per direction) in tunnel mode between the ends' Underlay
//     addresses, with fresh keys and SPIs from crypto/rand; AEAD
//     rfc4106(gcm(aes)) with a 128-bit ICV by default, cbc(aes) +
//     hmac(sha256) with WithAlgorithm(AESCBCHMACSHA256);
//   - policies for every pair of Protected prefixes: "out" (local →
//     other end) and "in"/"fwd" (other end → local), each with an ESP
//     tunnel template carrying the link's reqid;
//   - after Activate, a route for each of the other end's Protected
//     prefixes toward the underlay (the gateway the other end's Underlay
//     is reached through; MTU Spec.MTU or underlay MTU - 80), and with
//     Spec.ProxyARP a proxy ARP (IPv6: proxy NDP) entry for each of those
//     addresses on the LAN interface whose subnet holds them, announced
//     once by gratuitous ARP (IPv6: unsolicited neighbour advertisement)
//     so neighbours with a stale entry (the VM's old MAC) switch at once.
//     Proxy ARP needs forwarding on that interface, proxy NDP proxy_ndp
//     as well; this backend changes no sysctl and refuses the spec
//     without them. The MTU is underlay - 97 for CBC + HMAC over an
//     IPv6 underlay (its worst case).
//
// Prepare installs the policies with action "block" first, then the SAs:
// a prepared link carries nothing and anything matching its selectors is
// dropped, never sent in clear. Activate switches in/fwd, then out, to
// "allow" with the template, then adds routes and proxy ARP entries.
// Rekey replaces the SAs without loss. Verify proves both SAs with a
// probe each way between the two hosts, forced through the link's SAs
// (probe.go), so a link whose VM is quiet, or still fenced, is proven
// too. Close removes exactly what the link installed: everything is
// found by the link's reqid (derived from the link ID, see ReqID), routes
// by their protocol tag RouteProtocol; a route or proxy entry another
// sealift link still needs stays.
//
// Routes come with Activate, not Prepare: while the link is prepared the
// VM may still run at the secure end, and a route for its address toward
// the underlay would cut it off there. No XFRM mark is used as a tag: a
// policy or SA with a mark matches only packets carrying that mark, so
// tagging by mark would need the traffic marked (nftables) and would let
// unmarked packets bypass the policy; the reqid is a pure tag.
//
// Why routes and proxy ARP make a peer and a moved VM talk (reference
// lab: peer 10.1.0.20 on A's br0, VM 10.1.0.10 moved to B's br0, both
// keeping 10.1.0.0/24): the peer ARPs for 10.1.0.10 on its LAN; A answers
// (proxy entry on br0; A routes 10.1.0.10/32 toward B's underlay, not to
// br0), receives the frame, routes it toward the underlay, where the out
// policy encrypts it to B. B decrypts, the fwd policy admits it, B's
// connected br0 route delivers it to the VM. The reverse path is the
// mirror image (B answers the VM's ARP for 10.1.0.20).
package ipsec

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/sealift/sealift/tunnel"
)

var _ tunnel.SecureLinker = (*Linker)(nil)

// Backend is the Link.Backend value of XFRM links.
const Backend = "xfrm"

// Linker sets up XFRM ESP links. It is safe for concurrent use.
type Linker struct {
	log        *slog.Logger
	alg        Algorithm
	rekeyGrace time.Duration
	probeWait  time.Duration
	hosts      map[string]bool // hosts scanned by List and Close

	mu    sync.Mutex
	links map[string]*link
}

// Option configures a Linker.
type Option func(*Linker)

// WithLogger sets the logger (default: discard). Keys are never logged.
func WithLogger(l *slog.Logger) Option { return func(k *Linker) { k.log = l } }

// WithAlgorithm selects the ESP algorithm for new links (default AESGCM).
func WithAlgorithm(a Algorithm) Option { return func(k *Linker) { k.alg = a } }

// WithHosts adds hosts (netns names) that List and Close scan for links
// this Linker did not prepare itself (recovery after a restart).
func WithHosts(hosts ...string) Option {
	return func(k *Linker) {
		for _, h := range hosts {
			k.hosts[h] = true
		}
	}
}

// WithRekeyGrace bounds how long Rekey waits for traffic on the new SAs
// before removing the old ones (default 2s). Without traffic there is
// nothing in flight to lose, so the old SAs go after the grace period.
func WithRekeyGrace(d time.Duration) Option { return func(k *Linker) { k.rekeyGrace = d } }

// WithProbeTimeout bounds how long Verify waits for its probes to cross
// the link (default 3s; a probe not yet decrypted is sent again after a
// third of it). The context passed to Verify bounds it too.
func WithProbeTimeout(d time.Duration) Option { return func(k *Linker) { k.probeWait = d } }

// New returns a Linker.
func New(opts ...Option) *Linker {
	k := &Linker{
		log:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		rekeyGrace: 2 * time.Second,
		probeWait:  defaultProbeTimeout,
		hosts:      map[string]bool{},
		links:      map[string]*link{},
	}
	for _, o := range opts {
		o(k)
	}
	return k
}

// link is what the Linker knows about one link. Its mutex serializes the
// operations on the link (Activate, Verify, Rekey, Close).
type link struct {
	op     sync.Mutex
	spec   tunnel.Spec
	reqid  uint32
	alg    Algorithm
	active bool
	// spi[d] is the SPI of the current SA carrying direction d
	// (secureToRemote or remoteToSecure).
	spi [2]uint32
	// installed routes and proxy entries, per end.
	routes  [2][]routeEntry
	proxies [2][]proxyEntry
	// recovered links were found by List, not prepared here.
	recovered bool
	// hosts are the namespaces the link lives in.
	hosts []string
}

// Prepare validates spec, generates keys and SPIs, installs block
// policies and then the SAs at both ends. On any error everything
// installed so far is removed.
func (k *Linker) Prepare(ctx context.Context, spec tunnel.Spec) (tunnel.Link, error) {
	if err := checkSpec(spec); err != nil {
		return tunnel.Link{}, err
	}
	k.mu.Lock()
	if _, ok := k.links[spec.ID]; ok {
		k.mu.Unlock()
		return tunnel.Link{}, fmt.Errorf("%w: ID %q", tunnel.ErrExists, spec.ID)
	}
	l := &link{spec: spec, reqid: ReqID(spec.ID), alg: k.alg, hosts: []string{spec.Secure.Host, spec.Remote.Host}}
	k.links[spec.ID] = l // reserve the ID; removed again on failure
	k.hosts[spec.Secure.Host], k.hosts[spec.Remote.Host] = true, true
	k.mu.Unlock()

	lk, err := k.prepare(ctx, l)
	if err != nil {
		k.mu.Lock()
		delete(k.links, spec.ID)
		k.mu.Unlock()
		return tunnel.Link{}, err
	}
	return lk, nil
}

// checkSpec validates spec for an XFRM link (the Linker's and an End's).
func checkSpec(spec tunnel.Spec) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if spec.Kind != tunnel.IPsec {
		return fmt.Errorf("%w: Kind %q (the ipsec backend needs %q)", tunnel.ErrInvalid, spec.Kind, tunnel.IPsec)
	}
	if spec.Secure.Underlay.Is4() != spec.Remote.Underlay.Is4() {
		return fmt.Errorf("%w: Secure.Underlay %s and Remote.Underlay %s differ in family", tunnel.ErrInvalid, spec.Secure.Underlay, spec.Remote.Underlay)
	}
	if len(pairs(spec.Secure.Protected, spec.Remote.Protected)) == 0 {
		return fmt.Errorf("%w: no Secure.Protected/Remote.Protected pair of the same family", tunnel.ErrInvalid)
	}
	return nil
}

func (k *Linker) prepare(ctx context.Context, l *link) (tunnel.Link, error) {
	ends, err := openEnds(l.spec)
	if err != nil {
		return tunnel.Link{}, err
	}
	defer ends.close()
	// Check everything that can be checked before touching anything.
	if err := ends.checkFree(l); err != nil {
		return tunnel.Link{}, err
	}
	if l.spec.ProxyARP {
		if _, err := ends.proxyPlan(); err != nil {
			return tunnel.Link{}, err
		}
	}
	if _, err := ends.routePlan(l.spec.MTU, l.alg); err != nil {
		return tunnel.Link{}, err
	}
	keys, err := newKeys(l.alg)
	if err != nil {
		return tunnel.Link{}, err
	}
	if l.spi, err = newSPIs(l); err != nil {
		return tunnel.Link{}, err
	}
	undo := func(cause error) (tunnel.Link, error) {
		if cerr := ends.removeAll(l); cerr != nil {
			k.log.Warn("ipsec: rollback after failed prepare", "link", l.spec.ID, "err", cerr)
		}
		return tunnel.Link{}, cause
	}
	if err := ends.addPolicies(l, netlinkBlock); err != nil {
		return undo(err)
	}
	if err := ctx.Err(); err != nil {
		return undo(err)
	}
	if err := ends.addStates(l, l.spi, keys); err != nil {
		return undo(err)
	}
	k.log.Info("ipsec: link prepared", "link", l.spec.ID, "reqid", fmt.Sprintf("0x%x", l.reqid), "alg", l.alg.String())
	return ends.describe(l)
}

// Activate switches the policies to allow with the ESP template (in/fwd
// at both ends first, then out) and adds the routes and proxy entries,
// announced by gratuitous ARP. On an active link it only announces again.
func (k *Linker) Activate(ctx context.Context, id string) error {
	l, err := k.get(id)
	if err != nil {
		return err
	}
	l.op.Lock()
	defer l.op.Unlock()
	ends, err := openEnds(l.spec)
	if err != nil {
		return err
	}
	defer ends.close()
	if l.active {
		// Again on an active link: re-announce the proxied addresses (the
		// caller opened a fence behind which neighbours cache old MACs).
		return ends.announce(l)
	}
	if err := ends.activate(ctx, l); err != nil {
		return err
	}
	k.mu.Lock()
	l.active = true
	k.mu.Unlock()
	k.log.Info("ipsec: link active", "link", id)
	return nil
}

// Verify checks that the link's policies are in place at both ends and
// proves its SAs with a probe each way between the two hosts, sent
// through the link's SA of that direction: each SA must count the probe
// at its sender (encrypted) and at its receiver (decrypted), within the
// probe timeout (WithProbeTimeout) and ctx. The probe can never leave in
// clear, never reaches the VM or a peer and needs no traffic of theirs,
// so a quiet VM, or one still behind the target's fence, does not stop
// the proof (see probe.go). It returns the SA counters (Proof.Detail:
// before and after the probe, per end); without that proof, e.g. a wrong
// key or a missing SA at one end, it returns tunnel.ErrNotProven.
func (k *Linker) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	l, err := k.get(id)
	if err != nil {
		return tunnel.Proof{}, err
	}
	l.op.Lock()
	defer l.op.Unlock()
	if !l.active {
		return tunnel.Proof{}, fmt.Errorf("%w: link %q is not active", tunnel.ErrNotProven, id)
	}
	ends, err := openEnds(l.spec)
	if err != nil {
		return tunnel.Proof{}, err
	}
	defer ends.close()
	return ends.verify(ctx, l, k.probeWait)
}

// Close removes the link's routes, proxy entries, policies and SAs at
// both ends. Closing an unknown link removes whatever carries its reqid
// on the hosts the Linker knows (WithHosts); that is a no-op when there
// is nothing.
func (k *Linker) Close(ctx context.Context, id string) error {
	k.mu.Lock()
	l, ok := k.links[id]
	hosts := k.hostList()
	k.mu.Unlock()
	var err error
	if ok {
		l.op.Lock()
		err = closeLink(l.hosts, l)
		l.op.Unlock()
	} else {
		err = closeLink(hosts, &link{reqid: ReqID(id)})
	}
	if err != nil {
		return err
	}
	k.mu.Lock()
	delete(k.links, id)
	for rid, rl := range k.links {
		if rl.reqid == ReqID(id) && rl.recovered {
			delete(k.links, rid) // the same link, found earlier by List
		}
	}
	k.mu.Unlock()
	k.log.Info("ipsec: link closed", "link", id)
	return nil
}

// List returns the links found at the hosts the Linker knows. Links this
// Linker prepared carry their Spec; others are reconstructed from the
// kernel's policies (ID "r" + 6 hex digits of the reqid, Secure = the
// host scanned first) and can then be closed by that ID.
func (k *Linker) List(ctx context.Context) ([]tunnel.Link, error) {
	k.mu.Lock()
	hosts := k.hostList()
	known := map[uint32]*link{}
	for _, l := range k.links {
		known[l.reqid] = l
	}
	k.mu.Unlock()
	found, err := scan(hosts)
	if err != nil {
		return nil, err
	}
	var out []tunnel.Link
	for _, f := range found {
		l, ok := known[f.reqid]
		if !ok {
			l = f.recover()
			k.mu.Lock()
			k.links[l.spec.ID] = l
			k.mu.Unlock()
		}
		lk := tunnel.Link{Spec: l.spec, Backend: Backend, Active: f.active, Policy: f.lines}
		out = append(out, lk)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

func (k *Linker) get(id string) (*link, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	l, ok := k.links[id]
	if !ok {
		return nil, fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	return l, nil
}

// hostList returns the known hosts sorted; the caller holds k.mu.
func (k *Linker) hostList() []string {
	var hs []string
	for h := range k.hosts {
		hs = append(hs, h)
	}
	sort.Strings(hs)
	return hs
}
