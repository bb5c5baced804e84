// Package linkstate is the fence.Fencer that cuts a VM off by setting its
// port (the host side of its tap or veth) down, and lifts the fence by
// setting it up again.
//
// The fence is remembered on the link itself, in its alias
// ("sealift-fence:{json}"), set in the same netlink message that takes
// the link down; the original alias is kept in the record and restored
// on Lift. So List on a new Fencer (after a restart) finds every fence.
//
// A port that is down carries nothing, so link state cannot let a secure
// link through: Specs with AllowVia or AllowMarks are refused with an
// error wrapping fence.ErrUnsupported (use fence/nft for those). Nor can
// it keep the host's own traffic from the secure side's prefixes (Spec.Peers: a guard by destination that a
// port's link state cannot express; policy routing could, but would
// reroute rather than fence and could not tell an AllowVia device's
// packets from others'): Specs with Peers are refused with an error
// wrapping fence.ErrUnsupported, and so are Specs with AllowIPsec (a
// port's link state cannot tell IPsec-protected traffic from the rest).
package linkstate

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/nsutil"
)

var _ fence.Fencer = (*Fencer)(nil)

// AliasPrefix starts the alias of a fenced port.
const AliasPrefix = "sealift-fence:"

// maxAlias is the longest alias the kernel keeps (IFALIASZ - 1).
const maxAlias = 255

// Fencer fences VMs by their port's link state on one host.
type Fencer struct {
	host string
	log  *slog.Logger
	now  func() time.Time
	mu   sync.Mutex
}

// Option configures a Fencer.
type Option func(*Fencer)

// WithHost acts in the named network namespace ("" = the current one).
func WithHost(ns string) Option { return func(f *Fencer) { f.host = ns } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(f *Fencer) { f.log = l } }

// New returns a Fencer. It touches nothing until the first call.
func New(opts ...Option) *Fencer {
	f := &Fencer{log: slog.New(slog.NewTextHandler(io.Discard, nil)), now: time.Now}
	for _, o := range opts {
		o(f)
	}
	return f
}

// record is what the alias holds.
type record struct {
	VM    string       `json:"vm"`
	MAC   string       `json:"mac,omitempty"`
	Addrs []netip.Addr `json:"addrs,omitempty"`
	Since int64        `json:"since"`           // unix nanoseconds
	Alias string       `json:"alias,omitempty"` // the link's alias before the fence
}

type installed struct {
	rec   record
	link  netlink.Link
	fence fence.Fence
}

// Fence sets the VM's port down. Fencing again with the same Spec only
// makes sure the port is still down; a different Spec moves the fence
// (the new port goes down before the old one comes up).
func (f *Fencer) Fence(ctx context.Context, spec fence.Spec) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := check(spec); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.withHandle(func(h *netlink.Handle) error {
		fences, err := f.list(h)
		if err != nil {
			return err
		}
		return f.fence(h, spec, fences)
	})
}

// FenceAll fences several VMs. Link state has no transactions: the ports
// go down one after the other and, if one fails, those fenced by this
// call are lifted again before the error is returned. All Specs are
// checked, and all ports looked up, before any is touched.
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
	return f.withHandle(func(h *netlink.Handle) error {
		for _, s := range specs {
			if _, err := f.port(h, s); err != nil {
				return err
			}
		}
		fences, err := f.list(h)
		if err != nil {
			return err
		}
		before := make(map[string]bool, len(fences))
		for vm := range fences {
			before[vm] = true
		}
		for i, s := range specs {
			if err := f.fence(h, s, fences); err != nil {
				for _, done := range specs[:i] {
					if !before[done.VM] {
						_ = f.lift(h, done.VM)
					}
				}
				return err
			}
		}
		return nil
	})
}

