package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/qemu/qmp"
)

// A Hypervisor keeps what it needs to find its VMs again in its state
// dir: <name>.json (the device model, written by Define and Start),
// <name>.pid (QEMU's -pidfile) and <name>.qmp (the monitor). A new
// Hypervisor on the same state dir — an agent restarted after a crash,
// or one that takes over VMs another process started and detached —
// loads the definitions and adopts a live QEMU the first time a call
// names its VM. An adopted QEMU is not this process's child: its exit
// is seen through a pidfd, and Kill signals it by pid.

const defExt = ".json"

// dialTimeout bounds adopting a QEMU (its monitor's greeting, one query).
const dialTimeout = 5 * time.Second

// incomingPath marks an incoming instance not yet resumed by this host
// (PrepareIncoming writes it, Resume removes it after "cont"), so an
// adopter never takes a received but unresumed target for a VM of its
// own — Abort would resume it, and the VM would run twice.
func incomingPath(dir, name string) string { return filepath.Join(dir, name+".incoming") }

// saveDef records cfg in the state dir (written to a temporary file,
// then renamed: a crash leaves the old definition or the new one).
func saveDef(dir string, cfg Config) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, cfg.Name+defExt)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// loadDefs reads every <name>.json of dir. A file that is not a valid
// definition of the VM its name says is an error naming the file.
func loadDefs(dir string) (map[string]Config, error) {
	des, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]Config{}, nil
	}
	if err != nil {
		return nil, err
	}
	defs := map[string]Config{}
	for _, de := range des {
		name, ok := strings.CutSuffix(de.Name(), defExt)
		if !ok || de.IsDir() {
			continue
		}
		path := filepath.Join(dir, de.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, err
		}
		var cfg Config
		if err := json.Unmarshal(b, &cfg); err != nil {
			return nil, fmt.Errorf("%w: definition %s: %v", hypervisor.ErrInvalid, path, err)
		}
		if cfg.Name != name {
			return nil, fmt.Errorf("%w: definition %s: Name %q does not match the file's name", hypervisor.ErrInvalid, path, cfg.Name)
		}
		cfg = cfg.withDefaults(dir)
		if err := cfg.Validate(); err != nil {
			return nil, fmt.Errorf("definition %s: %w", path, err)
		}
		defs[name] = cfg
	}
	return defs, nil
}

func pidPath(dir, name string) string { return filepath.Join(dir, name+".pid") }

// adopt takes over the live QEMU serving name's monitor in the state dir
// (nil, nil if there is none). Called with h.mu held.
func (h *Hypervisor) adopt(name string) (*vmEntry, error) {
	qmpPath := filepath.Join(h.stateDir, name+".qmp")
	if !live(qmpPath) {
		return nil, nil
	}
	cfg, ok := h.defs[name]
	if !ok {
		return nil, fmt.Errorf("%w: a QEMU serves %s but vm %q has no definition (%s) on host %q",
			hypervisor.ErrState, qmpPath, name, name+defExt, h.host)
	}
	b, err := os.ReadFile(pidPath(h.stateDir, name))
	if err != nil {
		return nil, fmt.Errorf("%w: vm %q on host %q: a QEMU serves %s but its pid is unknown: %v", hypervisor.ErrState, name, h.host, qmpPath, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return nil, fmt.Errorf("%w: vm %q on host %q: pid file holds %q", hypervisor.ErrState, name, h.host, strings.TrimSpace(string(b)))
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("%w: vm %q on host %q: pid %d: %v", hypervisor.ErrState, name, h.host, pid, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	dial := func(ctx context.Context) (qmp.Monitor, error) { return qmp.Dial(ctx, qmpPath) }
	mon, err := dial(ctx)
	if err != nil {
		unix.Close(pidfd)
		return nil, fmt.Errorf("qemu: adopt vm %q on host %q: %w", name, h.host, err)
	}
	p := &Process{Config: cfg, Host: h.host, QMPPath: qmpPath, pid: pid, log: h.log, done: make(chan struct{}), mon: mon, dial: dial}
	st, err := p.Status(ctx)
	if err != nil {
		mon.Close()
		unix.Close(pidfd)
		return nil, fmt.Errorf("qemu: adopt vm %q on host %q: %w", name, h.host, err)
	}
	// Running means resumed, whatever the marker says (a crash between
	// "cont" and the marker's removal).
	_, marked := os.Stat(incomingPath(h.stateDir, name))
	p.Incoming = st == "inmigrate" || (marked == nil && st != "running")
	go func() {
		defer unix.Close(pidfd)
		fds := []unix.PollFd{{Fd: int32(pidfd), Events: unix.POLLIN}}
		for {
			if _, err := unix.Poll(fds, -1); err == nil || !errors.Is(err, unix.EINTR) {
				break
			}
		}
		// Not our child: nobody else cleans up after it.
		deleteTaps(h.host, cfg.taps())
		os.Remove(qmpPath)
		close(p.done)
	}()
	h.log.Info("qemu adopted", "vm", name, "host", h.host, "pid", pid, "status", st)
	return &vmEntry{p: p, incoming: p.Incoming}, nil
}

func (c Config) taps() []string {
	var ts []string
	for _, n := range c.NICs {
		ts = append(ts, n.Tap)
	}
	return ts
}

// Detach lets go of name's QEMU without stopping it: the monitor is
// closed and the VM forgotten, so another Hypervisor on the same state
// dir (an agent) can adopt it. The process stays this one's child (it
// is still reaped here), but cleaning up after it (taps, socket) is left
// to the adopter.
func (h *Hypervisor) Detach(name string) error {
	e, err := h.entry(name)
	if err != nil {
		return err
	}
	h.mu.Lock()
	if e.migrating {
		h.mu.Unlock()
		return fmt.Errorf("%w: vm %q on host %q is migrating", hypervisor.ErrState, name, h.host)
	}
	delete(h.vms, name)
	h.mu.Unlock()
	e.p.detached.Store(true)
	e.p.close()
	h.log.Info("qemu detached", "vm", name, "host", h.host, "pid", e.p.Pid())
	return nil
}
