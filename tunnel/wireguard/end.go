package wireguard

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sealift/sealift/internal/arp"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
)

// End is one host's ends of WireGuard links (tunnel.LinkEnd): each end's
// private key is made here, from crypto/rand, and only its public key
// leaves (tunnel.Public). Two Ends, local or behind agents, make a link
// through tunnel.Pair; an agent serves its host's End.
//
// The handshake: Connect on the secure end configures the peer and
// waits; Connect on the remote end (tunnel.Pair connects it last)
// starts the handshake and waits for it, and turns on the remote end's
// keepalive. So the link is handshaken when Pair.Prepare returns, as the
// Linker's is, and Activate (in the switchover hook) only routes.
//
// With WithStateDir, each end is recorded in a file before what it
// records is installed (never its key), and NewEnd reads the files: a
// restarted agent lists the ends a previous run left and Close removes
// what they installed (a wireguard-go device dies with its process; a
// kernel device stays until Close). Without it, ends live in memory.
// Proxy entries are shared among this End's links only.
type End struct {
	host          string
	l             *Linker // options only: backend, keepalive, verify timeout, logger, psk off
	log           *slog.Logger
	mu            sync.Mutex
	ends          map[string]*oneEnd
	proxyRefs     map[string]int
	claimedPorts  map[int]bool
	claimedTables map[int]bool
}

// oneEnd is one link's end on this host.
type oneEnd struct {
	st      tunnel.EndState
	key     wgtypes.Key // private: never logged, never stored
	user    *userDevice
	table   int
	routes  []netip.Prefix
	rules   []netip.Prefix
	proxy   []proxyEntry
	sysctls []sysctlSave
	neigh   []arp.Neighbour
	own     []arp.Own
	// counted: proxy is in e.proxyRefs (once installed, or loaded).
	counted bool
}

// endRecord is an end's state file: what it installed, no key.
type endRecord struct {
	State   tunnel.EndState `json:"state"`
	Table   int             `json:"table,omitempty"`
	Routes  []netip.Prefix  `json:"routes,omitempty"`
	Rules   []netip.Prefix  `json:"rules,omitempty"`
	Proxy   []proxyEntry    `json:"proxy,omitempty"`
	Sysctls []sysctlSave    `json:"sysctls,omitempty"`
	Neigh   []arp.Neighbour `json:"neigh,omitempty"`
	Own     []arp.Own       `json:"own,omitempty"`
}

func (e *End) recordPath(id string) string { return filepath.Join(e.l.stateDir, "end-"+id+".json") }

// save writes o's record (no-op without a state dir).
func (e *End) save(o *oneEnd) error {
	if e.l.stateDir == "" {
		return nil
	}
	if err := os.MkdirAll(e.l.stateDir, 0o700); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	b, err := json.MarshalIndent(endRecord{State: o.st, Table: o.table, Routes: o.routes, Rules: o.rules, Proxy: o.proxy,
		Sysctls: o.sysctls, Neigh: o.neigh, Own: o.own}, "", "  ")
	if err != nil {
		return err
	}
	path := e.recordPath(o.st.Spec.ID)
	if err := os.WriteFile(path+".tmp", b, 0o600); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

// load reads the state dir's records (NewEnd); a record it cannot read
// is logged and left for an operator.
func (e *End) load() {
	if e.l.stateDir == "" {
		return
	}
	paths, _ := filepath.Glob(filepath.Join(e.l.stateDir, "end-*.json"))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		var r endRecord
		if err == nil {
			err = json.Unmarshal(b, &r)
		}
		if err != nil || r.State.Spec.ID == "" {
			e.log.Warn("wireguard end: unreadable state file", "path", p, "err", err)
			continue
		}
		o := &oneEnd{st: r.State, table: r.Table, routes: r.Routes, rules: r.Rules, proxy: r.Proxy, sysctls: r.Sysctls,
			neigh: r.Neigh, own: r.Own}
		e.ends[r.State.Spec.ID] = o
		e.claimedPorts[int(portOf(o.st))] = true
		if o.table != 0 {
			e.claimedTables[o.table] = true
		}
		for _, px := range o.proxy {
			e.proxyRefs[proxyKey(e.host, px)]++
		}
		o.counted = true
		e.log.Info("wireguard end found", "id", r.State.Spec.ID, "role", r.State.Role, "device", r.State.Device)
	}
}

var _ tunnel.LinkEnd = (*End)(nil)

