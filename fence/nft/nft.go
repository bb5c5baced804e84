// Package nft is the nftables fence.Fencer: it drops a VM's frames and
// packets on its host (FIG. 3 block 320) and lets only the secure link
// through (block 370).
//
// It owns a table "sealift" in the bridge family (frames through the
// bridge the VM's port is on) and one in the inet family (traffic the
// host routes). Each VM gets its own chains; its Spec is stored as JSON
// in the comments of its first rules, so a new Fencer (after a restart)
// finds it. Every change, including replacing a fence and fencing many
// VMs at once, is one nftables transaction: it lands whole or not at all.
//
// Spec.Peers is enforced host-wide by two more base chains, the inet
// and bridge tables' "postrouting", which hold nothing but the guard
// built from every installed fence's Peers and AllowVia (rebuilt, in the
// same transaction, whenever that union changes): an AllowVia device
// returns, anything else addressed to a peer prefix is dropped. The inet
// chain judges what the host routes or sends by the device it leaves
// through (forwarded packets, the host's own, its ICMP errors, nftables'
// rejects); the bridge chain judges frames a bridge sends out of a port.
// So a bridge port named in AllowVia passes frames bridged to it, but
// packets the host routes out of the bridge device are judged by the
// bridge's name (list the bridge, or use a routed secure device); with
// br_netfilter, bridged frames also count as leaving through the bridge.
// Packets written to AF_PACKET sockets bypass netfilter and the guard.
//
// Spec.AllowIPsec: the VM's inet chain returns for packets whose route
// carries an XFRM bundle ("rt ipsec exists": the kernel will transform
// them), and the VM's jumps from the inet input and forward hooks skip
// packets that arrived decrypted ("meta secpath missing jump ...": the
// kernel allows the secpath test in those hooks only, not in output,
// which also enters the VM's inet chain). So replacing a fence with
// AllowIPsec toggled also replaces those two jump rules, in place, in
// the same transaction. The bridge chains treat it as AllowVia does (the
// port keeps to its own MAC and addresses; the inet chain decides); the
// inet guard lets a packet to a peer leave when it will be transformed,
// if a fence carrying Peers has AllowIPsec; the bridge guard does not.
package nft

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	vnl "github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/nsutil"
)

var _ fence.Fencer = (*Fencer)(nil)

// Fencer fences VMs with nftables rules on one host.
type Fencer struct {
	host string
	log  *slog.Logger
	now  func() time.Time
	mu   sync.Mutex
	// holds are the fences with Spec.Hold installed by this Fencer, by VM
	// (guarded by mu).
	holds map[string]*holder

	// Seams for tests without a kernel: testDial answers the nftables
	// netlink requests (nftables.WithTestDial), ports looks the ports up.
	testDial func([]netlink.Message) ([]netlink.Message, error)
	ports    func([]fence.Spec) (map[string]string, error)
}

// Option configures a Fencer.
type Option func(*Fencer)

// WithHost acts in the named network namespace ("" = the current one).
func WithHost(ns string) Option { return func(f *Fencer) { f.host = ns } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(f *Fencer) { f.log = l } }

// New returns a Fencer. It touches nothing until the first call.
func New(opts ...Option) *Fencer {
	f := &Fencer{log: slog.New(slog.NewTextHandler(io.Discard, nil)), now: time.Now, holds: map[string]*holder{}}
	for _, o := range opts {
		o(f)
	}
	return f
}

// Fence installs or atomically replaces the VM's fence.
func (f *Fencer) Fence(ctx context.Context, spec fence.Spec) error {
	return f.FenceAll(ctx, []fence.Spec{spec})
}

