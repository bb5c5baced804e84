// Package host names what every sealift contract means by a host: a
// network namespace name, as created by `ip netns add` (a file under
// /run/netns), or "" for the current one. Every backend reports a host
// that does not exist with an error wrapping ErrNotFound and naming it:
//
//	if errors.Is(err, host.ErrNotFound) { ... }
//
// It is stdlib only, so contracts and their users may import it freely.
package host

import "errors"

// ErrNotFound: the named host (network namespace) does not exist.
var ErrNotFound = errors.New("host not found")
