// Package host resolves the namespace a conn.ConnAuditor backend acts in:
// the selector's Host, else the backend's own.
package host

import (
	"fmt"

	"github.com/vishvananda/netns"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/internal/nsutil"
)

// Of returns sel.Host, or def when the selector names none.
func Of(sel conn.Selector, def string) string {
	if sel.Host != "" {
		return sel.Host
	}
	return def
}

// Open opens the namespace of Of(sel, def); a missing one is an error
// wrapping host.ErrNotFound that names it.
func Open(sel conn.Selector, def string) (netns.NsHandle, error) {
	h := Of(sel, def)
	ns, err := nsutil.Open(h)
	if err != nil {
		return ns, fmt.Errorf("conn: Selector.Host %q: %w", h, err)
	}
	return ns, nil
}
