package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/internal/lab"
)

// diagnose collects what B knows when a guest is unreachable after its
// migration: the hypervisor's view, the guest's console, and the host's
// neighbours, rules, routes and firewall.
func (w *world) diagnose(ctx context.Context) map[string]string {
	d := map[string]string{}
	var hvB hypervisor.Hypervisor
	if w.hv != nil {
		hvB = w.hv.b
	}
	if w.rm != nil && w.rm.agents["host-b"] != nil && w.rm.agents["host-b"].client != nil {
		hvB = w.rm.agents["host-b"].client.Hypervisor() // remote: B's agent's
	}
	for _, v := range w.vms {
		if hvB == nil {
			break
		}
		vm, err := hvB.Lookup(ctx, v.name)
		d["hypervisor_b_"+v.name] = string(vm.State)
		if err != nil {
			d["hypervisor_b_"+v.name] = err.Error()
		}
	}
	serials, _ := filepath.Glob(filepath.Join(w.dir, "*", "*.serial"))
	top, _ := filepath.Glob(filepath.Join(w.dir, "*.serial")) // libvirt's consoles
	serials = append(serials, top...)
	for _, f := range serials {
		if b, err := os.ReadFile(f); err == nil {
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")
			d["serial_"+strings.TrimPrefix(f, w.dir+"/")] = strings.Join(lines[max(0, len(lines)-15):], "\n")
		}
	}
	for name, args := range map[string][]string{
		"b_neigh":    {"ip", "neigh"},
		"b_rules":    {"ip", "rule"},
		"b_routes":   {"ip", "route", "show", "table", "all"},
		"b_links":    {"ip", "-br", "link"},
		"b_fdb":      {"bridge", "fdb", "show", "br", "br0"},
		"b_nft":      {"nft", "list", "ruleset"},
		"a_neigh":    {"ip", "neigh"},
		"peer_neigh": {"ip", "neigh"},
	} {
		ns := w.l.B
		switch {
		case strings.HasPrefix(name, "a_"):
			ns = w.l.A
		case strings.HasPrefix(name, "peer_"):
			ns = w.l.Peer
		}
		out, err := lab.Exec(ns, args[0], args[1:]...)
		if err != nil {
			out = []byte(err.Error())
		}
		d[name] = string(out)
	}
	return d
}