// Lift sets the VM's port up and restores its alias.
func (f *Fencer) Lift(ctx context.Context, vm string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if vm == "" {
		return fmt.Errorf("%w: VM is empty", fence.ErrInvalid)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.withHandle(func(h *netlink.Handle) error { return f.lift(h, vm) })
}

// LiftAll lifts several fences. If any VM is not fenced it returns an
// error wrapping fence.ErrNotFenced before touching anything.
func (f *Fencer) LiftAll(ctx context.Context, vms []string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	for i, vm := range vms {
		if vm == "" {
			return fmt.Errorf("%w: vms[%d] is empty", fence.ErrInvalid, i)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.withHandle(func(h *netlink.Handle) error {
		fences, err := f.list(h)
		if err != nil {
			return err
		}
		for _, vm := range vms {
			if _, ok := fences[vm]; !ok {
				return fmt.Errorf("linkstate: lift %q on host %q: %w", vm, f.host, fence.ErrNotFenced)
			}
		}
		for _, vm := range vms {
			in := fences[vm]
			if err := f.setLink(in.link.Attrs().Index, true, in.rec.Alias); err != nil {
				return fmt.Errorf("linkstate: lift %q: set %s up: %w", vm, in.fence.Port, err)
			}
		}
		f.log.Info("lifted", "host", f.host, "vms", vms)
		return nil
	})
}

// List returns the fences found on the host's links, sorted by VM.
func (f *Fencer) List(ctx context.Context) ([]fence.Fence, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []fence.Fence
	err := f.withHandle(func(h *netlink.Handle) error {
		m, err := f.list(h)
		for _, in := range m {
			out = append(out, in.fence)
		}
		return err
	})
	sort.Slice(out, func(i, j int) bool { return out[i].VM < out[j].VM })
	return out, err
}

func check(s fence.Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	if len(s.AllowVia) > 0 {
		return fmt.Errorf("%w: AllowVia %q (VM %q): a port that is down carries no secure link either; use fence/nft",
			fence.ErrUnsupported, s.AllowVia, s.VM)
	}
	if len(s.AllowMarks) > 0 {
		return fmt.Errorf("%w: AllowMarks %v (VM %q): a port that is down lets no marked traffic through; use fence/nft",
			fence.ErrUnsupported, s.AllowMarks, s.VM)
	}
	if len(s.Peers) > 0 {
		return fmt.Errorf("%w: Peers %v (VM %q): link state cannot filter the host's traffic by destination; use fence/nft",
			fence.ErrUnsupported, s.Peers, s.VM)
	}
	if s.AllowIPsec {
		return fmt.Errorf("%w: AllowIPsec (VM %q): link state cannot tell IPsec-protected traffic from the rest; use fence/nft",
			fence.ErrUnsupported, s.VM)
	}
	if s.Hold {
		return fmt.Errorf("%w: Hold (VM %q): a port that is down drops frames before any hook sees them; use fence/nft",
			fence.ErrUnsupported, s.VM)
	}
	if strings.ContainsRune(s.VM, 0) {
		return fmt.Errorf("%w: VM %q contains a NUL byte", fence.ErrInvalid, s.VM)
	}
	return nil
}

func (f *Fencer) withHandle(fn func(h *netlink.Handle) error) error {
	h, err := nsutil.Handle(f.host, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("linkstate: %w", err)
	}
	defer h.Close()
	return fn(h)
}

func (f *Fencer) port(h *netlink.Handle, s fence.Spec) (netlink.Link, error) {
	l, err := h.LinkByName(s.Port)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, fmt.Errorf("%w: Port %q of VM %q on host %q", fence.ErrNoPort, s.Port, s.VM, f.host)
		}
		return nil, fmt.Errorf("linkstate: Port %q of VM %q on host %q: %w", s.Port, s.VM, f.host, err)
	}
	return l, nil
}

// fence fences s; fences is the installed set, updated on success.
func (f *Fencer) fence(h *netlink.Handle, s fence.Spec, fences map[string]installed) error {
	l, err := f.port(h, s)
	if err != nil {
		return err
	}
	for vm, in := range fences {
		if vm != s.VM && in.link.Attrs().Index == l.Attrs().Index {
			return fmt.Errorf("%w: Port %q is already fenced for VM %q (VM %q)", fence.ErrInvalid, s.Port, vm, s.VM)
		}
	}
	cur, had := fences[s.VM]
	orig := l.Attrs().Alias
	if had {
		if cur.link.Attrs().Index == l.Attrs().Index {
			orig = cur.rec.Alias
			if sameSpec(cur.fence.Spec, s) {
				if l.Attrs().Flags&unix.IFF_UP == 0 {
					return nil // one fence, still holding
				}
				f.log.Warn("fenced port was up again; setting it down", "host", f.host, "vm", s.VM, "port", s.Port)
			}
		}
	}
	rec := record{VM: s.VM, MAC: s.MAC, Addrs: s.Addrs, Since: f.now().UnixNano(), Alias: orig}
	alias, err := encode(rec)
	if err != nil {
		return err
	}
	if err := f.setLink(l.Attrs().Index, false, alias); err != nil {
		return fmt.Errorf("linkstate: fence %q: set %s down: %w", s.VM, s.Port, err)
	}
	if had && cur.link.Attrs().Index != l.Attrs().Index {
		// The fence moved: the new port is down, free the old one.
		if err := f.setLink(cur.link.Attrs().Index, true, cur.rec.Alias); err != nil {
			return fmt.Errorf("linkstate: fence %q moved to %s, but %s: %w", s.VM, s.Port, cur.fence.Port, err)
		}
	}
	fences[s.VM] = installed{rec: rec, link: l, fence: fence.Fence{Spec: s, Backend: "linkstate", Since: time.Unix(0, rec.Since)}}
	f.log.Info("fenced", "host", f.host, "vm", s.VM, "port", s.Port)
	return nil
}

func (f *Fencer) lift(h *netlink.Handle, vm string) error {
	fences, err := f.list(h)
	if err != nil {
		return err
	}
	in, ok := fences[vm]
	if !ok {
		return fmt.Errorf("linkstate: lift %q on host %q: %w", vm, f.host, fence.ErrNotFenced)
	}
	if err := f.setLink(in.link.Attrs().Index, true, in.rec.Alias); err != nil {
		return fmt.Errorf("linkstate: lift %q: set %s up: %w", vm, in.fence.Port, err)
	}
	f.log.Info("lifted", "host", f.host, "vm", vm, "port", in.fence.Port)
	return nil
}

func (f *Fencer) list(h *netlink.Handle) (map[string]installed, error) {
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("linkstate: list links on host %q: %w", f.host, err)
	}
	out := map[string]installed{}
	for _, l := range links {
		rec, ok := decode(l.Attrs().Alias)
		if !ok {
			continue
		}
		out[rec.VM] = installed{rec: rec, link: l, fence: fence.Fence{
			Spec:    fence.Spec{VM: rec.VM, Port: l.Attrs().Name, MAC: rec.MAC, Addrs: rec.Addrs},
			Backend: "linkstate",
			Since:   time.Unix(0, rec.Since),
		}}
	}
	return out, nil
}

