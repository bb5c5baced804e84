package wireguard

import (
	"context"
	"errors"
	"slices"
	"strings"

	"github.com/sealift/sealift/internal/arp"
	"github.com/sealift/sealift/internal/nsutil"
)

// Close removes devices (kernel interfaces, or the embedded device with
// its TUN and UAPI socket), routes, proxy neighbour entries and sysctl
// changes at both ends, then the state file. Closing an absent link is a
// no-op; a link found only in the state file (after a restart) is removed
// as recorded.
func (l *Linker) Close(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l.mu.Lock()
	lk := l.links[id]
	if lk == nil {
		st, ok, err := l.loadState(id)
		if err != nil || !ok {
			l.mu.Unlock()
			return err
		}
		lk = &link{st: *st}
		l.links[id] = lk
	}
	l.mu.Unlock()
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.gone {
		return nil
	}
	if err := l.teardown(lk); err != nil {
		return err
	}
	if err := l.removeState(id); err != nil {
		return err
	}
	l.mu.Lock()
	delete(l.links, id)
	l.mu.Unlock()
	lk.gone = true
	l.log.Info("wireguard link closed", "id", id)
	return nil
}

// teardown removes what lk's state records, at both ends, carrying on
// past errors; lk.mu is held.
func (l *Linker) teardown(lk *link) error {
	var errs []error
	restores, proxies := l.release(lk)
	for i := range lk.st.Ends {
		e := &lk.st.Ends[i]
		if u := lk.user[i]; u != nil {
			// The embedded device first: it also removes the TUN (and the
			// routes through it) before its netns may go away.
			errs = append(errs, u.close())
			lk.user[i] = nil
		}
		if hostGone(nsutil.Check(e.Host)) {
			continue // the host went away with everything in it
		}
		errs = append(errs, delProxy(e.Host, proxies[i]))
		errs = append(errs, arp.DelNeighbours(e.Host, e.Neigh))
		errs = append(errs, delRules(e.Host, e.Table, e.Rules))
		for _, r := range restores[i] {
			errs = append(errs, writeSysctl(e.Host, r.Key, r.Old))
		}
		if e.Device != "" {
			errs = append(errs, delRoutes(e.Host, e.Device, e.Table, e.Routes))
			errs = append(errs, delLink(e.Host, e.Device))
			if !socketLive(e.Device) {
				errs = append(errs, removeIfExists(uapiPath(e.Device)))
			}
		}
	}
	return errors.Join(errs...)
}

// release returns per end the sysctl values to restore and the proxy
// entries to delete: lk's own and inherited sysctl saves, except where
// another open link still proxies on the same LAN interface (that link
// inherits them), and the proxy entries no other open link uses.
func (l *Linker) release(lk *link) (_ [2][]sysctlSave, proxies [2][]proxyEntry) {
	var out [2][]sysctlSave
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, e := range lk.st.Ends {
		for _, p := range e.Proxy {
			if !l.heldByOther(lk, proxyKey(e.Host, p)) {
				proxies[i] = append(proxies[i], p)
			}
		}
	}
	heir := func(host, key string) *link {
		dev := sysctlDev(key)
		for _, o := range l.links {
			if o != lk && slices.Contains(o.lans, host+"\x00"+dev) {
				return o
			}
		}
		return nil
	}
	give := func(i int, host string, s sysctlSave) {
		if o := heir(host, s.Key); o != nil {
			o.inherited = append(o.inherited, inheritedSysctl{host: host, save: s})
			return
		}
		out[i] = append(out[i], s)
	}
	for i, e := range lk.st.Ends {
		for _, s := range e.Sysctls {
			give(i, e.Host, s)
		}
	}
	for _, in := range lk.inherited {
		for i, e := range lk.st.Ends {
			if e.Host == in.host {
				give(i, in.host, in.save)
				break
			}
		}
	}
	lk.inherited, lk.lans, lk.proxies = nil, nil, nil
	return out, proxies
}

// sysctlDev returns the interface a per-interface sysctl key names
// (net/ipv4/neigh/<dev>/proxy_delay → <dev>).
func sysctlDev(key string) string {
	parts := strings.Split(key, "/")
	if len(parts) >= 5 {
		return parts[3]
	}
	return ""
}
