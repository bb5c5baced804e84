package conn

import (
	"context"
	"fmt"
	"time"
)

// WaitReestablished waits until every remote service of the reset
// connections has a new connection and returns the new connections'
// verdicts under p, one per service, in the order of reset. A service is
// the remote address and port when the VM was the client, or the local
// address and port when it was the server; a new connection matches a
// reset one when it has the same protocol and either the same Remote, or
// the same Local and remote address, and is not itself one of reset.
// TCP connections only count once ESTABLISHED (when the backend reports
// states). It polls a.List; on ctx's end it returns the verdicts found so
// far with ctx's error.
func WaitReestablished(ctx context.Context, a ConnAuditor, sel Selector, reset []Conn, p Policy) ([]Verdict, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	if a == nil {
		return nil, fmt.Errorf("%w: ConnAuditor is nil", ErrInvalid)
	}
	type tuple struct {
		proto         Proto
		local, remote string
	}
	old := make(map[tuple]bool, len(reset))
	for _, c := range reset {
		old[tuple{c.Proto, c.Local.String(), c.Remote.String()}] = true
	}
	// Services, deduplicated, in order of first appearance.
	var services []Conn
	seen := make(map[tuple]bool, len(reset))
	for _, c := range reset {
		k := tuple{c.Proto, c.Local.String(), c.Remote.String()}
		if seen[k] {
			continue
		}
		seen[k] = true
		services = append(services, c)
	}
	found := make([]*Conn, len(services))
	wait := 5 * time.Millisecond
	for {
		conns, err := a.List(ctx, sel)
		if err != nil {
			return verdicts(found, p), err
		}
		missing := 0
		for i, s := range services {
			if found[i] != nil {
				continue
			}
			for j := range conns {
				c := &conns[j]
				if c.Proto != s.Proto || old[tuple{c.Proto, c.Local.String(), c.Remote.String()}] {
					continue
				}
				if c.Proto == TCP && c.State != "" && c.State != "ESTABLISHED" {
					continue
				}
				if c.Remote == s.Remote || c.Local == s.Local && c.Remote.Addr() == s.Remote.Addr() {
					cc := *c
					found[i] = &cc
					break
				}
			}
			if found[i] == nil {
				missing++
			}
		}
		if missing == 0 {
			return verdicts(found, p), nil
		}
		select {
		case <-ctx.Done():
			return verdicts(found, p), fmt.Errorf("conn: %d of %d services not reestablished: %w", missing, len(services), ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, 250*time.Millisecond)
	}
}

func verdicts(found []*Conn, p Policy) []Verdict {
	var conns []Conn
	for _, c := range found {
		if c != nil {
			conns = append(conns, *c)
		}
	}
	cl := Classify(conns, p)
	// Classify splits; put them back in the services' order.
	byConn := make(map[Conn]Verdict, len(conns))
	for _, v := range append(cl.Keep, cl.Reset...) {
		byConn[v.Conn] = v
	}
	out := make([]Verdict, 0, len(conns))
	for _, c := range conns {
		out = append(out, byConn[c])
	}
	return out
}