// FenceAll fences several VMs in one transaction: all or none. Specs
// equal to the installed fence are left alone.
func (f *Fencer) FenceAll(ctx context.Context, specs []fence.Spec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for i, s := range specs {
		if err := check(s); err != nil {
			return err
		}
		if seen[s.VM] {
			return fmt.Errorf("%w: specs[%d]: VM %q appears twice", fence.ErrInvalid, i, s.VM)
		}
		seen[s.VM] = true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	bridges, err := f.checkPorts(specs)
	if err != nil {
		return err
	}
	c, installed, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	now := f.now()
	var changed []string
	// Holders started for this transaction: kept if it commits, closed
	// if not; holders of fences that no longer hold: closed once it has.
	started := map[string]*holder{}
	var stop []string
	committed := false
	defer func() {
		for vm, h := range started {
			if committed {
				f.holds[vm] = h
			} else {
				_ = h.r.Close()
			}
		}
		if committed {
			for _, vm := range stop {
				if h := f.holds[vm]; h != nil && started[vm] == nil {
					h.take()
					delete(f.holds, vm)
				}
			}
		}
	}()
	tablesAdded := false
	after := map[string]fence.Spec{}
	for vm, fc := range installed {
		after[vm] = fc.Spec
	}
	for _, s := range specs {
		old, had := installed[s.VM]
		if had && sameSpec(old.Spec, s) {
			continue
		}
		if !tablesAdded {
			addTables(c)
			tablesAdded = true
		}
		var group uint16
		switch h := f.holds[s.VM]; {
		case s.Hold && h != nil:
			group = h.group
		case s.Hold:
			nh, err := f.startHold(s.VM)
			if err != nil {
				return err
			}
			started[s.VM], group = nh, nh.group
		case h != nil:
			stop = append(stop, s.VM)
		}
		if err := addFence(c, s, bridges[s.Port], now, had, group); err != nil {
			return err
		}
		if had && old.AllowIPsec != s.AllowIPsec {
			if err := f.retargetJumps(c, s); err != nil {
				return err
			}
		}
		changed = append(changed, s.VM)
		after[s.VM] = s
	}
	if len(changed) == 0 {
		return nil
	}
	setGuard(c, installed, after)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: fence %s on %q: %w", strings.Join(changed, ","), f.host, err)
	}
	committed = true
	f.log.Info("fenced", "host", f.host, "vms", changed)
	return nil
}

// Lift removes the VM's fence in one transaction.
func (f *Fencer) Lift(ctx context.Context, vm string) error {
	return f.LiftAll(ctx, []string{vm})
}

