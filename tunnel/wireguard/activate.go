package wireguard

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"time"

	"github.com/sealift/sealift/internal/arp"
	"github.com/sealift/sealift/tunnel"
)

// Activate routes each end's view of the other's Protected prefixes
// through its device (the devices are up and have handshaken since
// Prepare; after a recovery Activate brings them up first) and,
// with ProxyARP, answers ARP/NDP for them on the LAN side; with
// Remote.MAC, readies the remote LAN for the VM (tunnel.End.MAC); then it
// announces the proxied addresses (and the remote end's own LAN
// addresses, with Remote.MAC) by gratuitous ARP. It runs in the
// switchover hook: what can be done before (devices, handshake,
// keepalives) is Prepare's. On an active link it only announces again.
// After a failed Activate, Close the link.
func (l *Linker) Activate(ctx context.Context, id string) error {
	lk, err := l.get(id)
	if err != nil {
		return err
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.gone {
		return fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	if lk.st.Link.Active {
		// Again on an active link: re-announce (the caller opened a fence
		// and wants neighbours behind it to learn the proxies now).
		return announceProxies(lk.st.Ends[:])
	}
	spec := lk.st.Link.Spec
	ends := [2]tunnel.End{spec.Secure, spec.Remote}
	// Plan the proxy entries before any route of the link exists: the LAN
	// side is where the other end's addresses are on-link today.
	var plans [2]proxyPlan
	if spec.ProxyARP {
		for i := range ends {
			p, err := planProxy(ends[i].Host, lk.st.Ends[i].Device, ends[1-i].Protected)
			if err != nil {
				return err
			}
			plans[i] = p
		}
	}
	// The remote end's LAN, readied for a VM that resumes behind it
	// (End.MAC), also planned before the link's routes exist.
	var neigh []arp.Neighbour
	var own []arp.Own
	if spec.Remote.MAC != "" {
		mac, _ := net.ParseMAC(spec.Remote.MAC) // Validate checked it
		if neigh, own, err = arp.PlanLAN(spec.Remote.Host, lk.st.Ends[1].Device, spec.Remote.Protected, mac); err != nil {
			return err
		}
	}
	if !lk.up {
		if err := l.bringUp(ctx, lk); err != nil {
			return err
		}
	}
	// Record everything both ends will install in one write (Close
	// removes what the state file lists, installed or not), then install.
	var fresh [2][]proxyEntry
	for i := range ends {
		st := &lk.st.Ends[i]
		// Secure end: host routes for Remote.Protected in the main table
		// (unless the caller routes, NoSecureRoutes). Remote end: by
		// source, so links with overlapping Secure.Protected can share it.
		if i == 1 || !spec.NoSecureRoutes {
			st.Routes = ends[1-i].Protected
		}
		if i == 1 {
			st.Rules = spec.Remote.Protected
			st.Neigh, st.Own = neigh, own
		}
		if fresh[i], err = l.recordProxy(lk, i, plans[i]); err != nil {
			return err
		}
	}
	if err := l.saveState(&lk.st); err != nil {
		return err
	}
	for i, e := range ends {
		st := &lk.st.Ends[i]
		if err := addRoutes(e.Host, st.Device, st.Table, st.Routes); err != nil {
			return err
		}
		if err := addRules(e.Host, st.Table, st.Rules); err != nil {
			return err
		}
		if err := l.installProxy(lk, i, fresh[i]); err != nil {
			return err
		}
		if err := arp.SetNeighbours(e.Host, st.Neigh); err != nil {
			return err
		}
	}
	lk.st.Link.Active = true
	if err := l.saveState(&lk.st); err != nil {
		return err
	}
	if err := announceProxies(lk.st.Ends[:]); err != nil {
		l.log.Warn("gratuitous ARP", "id", id, "err", err)
	}
	l.log.Info("wireguard link active", "id", id)
	return nil
}

// activateHandshakeWait bounds Activate's wait for the first handshake.
const activateHandshakeWait = 2 * time.Second

// awaitHandshake polls both ends until each reports a completed
// handshake, for at most limit.
func awaitHandshake(ctx context.Context, ends []endState, limit time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	wait := newBackoff()
	for {
		var missing []error
		for _, e := range ends {
			p, err := peerStats(e.Host, e.Device)
			if err != nil {
				return err
			}
			if p.LastHandshakeTime.IsZero() {
				missing = append(missing, fmt.Errorf("%s end %s: no handshake", e.Role, e.Device))
			}
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Join(append(missing, ctx.Err())...)
		case <-wait.next():
		}
	}
}

// recordProxy plans end i's proxy entries and sysctls into its state
// (reading the sysctls' old values; only those that change are
// recorded) and returns the entries to add: an entry another link of
// this Linker already installed is shared (the last link to close
// removes it).
func (l *Linker) recordProxy(lk *link, i int, plan proxyPlan) ([]proxyEntry, error) {
	st := &lk.st.Ends[i]
	var fresh []proxyEntry
	l.mu.Lock()
	for _, e := range plan.entries {
		if lan := st.Host + "\x00" + e.Dev; !slices.Contains(lk.lans, lan) {
			lk.lans = append(lk.lans, lan)
		}
		key := proxyKey(st.Host, e)
		if !l.heldByOther(lk, key) {
			fresh = append(fresh, e)
		}
		lk.proxies = append(lk.proxies, key)
	}
	l.mu.Unlock()
	for _, s := range plan.sysctls {
		old, err := readSysctl(st.Host, s.Key)
		if err != nil {
			return nil, err
		}
		if old != s.New {
			s.Old = old
			st.Sysctls = append(st.Sysctls, s)
		}
	}
	st.Proxy = plan.entries
	return fresh, nil
}

// installProxy writes end i's recorded sysctls and adds the fresh proxy
// entries. One installed by someone else is left alone (and forgotten).
func (l *Linker) installProxy(lk *link, i int, fresh []proxyEntry) error {
	st := &lk.st.Ends[i]
	for _, s := range st.Sysctls {
		if err := writeSysctl(st.Host, s.Key, s.New); err != nil {
			return err
		}
	}
	foreign, err := addProxy(st.Host, fresh)
	if len(foreign) > 0 {
		st.Proxy = slices.DeleteFunc(st.Proxy, func(e proxyEntry) bool { return slices.Contains(foreign, e) })
		l.mu.Lock()
		lk.proxies = slices.DeleteFunc(lk.proxies, func(k string) bool {
			return slices.ContainsFunc(foreign, func(e proxyEntry) bool { return proxyKey(st.Host, e) == k })
		})
		l.mu.Unlock()
		err = errors.Join(err, l.saveState(&lk.st))
	}
	return err
}

func proxyKey(host string, e proxyEntry) string {
	return host + "\x00" + e.Dev + "\x00" + e.Addr.String()
}

// heldByOther reports whether a link other than lk uses proxy entry key;
// l.mu is held.
func (l *Linker) heldByOther(lk *link, key string) bool {
	for _, o := range l.links {
		if o != lk && slices.Contains(o.proxies, key) {
			return true
		}
	}
	return false
}

// bringUp brings both devices up and has them handshake, with nothing
// routed into them yet: the link still carries no traffic, and Activate
// (which runs in the migration's switchover hook) only has to route.
func (l *Linker) bringUp(ctx context.Context, lk *link) error {
	ends := [2]tunnel.End{lk.st.Link.Spec.Secure, lk.st.Link.Spec.Remote}
	for i, e := range ends {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := setUp(e.Host, lk.st.Ends[i].Device); err != nil {
			return err
		}
		if u := lk.user[i]; u != nil {
			if err := u.up(); err != nil {
				return fmt.Errorf("%s: %s up: %w", hostName(e.Host), u.name, err)
			}
		}
	}
	// Only the secure end starts the handshake: initiations crossing from
	// both ends void each other until WireGuard retries 5 s later. Routes
	// come later, so no packet makes the remote end initiate meanwhile.
	if err := kickKeepalive(ends[0].Host, lk.st.Ends[0].Device, l.keepalive); err != nil {
		return err
	}
	if err := awaitHandshake(ctx, lk.st.Ends, activateHandshakeWait); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Not fatal: WireGuard keeps trying, and Verify is the proof.
		l.log.Warn("wireguard link up before its handshake completed", "id", lk.st.Link.ID, "err", err)
	}
	// The remote end's keepalive once the secure end's handshake is in
	// (it would start a crossing handshake of its own before), here and
	// not in Activate, which runs in the switchover hook.
	if l.keepalive > 0 {
		if err := setKeepalive(ends[1].Host, lk.st.Ends[1].Device, l.keepalive); err != nil {
			return err
		}
	}
	lk.up = true
	return nil
}