// NewEnd returns host's End ("" = the current netns), with the ends its
// state dir records. Of the Linker's options it uses WithBackend,
// WithKeepalive, WithVerifyTimeout, WithLogger and WithStateDir (give
// each End a directory of its own; without one, its ends live in memory
// only); WithPresharedKey does not apply (a preshared key would have to
// cross between the hosts).
func NewEnd(host string, opts ...Option) *End {
	// No state dir unless one is given: the Linker's default directory
	// is shared by every Linker of the machine.
	l := New(append([]Option{WithStateDir("")}, opts...)...)
	e := &End{host: host, l: l, log: l.log, ends: map[string]*oneEnd{}, proxyRefs: map[string]int{},
		claimedPorts: map[int]bool{}, claimedTables: map[int]bool{}}
	e.load()
	return e
}

func (e *End) get(id string) (*oneEnd, error) {
	o := e.ends[id]
	if o == nil {
		return nil, fmt.Errorf("%w: %q on %s", tunnel.ErrNoLink, id, hostName(e.host))
	}
	return o, nil
}

// mine returns this end and the other end of spec for role.
func mine(spec tunnel.Spec, role tunnel.Role) (tunnel.End, tunnel.End, string) {
	if role == tunnel.RemoteRole {
		return spec.Remote, spec.Secure, roleRemote
	}
	return spec.Secure, spec.Remote, roleSecure
}