// LiftAll lifts several fences in one transaction. If any VM is not
// fenced it returns an error wrapping fence.ErrNotFenced and changes
// nothing. The (then empty) tables stay; Remove deletes them.
func (f *Fencer) LiftAll(ctx context.Context, vms []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, vm := range vms {
		if vm == "" {
			return fmt.Errorf("%w: vms[%d] is empty", fence.ErrInvalid, i)
		}
	}
	if len(vms) == 0 {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, installed, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	lift := map[string]bool{}
	for _, vm := range vms {
		if _, ok := installed[vm]; !ok {
			return fmt.Errorf("nft: lift %q on host %q: %w", vm, f.host, fence.ErrNotFenced)
		}
		lift[chainID(vm)] = true
	}
	// The tables and their base chains stay, even when the last fence
	// goes: deleting a base chain unregisters its hook and waits for an
	// RCU grace period (~10 ms), on the path that re-enables traffic.
	// Empty, they pass everything.
	for _, b := range baseChains {
		rules, err := c.GetRules(b.table, b.chain())
		if err != nil {
			return fmt.Errorf("nft: list %s %s: %w", b.table.Name, b.name, err)
		}
		for _, r := range rules {
			id, ok := strings.CutPrefix(comment(r.UserData), jumpTag)
			if ok && lift[id] {
				if err := c.DelRule(r); err != nil {
					return err
				}
			}
		}
	}
	for id := range lift {
		for _, vc := range vmChains(id, ruleSet{}) {
			c.FlushChain(vc.c)
			c.DelChain(vc.c)
		}
	}
	after := map[string]fence.Spec{}
	for vm, fc := range installed {
		if !lift[chainID(vm)] {
			after[vm] = fc.Spec
		}
	}
	setGuard(c, installed, after)
	var lifted []fence.Spec
	for vm, fc := range installed {
		if lift[chainID(vm)] {
			lifted = append(lifted, fc.Spec)
		}
	}
	if err := dropPending(f.host, lifted); err != nil { // while the peers guard still holds
		return fmt.Errorf("nft: lift %s on %q: %w", strings.Join(vms, ","), f.host, err)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("nft: lift %s on %q: %w", strings.Join(vms, ","), f.host, err)
	}
	for _, vm := range vms {
		if h := f.holds[vm]; h != nil { // never released: the copies go
			h.take()
			delete(f.holds, vm)
		}
	}
	f.log.Info("lifted", "host", f.host, "vms", vms)
	return nil
}

// List returns the fences installed on the host, by any Fencer, sorted by VM.
func (f *Fencer) List(ctx context.Context) ([]fence.Fence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, done, err := f.conn(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	m, err := f.list(c)
	if err != nil {
		return nil, err
	}
	out := make([]fence.Fence, 0, len(m))
	for _, fc := range m {
		out = append(out, fc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out, nil
}

// Dropped returns the packets the VM's fence dropped so far (the sum of
// its drop rules' counters).
func (f *Fencer) Dropped(ctx context.Context, vm string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, installed, done, err := f.session(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	if _, ok := installed[vm]; !ok {
		return 0, fmt.Errorf("nft: %q on host %q: %w", vm, f.host, fence.ErrNotFenced)
	}
	var n uint64
	for _, vc := range vmChains(chainID(vm), ruleSet{}) {
		rules, err := c.GetRules(vc.c.Table, vc.c)
		if err != nil {
			return 0, err
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					n += ctr.Packets
				}
			}
		}
	}
	return n, nil
}

// GuardDropped returns the packets the Peers guard dropped so far (the
// sum of the guard chains' drop counters; 0 if no guard was installed).
func (f *Fencer) GuardDropped(ctx context.Context) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, done, err := f.conn(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	var n uint64
	for _, b := range guardChains {
		rules, err := c.GetRules(b.table, b.chain())
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("nft: rules of %s %s on host %q: %w", b.table.Name, b.name, f.host, err)
		}
		for _, r := range rules {
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					n += ctr.Packets
				}
			}
		}
	}
	return n, nil
}

// check validates a Spec beyond fence.Spec.Validate.
func check(s fence.Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for i, m := range s.AllowMarks {
		if m == 0 {
			return fmt.Errorf("%w: AllowMarks[%d] is 0, which every unmarked packet carries (VM %q)", fence.ErrInvalid, i, s.VM)
		}
	}
	for i, a := range s.Addrs {
		if a.Unmap().IsUnspecified() {
			return fmt.Errorf("%w: Addrs[%d] %s is unspecified (VM %q)", fence.ErrInvalid, i, a, s.VM)
		}
	}
	return nil
}

func sameSpec(a, b fence.Spec) bool {
	return a.VM == b.VM && a.Port == b.Port && strings.EqualFold(a.MAC, b.MAC) &&
		slices.Equal(a.Addrs, b.Addrs) && slices.Equal(a.AllowVia, b.AllowVia) && slices.Equal(a.AllowMarks, b.AllowMarks) &&
		slices.Equal(a.Peers, b.Peers) && a.AllowIPsec == b.AllowIPsec && a.Hold == b.Hold
}

