// Package fencetest is the test world both fence backends are tested in:
// the reference lab with IPv6 on the VM endpoint and the peer, a probe
// target in the VM endpoint, and the VM's MAC.
package fencetest

import (
	"context"
	"maps"
	"net/netip"
	"testing"
	"time"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/hosttest"
	"github.com/sealift/sealift/internal/lab"
)

// VM6 is the VM endpoint's IPv6 address (the peer has fd00:1::20).
var VM6 = netip.MustParseAddr("fd00:1::10")

// World is a built lab with a probe target in the VM endpoint.
type World struct {
	*lab.Lab
	Target *lab.Target
	MAC    string // the VM endpoint's eth0
}

// NewWorld builds it; before, if set, runs on the bare lab first (e.g.
// to set sysctls that must hold before traffic starts).
func NewWorld(t testing.TB, before func(*lab.Lab)) *World {
	t.Helper()
	lab.RequireRoot(t)
	l := lab.New(t)
	if before != nil {
		before(l)
	}
	w := &World{Lab: l}
	Must(t, lab.AddAddr(l.VM, "eth0", "fd00:1::10/64"))
	Must(t, lab.AddAddr(l.Peer, "eth0", "fd00:1::20/64"))
	var err error
	if w.Target, err = lab.StartTarget(l.VM, "eth0", 7000, 7001); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Target.Close)
	w.MAC = LinkMAC(t, l.VM, "eth0")
	// The first IPv6 neighbour discovery on a fresh bridge takes about a
	// second; settle it here so probes measure the fence, not ND.
	w.WaitV6(t)
	return w
}

// WaitV6 waits (with a deadline) until the peer reaches the VM over IPv6.
func (w *World) WaitV6(t testing.TB) {
	t.Helper()
	Must(t, lab.WaitReachable(w.Peer, VM6, 10*time.Second))
}

// Spec fences the VM endpoint's port vm0 by port, MAC and both addresses.
func (w *World) Spec() fence.Spec {
	return fence.Spec{VM: "vm-1", Port: "vm0", MAC: w.MAC, Addrs: []netip.Addr{lab.VMAddr, VM6}}
}

// Probe sends n flows of each kind from ns to the target.
func (w *World) Probe(t testing.TB, from string, dst, dst6 netip.Addr, n int) lab.Probe {
	t.Helper()
	p, err := w.Target.Probe(from, dst, dst6, n)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// LinkMAC returns the MAC of ifname in ns.
func LinkMAC(t testing.TB, ns, ifname string) string {
	t.Helper()
	h, err := lab.Handle(ns)
	Must(t, err)
	defer h.Close()
	lk, err := h.LinkByName(ifname)
	Must(t, err)
	return lk.Attrs().HardwareAddr.String()
}

// Must fails the test on err.
func Must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// MissingHost calls every fence.Fencer method of f, a Fencer built for
// the host gone, which does not exist, and the backend's own entry points
// in extra (by name): each must fail with an error that wraps
// host.ErrNotFound and names gone.
func MissingHost(t *testing.T, f fence.Fencer, gone string, extra map[string]func(context.Context) error) {
	t.Helper()
	spec := fence.Spec{VM: "vm-1", Port: "vm0"}
	calls := map[string]func(context.Context) error{
		"Fence": func(ctx context.Context) error { return f.Fence(ctx, spec) },
		"Lift":  func(ctx context.Context) error { return f.Lift(ctx, spec.VM) },
		"List":  func(ctx context.Context) error { _, err := f.List(ctx); return err },
	}
	maps.Copy(calls, extra)
	hosttest.Missing(t, gone, calls)
}
