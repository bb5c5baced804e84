package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/routing"
)

// HostState is what `sealift inspect HOST` reports: what the host's
// agent's backends hold for sealift.
type HostState struct {
	Host      string          `json:"host"`
	Agent     string          `json:"agent"`
	Fences    []FenceState    `json:"fences"`
	Links     []LinkEndState  `json:"links"`
	Redirects []RedirectState `json:"redirects,omitempty"` // a routing core's
}

// FenceState is one fence: the VM it fences, the port, the devices its
// traffic may still use (none: a full block) and the peers guarded.
type FenceState struct {
	VM       string   `json:"vm"`
	Port     string   `json:"port"`
	AllowVia []string `json:"allow_via"`
	Peers    []string `json:"peers,omitempty"`
	Hold     bool     `json:"hold,omitempty"`
}

// LinkEndState is one end of a secure link held on the host.
type LinkEndState struct {
	ID        string   `json:"id"`
	Kind      string   `json:"kind"`
	Role      string   `json:"role"`
	Backend   string   `json:"backend"`
	Device    string   `json:"device,omitempty"`
	Connected bool     `json:"connected"`
	Active    bool     `json:"active"`
	Protects  []string `json:"protects"`
}

// RedirectState is one redirect route at a routing core.
type RedirectState struct {
	Prefix string `json:"prefix"`
	Device string `json:"device"`
	Via    string `json:"via,omitempty"`
}

// agentOf finds host's agent in the configuration: an environment's host
// or its routing core.
func agentOf(cfg Config, host string) (addr string, core bool, err error) {
	var known []string
	for _, e := range cfg.Environments {
		if e.Host == host {
			return e.Agent, false, nil
		}
		known = append(known, e.Host)
		if e.Core != nil {
			if e.Core.Host == host {
				return e.Core.Agent, true, nil
			}
			known = append(known, e.Core.Host)
		}
	}
	slices.Sort(known)
	return "", false, fmt.Errorf("%w: host %q is not in the configuration (hosts: %s)", errConfig, host, strings.Join(known, ", "))
}

// inspect asks host's agent what its backends hold.
func inspect(ctx context.Context, cfg Config, host string) (*HostState, error) {
	addr, core, err := agentOf(cfg, host)
	if err != nil {
		return nil, err
	}
	caPEM, cert, err := agentpki.LoadFiles(cfg.TLS.CA, cfg.TLS.Cert, cfg.TLS.Key)
	if err != nil {
		return nil, err
	}
	tc, err := agentpki.ClientConfig(caPEM, cert, host)
	if err != nil {
		return nil, fmt.Errorf("%w: host %q: %w", errConfig, host, err)
	}
	c, err := agent.Dial(addr, tc)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st := &HostState{Host: host, Agent: addr, Fences: []FenceState{}, Links: []LinkEndState{}}
	f, err := c.Fencer(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", addr, err)
	}
	fs, err := f.List(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent %s: fences: %w", addr, err)
	}
	for _, s := range fs {
		fst := FenceState{VM: s.VM, Port: s.Port, AllowVia: append([]string{}, s.AllowVia...), Peers: prefixStrings(s.Peers), Hold: s.Hold}
		st.Fences = append(st.Fences, fst)
	}
	ends, err := c.LinkEnd().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("agent %s: link ends: %w", addr, err)
	}
	for _, e := range ends {
		mine := e.Spec.Secure
		if e.Role == "remote" {
			mine = e.Spec.Remote
		}
		st.Links = append(st.Links, LinkEndState{ID: e.Spec.ID, Kind: string(e.Spec.Kind), Role: string(e.Role), Backend: e.Backend,
			Device: e.Device, Connected: e.Connected, Active: e.Active, Protects: prefixStrings(mine.Protected)})
	}
	if core {
		rs, err := c.RouteWatcher().Redirects(ctx)
		if err != nil {
			return nil, fmt.Errorf("agent %s: redirects: %w", addr, err)
		}
		for _, r := range rs {
			st.Redirects = append(st.Redirects, redirectState(r))
		}
	}
	return st, nil
}

func redirectState(r routing.Redirect) RedirectState {
	rs := RedirectState{Prefix: r.Prefix.String(), Device: r.Device}
	if r.Via.IsValid() {
		rs.Via = r.Via.String()
	}
	return rs
}

func prefixStrings(ps []netip.Prefix) []string {
	out := []string{}
	for _, p := range ps {
		out = append(out, p.String())
	}
	return out
}

// print writes st as tables, or as JSON.
func (st *HostState) print(w io.Writer, asJSON bool) {
	if asJSON {
		b, _ := json.MarshalIndent(st, "", "  ")
		fmt.Fprintln(w, string(b))
		return
	}
	fmt.Fprintf(w, "host %s (agent %s)\n\n", st.Host, st.Agent)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "FENCE\tPORT\tOPEN VIA\tPEERS GUARDED\tHOLD\n")
	for _, f := range st.Fences {
		via := strings.Join(f.AllowVia, ",")
		if via == "" {
			via = "(nothing: full block)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\n", f.VM, f.Port, via, strings.Join(f.Peers, ","), f.Hold)
	}
	if len(st.Fences) == 0 {
		fmt.Fprintf(tw, "(none)\t\t\t\t\n")
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintf(tw, "LINK\tKIND\tROLE\tBACKEND\tDEVICE\tCONNECTED\tACTIVE\tPROTECTS\n")
	for _, l := range st.Links {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%v\t%s\n", l.ID, l.Kind, l.Role, l.Backend, l.Device, l.Connected, l.Active, strings.Join(l.Protects, ","))
	}
	if len(st.Links) == 0 {
		fmt.Fprintf(tw, "(none)\t\t\t\t\t\t\t\n")
	}
	tw.Flush()
	if st.Redirects != nil {
		fmt.Fprintln(w)
		fmt.Fprintf(tw, "REDIRECT\tDEVICE\tVIA\n")
		for _, r := range st.Redirects {
			fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Prefix, r.Device, r.Via)
		}
		tw.Flush()
	}
}
