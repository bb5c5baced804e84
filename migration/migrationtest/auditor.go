package migrationtest

import (
	"context"
	"fmt"
	"slices"
	"sync"

	"github.com/sealift/sealift/conn"
)

// Auditor is a fake conn.ConnAuditor: it returns the connections set
// with SetConns; Reset removes them (the endpoints "reconnect" if
// Reconnect is set: the same flows come back on the given device).
type Auditor struct {
	Faults
	mu        sync.Mutex
	conns     []conn.Conn
	resets    []conn.Conn
	Reconnect string
}

var _ conn.ConnAuditor = (*Auditor)(nil)

// Auditor returns a fake auditor of host.
func (w *World) Auditor(host string) *Auditor {
	return &Auditor{Faults: Faults{name: "audit:" + host, log: &w.Recorder, methods: methodsOf[conn.ConnAuditor]()}}
}

// SetConns sets what List returns.
func (a *Auditor) SetConns(cs ...conn.Conn) {
	a.mu.Lock()
	a.conns = slices.Clone(cs)
	a.mu.Unlock()
}

// ResetConns returns every connection Reset was asked to reset.
func (a *Auditor) ResetConns() []conn.Conn {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.resets)
}

func (a *Auditor) List(ctx context.Context, sel conn.Selector) ([]conn.Conn, error) {
	if err := sel.Validate(); err != nil {
		return nil, err
	}
	if err := a.enter(ctx, "List", fmt.Sprint(sel.Addrs)); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.conns), nil
}

func (a *Auditor) Reset(ctx context.Context, sel conn.Selector, cs []conn.Conn) (conn.ResetResult, error) {
	if err := a.enter(ctx, "Reset", fmt.Sprint(len(cs))); err != nil {
		return conn.ResetResult{}, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var res conn.ResetResult
	for _, c := range cs {
		a.resets = append(a.resets, c)
		i := slices.IndexFunc(a.conns, func(x conn.Conn) bool { return x.Local == c.Local && x.Remote == c.Remote && x.Proto == c.Proto })
		if i < 0 {
			res.Missed++
			continue
		}
		res.Reset++
		if a.Reconnect != "" {
			a.conns[i].Device = a.Reconnect
		} else {
			a.conns = slices.Delete(a.conns, i, i+1)
		}
	}
	return res, nil
}