// checkPorts makes sure every port exists on the host and returns the
// bridge each one is on (by port; "" if none).
func (f *Fencer) checkPorts(specs []fence.Spec) (map[string]string, error) {
	if f.ports != nil {
		return f.ports(specs)
	}
	h, err := nsutil.Handle(f.host, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("nft: %w", err)
	}
	defer h.Close()
	bridges := map[string]string{}
	for _, s := range specs {
		l, err := h.LinkByName(s.Port)
		if err != nil {
			var nf vnl.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil, fmt.Errorf("%w: Port %q of VM %q on host %q", fence.ErrNoPort, s.Port, s.VM, f.host)
			}
			return nil, fmt.Errorf("nft: Port %q of VM %q on host %q: %w", s.Port, s.VM, f.host, err)
		}
		if m := l.Attrs().MasterIndex; m != 0 {
			if br, err := h.LinkByIndex(m); err == nil {
				bridges[s.Port] = br.Attrs().Name
			}
		}
	}
	return bridges, nil
}

// conn opens an nftables connection in the host's namespace. Its socket
// buffers are large, so a batch of hundreds of fences fits, and it
// honours ctx's deadline.
func (f *Fencer) conn(ctx context.Context) (*nftables.Conn, func(), error) {
	if f.testDial != nil {
		c, err := nftables.New(nftables.WithTestDial(f.testDial))
		return c, func() {}, err
	}
	ns, err := nsutil.Open(f.host)
	if err != nil {
		return nil, nil, fmt.Errorf("nft: %w", err)
	}
	opts := []nftables.ConnOption{nftables.WithNetNSFd(int(ns)), nftables.WithSockOptions(bigBuffers)}
	if dl, ok := ctx.Deadline(); ok {
		opts = append(opts, nftables.WithSockOptions(func(c *netlink.Conn) error { return c.SetDeadline(dl) }))
	}
	// A lasting connection: one socket for the whole operation.
	c, err := nftables.New(append(opts, nftables.AsLasting())...)
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("nft: netlink on host %q: %w", f.host, err)
	}
	return c, func() { _ = c.CloseLasting(); ns.Close() }, nil
}

func bigBuffers(c *netlink.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for _, o := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
			if e := syscall.SetsockoptInt(int(fd), unix.SOL_SOCKET, o, 32<<20); e != nil {
				serr = e
			}
		}
	})
	return errors.Join(err, serr)
}

// list reads the installed fences from the bridge table's "-fwd" chains.
// session opens a connection and reads the fences installed on the host
// (f.mu held); done closes the connection.
func (f *Fencer) session(ctx context.Context) (c *nftables.Conn, installed map[string]fence.Fence, done func(), err error) {
	c, done, err = f.conn(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	if installed, err = f.list(c); err != nil {
		done()
		return nil, nil, nil, err
	}
	return c, installed, done, nil
}

func (f *Fencer) list(c *nftables.Conn) (map[string]fence.Fence, error) {
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyBridge)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return map[string]fence.Fence{}, nil
		}
		return nil, fmt.Errorf("nft: list chains on host %q: %w", f.host, err)
	}
	out := map[string]fence.Fence{}
	for _, ch := range chains {
		if ch.Table.Name != tableName || !strings.HasPrefix(ch.Name, "vm-") || !strings.HasSuffix(ch.Name, "-fwd") {
			continue
		}
		rules, err := c.GetRules(bridgeTable, ch)
		if err != nil {
			return nil, fmt.Errorf("nft: rules of %s on host %q: %w", ch.Name, f.host, err)
		}
		var comments []string
		for _, r := range rules {
			comments = append(comments, comment(r.UserData))
		}
		rec, ok, err := parseTags(comments)
		if err != nil {
			return nil, fmt.Errorf("nft: chain %s on host %q: %w", ch.Name, f.host, err)
		}
		if !ok || chainID(rec.VM)+"-fwd" != ch.Name {
			f.log.Warn("chain without a valid fence tag", "host", f.host, "chain", ch.Name)
			continue
		}
		out[rec.VM] = rec.fence()
	}
	return out, nil
}