// Open creates this host's device for spec's end in role, with a fresh
// key pair and the first free port from DefaultPort (or End.Port), up
// and without a peer: it carries nothing.
func (e *End) Open(ctx context.Context, spec tunnel.Spec, role tunnel.Role) (tunnel.EndState, error) {
	if err := spec.Validate(); err != nil {
		return tunnel.EndState{}, err
	}
	if spec.Kind != tunnel.WireGuard {
		return tunnel.EndState{}, fmt.Errorf("%w: Kind %q (the wireguard backend needs %q)", tunnel.ErrInvalid, spec.Kind, tunnel.WireGuard)
	}
	if role != tunnel.SecureRole && role != tunnel.RemoteRole {
		return tunnel.EndState{}, fmt.Errorf("%w: role %q", tunnel.ErrInvalid, role)
	}
	if err := ctx.Err(); err != nil {
		return tunnel.EndState{}, err
	}
	me, other, r := mine(spec, role)
	if spec.ProxyARP {
		if err := forwardingReady(e.host, other.Protected); err != nil {
			return tunnel.EndState{}, err
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if _, ok := e.ends[spec.ID]; ok {
		return tunnel.EndState{}, fmt.Errorf("%w: ID %q on %s", tunnel.ErrExists, spec.ID, hostName(e.host))
	}
	dev := deviceName(spec.ID, r)
	if err := nameFree(e.host, dev); err != nil {
		return tunnel.EndState{}, err
	}
	port, err := e.port(me)
	if err != nil {
		return tunnel.EndState{}, err
	}
	mtu := spec.MTU
	if mtu == 0 {
		u, err := underlayMTU(e.host, other.Underlay)
		if err != nil {
			return tunnel.EndState{}, err
		}
		if mtu = u - linkOverhead; mtu < 1280 {
			return tunnel.EndState{}, fmt.Errorf("%w: underlay MTU leaves %d for the link (< 1280); set MTU", tunnel.ErrInvalid, mtu)
		}
	}
	key, err := wgtypes.GeneratePrivateKey()
	if err != nil {
		return tunnel.EndState{}, fmt.Errorf("generate key: %w", err)
	}
	o := &oneEnd{key: key}
	if role == tunnel.RemoteRole {
		if o.table, err = e.table(spec.ID); err != nil {
			return tunnel.EndState{}, err
		}
	}
	// Recorded before the device exists: a crash leaves a record.
	o.st = tunnel.EndState{Spec: spec, Role: role, Device: dev}
	if err := e.save(o); err != nil {
		return tunnel.EndState{}, err
	}
	backend, err := e.createDevice(o, dev, mtu)
	if err != nil {
		return tunnel.EndState{}, errors.Join(err, e.forget(spec.ID))
	}
	fail := func(err error) (tunnel.EndState, error) {
		return tunnel.EndState{}, errors.Join(err, e.removeDevice(o, dev), e.forget(spec.ID))
	}
	if err := withWG(e.host, func(c *wgctrl.Client) error {
		return c.ConfigureDevice(dev, wgtypes.Config{PrivateKey: &key, ListenPort: &port, ReplacePeers: true})
	}); err != nil {
		return fail(fmt.Errorf("%s: configure %s: %w", hostName(e.host), dev, err))
	}
	if err := setUp(e.host, dev); err != nil {
		return fail(err)
	}
	if o.user != nil {
		if err := o.user.up(); err != nil {
			return fail(fmt.Errorf("%s: %s up: %w", hostName(e.host), dev, err))
		}
	}
	if role == tunnel.RemoteRole {
		spec.Remote.Port = uint16(port)
	} else {
		spec.Secure.Port = uint16(port)
	}
	o.st = tunnel.EndState{Spec: spec, Role: role, Backend: backend, Device: dev,
		Public: tunnel.Public{Key: key.PublicKey().String(), Endpoint: netip.AddrPortFrom(me.Underlay, uint16(port))}}
	if err := e.save(o); err != nil {
		return fail(err)
	}
	e.ends[spec.ID] = o
	e.claimedPorts[port] = true
	e.log.Info("wireguard end opened", "id", spec.ID, "role", role, "host", e.host, "device", dev, "backend", backend, "port", port)
	return o.st, nil
}

// port picks me.Port, or the first UDP port from DefaultPort up that is
// free here; e.mu is held.
func (e *End) port(me tunnel.End) (int, error) {
	if me.Port != 0 {
		free, err := udpFree(e.host, int(me.Port))
		if err != nil {
			return 0, err
		}
		if !free || e.claimedPorts[int(me.Port)] {
			return 0, fmt.Errorf("%w: Port %d is in use on %s", tunnel.ErrInvalid, me.Port, hostName(e.host))
		}
		return int(me.Port), nil
	}
	for p := DefaultPort; p < DefaultPort+1024; p++ {
		if e.claimedPorts[p] {
			continue
		}
		free, err := udpFree(e.host, p)
		if err != nil {
			return 0, err
		}
		if free {
			return p, nil
		}
	}
	return 0, fmt.Errorf("%s: no free UDP port from %d", hostName(e.host), DefaultPort)
}

// table picks the remote end's routing table; e.mu is held.
func (e *End) table(id string) (int, error) {
	for n := 0; n < 1<<16; n++ {
		t := tableCandidate(id, n)
		if e.claimedTables[t] {
			continue
		}
		unused, err := tableUnused(e.host, t)
		if err != nil {
			return 0, err
		}
		if unused {
			e.claimedTables[t] = true
			return t, nil
		}
	}
	return 0, fmt.Errorf("%s: no free routing table", hostName(e.host))
}

// createDevice creates dev with the End's backend (Auto: the kernel's,
// else wireguard-go).
func (e *End) createDevice(o *oneEnd, dev string, mtu int) (string, error) {
	if e.l.backend == Kernel || e.l.backend == Auto && !e.l.noKernel.Load() {
		err := addKernelDevice(e.host, dev, mtu)
		if err == nil {
			return BackendKernel, nil
		}
		if e.l.backend == Kernel || !errors.Is(err, tunnel.ErrKernelUnsupported) {
			return "", err
		}
		e.l.noKernel.Store(true)
	}
	u, err := newUserDevice(e.host, dev, mtu, e.log)
	if err != nil {
		return "", err
	}
	o.user = u
	return BackendUserspace, nil
}

func (e *End) removeDevice(o *oneEnd, dev string) error {
	if o.user != nil {
		err := o.user.close()
		o.user = nil
		return err
	}
	err := delLink(e.host, dev)
	if !socketLive(dev) {
		err = errors.Join(err, removeIfExists(uapiPath(dev)))
	}
	return err
}

// Connect configures the other end as this end's only peer (allowed the
// other end's Protected prefixes). On the remote end it then starts the
// handshake, waits for it (up to 2 s: WireGuard keeps trying, Verify is
// the proof) and turns the keepalive on.
func (e *End) Connect(ctx context.Context, id string, peer tunnel.Public) error {
	if err := peer.Validate(); err != nil {
		return err
	}
	pub, err := wgtypes.ParseKey(peer.Key)
	if err != nil {
		return fmt.Errorf("%w: Public.Key: not a WireGuard key: %v", tunnel.ErrInvalid, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	o, err := e.get(id)
	if err != nil {
		return err
	}
	_, other, _ := mine(o.st.Spec, o.st.Role)
	allowed := make([]net.IPNet, 0, len(other.Protected))
	for _, p := range other.Protected {
		allowed = append(allowed, ipNet(p))
	}
	zero := time.Duration(0)
	if err := withWG(e.host, func(c *wgctrl.Client) error {
		return c.ConfigureDevice(o.st.Device, wgtypes.Config{ReplacePeers: true, Peers: []wgtypes.PeerConfig{{
			PublicKey: pub, Endpoint: net.UDPAddrFromAddrPort(peer.Endpoint), PersistentKeepaliveInterval: &zero,
			ReplaceAllowedIPs: true, AllowedIPs: allowed}}})
	}); err != nil {
		return fmt.Errorf("%s: configure the peer of %s: %w", hostName(e.host), o.st.Device, err)
	}
	o.st.Connected = true
	if err := e.save(o); err != nil {
		return err
	}
	if o.st.Role != tunnel.RemoteRole {
		return nil
	}
	if err := kickKeepalive(e.host, o.st.Device, e.l.keepalive); err != nil {
		return err
	}
	if err := awaitHandshake(ctx, []endState{{Role: roleRemote, Host: e.host, Device: o.st.Device}}, activateHandshakeWait); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		e.log.Warn("wireguard end connected before its handshake completed", "id", id, "err", err)
	}
	return nil
}

// Activate routes the other end's Protected prefixes through this end's
// device (secure end: the main table, unless NoSecureRoutes; remote end:
// its table, chosen by source rules for Remote.Protected), answers ARP
// for them on the LAN side (ProxyARP), readies the LAN for the VM
// (remote end, Remote.MAC) and announces. On an active end it only
// announces again.
func (e *End) Activate(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	o, err := e.get(id)
	if err != nil {
		return err
	}
	if o.st.Active {
		return e.announce(o)
	}
	spec := o.st.Spec
	_, other, _ := mine(spec, o.st.Role)
	var plan proxyPlan
	if spec.ProxyARP {
		if plan, err = planProxy(e.host, o.st.Device, other.Protected); err != nil {
			return err
		}
	}
	if o.st.Role == tunnel.RemoteRole && spec.Remote.MAC != "" {
		mac, _ := net.ParseMAC(spec.Remote.MAC) // Validate checked it
		if o.neigh, o.own, err = arp.PlanLAN(e.host, o.st.Device, spec.Remote.Protected, mac); err != nil {
			return err
		}
	}
	if o.st.Role == tunnel.RemoteRole || !spec.NoSecureRoutes {
		o.routes = other.Protected
	}
	if o.st.Role == tunnel.RemoteRole {
		o.rules = spec.Remote.Protected
	}
	for _, s := range plan.sysctls {
		old, err := readSysctl(e.host, s.Key)
		if err != nil {
			return err
		}
		if old != s.New {
			s.Old = old
			o.sysctls = append(o.sysctls, s)
		}
	}
	var fresh []proxyEntry
	for _, p := range plan.entries {
		if e.proxyRefs[proxyKey(e.host, p)] == 0 {
			fresh = append(fresh, p)
		}
	}
	o.proxy = plan.entries // recorded first; foreign ones are dropped below
	if err := e.save(o); err != nil {
		return err
	}
	if err := addRoutes(e.host, o.st.Device, o.table, o.routes); err != nil {
		return err
	}
	if err := addRules(e.host, o.table, o.rules); err != nil {
		return err
	}
	for _, s := range o.sysctls {
		if err := writeSysctl(e.host, s.Key, s.New); err != nil {
			return err
		}
	}
	foreign, err := addProxy(e.host, fresh)
	o.proxy = nil
	for _, p := range plan.entries {
		if !slices.Contains(foreign, p) {
			o.proxy = append(o.proxy, p)
			e.proxyRefs[proxyKey(e.host, p)]++
		}
	}
	o.counted = true
	if err != nil {
		return err
	}
	if err := arp.SetNeighbours(e.host, o.neigh); err != nil {
		return err
	}
	o.st.Active = true
	if err := e.save(o); err != nil {
		return err
	}
	if err := e.announce(o); err != nil {
		e.log.Warn("gratuitous ARP", "id", id, "err", err)
	}
	e.log.Info("wireguard end active", "id", id, "role", o.st.Role, "host", e.host)
	return nil
}

func (e *End) announce(o *oneEnd) error {
	return announceProxies([]endState{{Host: e.host, Proxy: o.proxy, Own: o.own}})
}

// Verify sends a keepalive through the end and waits (the End's verify
// timeout, or ctx's deadline) until its peer has a live session and both
// of its byte counters rose: this end encrypts and is answered.
func (e *End) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	e.mu.Lock()
	o, err := e.get(id)
	var dev string
	var connected bool
	if err == nil {
		dev, connected = o.st.Device, o.st.Connected
	}
	e.mu.Unlock()
	if err != nil {
		return tunnel.Proof{}, err
	}
	if !connected {
		return tunnel.Proof{}, fmt.Errorf("%w: end %q has no peer", tunnel.ErrNotProven, id)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, e.l.verifyTimeout)
		defer cancel()
	}
	before, err := peerStats(e.host, dev)
	if err != nil {
		return tunnel.Proof{}, fmt.Errorf("%w: %w", tunnel.ErrNotProven, err)
	}
	if err := kickKeepalive(e.host, dev, e.l.keepalive); err != nil {
		return tunnel.Proof{}, fmt.Errorf("%w: %w", tunnel.ErrNotProven, err)
	}
	wait := newBackoff()
	for {
		p, err := peerStats(e.host, dev)
		if err != nil {
			return tunnel.Proof{}, fmt.Errorf("%w: %w", tunnel.ErrNotProven, err)
		}
		var missing error
		switch {
		case !sessionLive(p.LastHandshakeTime):
			missing = errors.New("no live handshake")
		case p.TransmitBytes <= before.TransmitBytes:
			missing = fmt.Errorf("transmit counter stays at %d", p.TransmitBytes)
		case p.ReceiveBytes <= before.ReceiveBytes && p.ReceiveBytes == 0:
			missing = errors.New("nothing received")
		}
		if missing == nil {
			return tunnel.Proof{Handshake: p.LastHandshakeTime, TxBytes: uint64(p.TransmitBytes), RxBytes: uint64(p.ReceiveBytes),
				Detail: fmt.Sprintf("%s handshake %s tx %d rx %d", dev, p.LastHandshakeTime.Format(time.RFC3339Nano), p.TransmitBytes, p.ReceiveBytes)}, nil
		}
		select {
		case <-ctx.Done():
			return tunnel.Proof{}, fmt.Errorf("%w: end %q (%s): %w (%v)", tunnel.ErrNotProven, id, dev, missing, ctx.Err())
		case <-wait.next():
		}
	}
}

// Close removes what the end installed here, and its device; once the
// host is gone (it took all of that with it), Close closes an embedded
// device and forgets the end.
func (e *End) Close(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	o := e.ends[id]
	if o == nil {
		return nil
	}
	var errs []error
	var drop []proxyEntry
	for _, p := range o.proxy {
		k := proxyKey(e.host, p)
		if o.counted {
			e.proxyRefs[k]--
		}
		if e.proxyRefs[k] <= 0 { // no other link of this End holds it
			delete(e.proxyRefs, k)
			drop = append(drop, p)
		}
	}
	if hostGone(nsutil.Check(e.host)) {
		// The host went away with everything the end installed there
		// (as the Linker's Close): only an embedded device, alive in
		// this process, is left to close.
		errs = append(errs, e.removeDevice(o, o.st.Device))
	} else {
		errs = append(errs, delProxy(e.host, drop), arp.DelNeighbours(e.host, o.neigh), delRules(e.host, o.table, o.rules))
		for _, s := range o.sysctls {
			if !e.sysctlStillNeeded(o, s) {
				errs = append(errs, writeSysctl(e.host, s.Key, s.Old))
			}
		}
		errs = append(errs, delRoutes(e.host, o.st.Device, o.table, o.routes), e.removeDevice(o, o.st.Device))
	}
	if err := errors.Join(errs...); err != nil {
		return err // the record stays: Close again
	}
	errs = append(errs, e.forget(id))
	delete(e.ends, id)
	delete(e.claimedPorts, int(portOf(o.st)))
	delete(e.claimedTables, o.table)
	e.log.Info("wireguard end closed", "id", id, "host", e.host)
	return errors.Join(errs...)
}

// sysctlStillNeeded: another active end of this End proxies on the same
// LAN interface (it keeps the setting; its own Close restores nothing it
// did not change, so the value stays as that end set it).
func (e *End) sysctlStillNeeded(o *oneEnd, s sysctlSave) bool {
	dev := sysctlDev(s.Key)
	for _, x := range e.ends {
		if x != o && slices.ContainsFunc(x.proxy, func(p proxyEntry) bool { return p.Dev == dev }) {
			return true
		}
	}
	return false
}

// forget removes id's state file.
func (e *End) forget(id string) error {
	if e.l.stateDir == "" {
		return nil
	}
	if err := os.Remove(e.recordPath(id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}

func portOf(st tunnel.EndState) uint16 {
	if st.Role == tunnel.RemoteRole {
		return st.Spec.Remote.Port
	}
	return st.Spec.Secure.Port
}

// List returns the ends this End holds.
func (e *End) List(context.Context) ([]tunnel.EndState, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]tunnel.EndState, 0, len(e.ends))
	for _, o := range e.ends {
		out = append(out, o.st)
	}
	slices.SortFunc(out, func(a, b tunnel.EndState) int {
		if a.Spec.ID < b.Spec.ID {
			return -1
		}
		if a.Spec.ID > b.Spec.ID {
			return 1
		}
		return 0
	})
	return out, nil
}