// setLink sets the link up or down and its alias in one RTM_NEWLINK, so
// no one sees a fenced port without its record or the reverse.
func (f *Fencer) setLink(index int, up bool, alias string) error {
	return nsutil.Do(f.host, func() error {
		req := nl.NewNetlinkRequest(unix.RTM_NEWLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Index = int32(index)
		msg.Change = unix.IFF_UP
		if up {
			msg.Flags = unix.IFF_UP
		}
		req.AddData(msg)
		req.AddData(nl.NewRtAttr(unix.IFLA_IFALIAS, []byte(alias)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}

func encode(r record) (string, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	if len(AliasPrefix)+len(b) > maxAlias && len(r.Addrs) > 0 {
		// Addresses are informative only here (the port is down);
		// keep the record within the kernel's alias size.
		r.Addrs = nil
		return encode(r)
	}
	if len(AliasPrefix)+len(b) > maxAlias {
		return "", fmt.Errorf("%w: VM %q: its fence record (%d bytes) does not fit a link alias (%d)",
			fence.ErrInvalid, r.VM, len(AliasPrefix)+len(b), maxAlias)
	}
	return AliasPrefix + string(b), nil
}

func decode(alias string) (record, bool) {
	rest, ok := strings.CutPrefix(alias, AliasPrefix)
	if !ok {
		return record{}, false
	}
	var r record
	if err := json.Unmarshal([]byte(rest), &r); err != nil || r.VM == "" {
		return record{}, false
	}
	return r, true
}

func sameSpec(a, b fence.Spec) bool {
	return a.VM == b.VM && a.Port == b.Port && strings.EqualFold(a.MAC, b.MAC) && slices.Equal(a.Addrs, b.Addrs)
}