func addTables(c *nftables.Conn) {
	c.AddTable(bridgeTable)
	c.AddTable(inetTable)
	for _, b := range append(slices.Clone(baseChains), guardChains...) {
		c.AddChain(b.chain())
	}
}

// setGuard queues the rebuild of the Peers guard chains when the union
// of the fences' Peers (and their AllowVia devices) changes from before
// to after. The chains exist whenever a guard was ever installed: addTables
// (called for any change that adds or replaces a fence) creates them.
func setGuard(c *nftables.Conn, before map[string]fence.Fence, after map[string]fence.Spec) {
	var bs, as []fence.Spec
	for _, fc := range before {
		bs = append(bs, fc.Spec)
	}
	for _, s := range after {
		as = append(as, s)
	}
	old, g := guardOf(bs), guardOf(as)
	if old.equal(g) {
		return
	}
	for _, b := range guardChains {
		ch := b.chain()
		c.FlushChain(ch)
		for _, r := range g.rules(b.table == bridgeTable) {
			c.AddRule(&nftables.Rule{Table: ch.Table, Chain: ch, Exprs: r})
		}
	}
}

// addFence queues the VM's chains and rules; replace flushes the chains
// of an installed fence instead of creating them and their jumps.
func addFence(c *nftables.Conn, s fence.Spec, bridge string, now time.Time, replace bool, group uint16) error {
	id := chainID(s.VM)
	tags, err := tagComments(recordOf(s, now, group))
	if err != nil {
		return err
	}
	for i, vc := range vmChains(id, buildRules(s, bridge, group)) {
		if replace {
			c.FlushChain(vc.c)
		} else {
			c.AddChain(vc.c)
		}
		if i == 0 {
			for _, t := range tags {
				c.AddRule(&nftables.Rule{Table: vc.c.Table, Chain: vc.c, UserData: t})
			}
		}
		for _, r := range vc.rules {
			c.AddRule(&nftables.Rule{Table: vc.c.Table, Chain: vc.c, Exprs: r})
		}
	}
	if !replace {
		for _, b := range baseChains {
			c.AddRule(&nftables.Rule{Table: b.table, Chain: b.chain(), Exprs: jumpExprs(b, id, s),
				UserData: commentData(jumpTag + id)})
		}
	}
	return nil
}

// retargetJumps queues, for a replaced fence whose AllowIPsec changed,
// the replacement (in place, same handle) of its jumps from the inet
// input and forward hooks (see jumpExprs); a missing jump is added.
func (f *Fencer) retargetJumps(c *nftables.Conn, s fence.Spec) error {
	id := chainID(s.VM)
	for _, b := range baseChains {
		if !secpathHook(b) {
			continue
		}
		rules, err := c.GetRules(b.table, b.chain())
		if err != nil {
			return fmt.Errorf("nft: list %s %s on host %q: %w", b.table.Name, b.name, f.host, err)
		}
		r := &nftables.Rule{Table: b.table, Chain: b.chain(), Exprs: jumpExprs(b, id, s), UserData: commentData(jumpTag + id)}
		for _, old := range rules {
			if comment(old.UserData) == jumpTag+id {
				r.Handle = old.Handle
				break
			}
		}
		c.AddRule(r) // with a handle: replaces
	}
	return nil
}

func commentData(s string) []byte {
	b := append([]byte(s), 0)
	return append([]byte{0 /* userdata.TypeComment */, byte(len(b))}, b...)
}

// Remove deletes sealift's tables from the host when no fence is left
// (e.g. when decommissioning the host); with fences it refuses.
func (f *Fencer) Remove(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, installed, done, err := f.session(ctx)
	if err != nil {
		return err
	}
	defer done()
	if len(installed) > 0 {
		return fmt.Errorf("%w: %d fences still installed on host %q", fence.ErrInvalid, len(installed), f.host)
	}
	c.DelTable(bridgeTable)
	c.DelTable(inetTable)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("nft: remove tables on %q: %w", f.host, err)
	}
	return nil
}
