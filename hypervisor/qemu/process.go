package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/hypervisor/qemu/qmp"
	"github.com/sealift/sealift/internal/nsutil"
)

// LaunchOptions say where and how Launch starts QEMU.
type LaunchOptions struct {
	// QEMU is the binary (default "qemu-system-x86_64" from PATH).
	QEMU string
	// Host is the network namespace QEMU runs in ("" = current).
	Host string
	// StateDir holds <name>.qmp, <name>.log and the default serial file.
	StateDir string
	// Incoming starts the instance paused with "-incoming defer".
	Incoming bool
	// TLSDir, if set, adds QEMU TLS credentials objects for the files in
	// that directory (see WithTLS and migtls.CheckDir): a client object
	// "sealift-tls-client" always, a server object "sealift-tls-server"
	// when Incoming. Select them with migrate-set-parameters tls-creds.
	TLSDir string
	// Logger (default: discard).
	Logger *slog.Logger
}

// Process is one QEMU process started by Launch and waited for.
type Process struct {
	// Config is the device model it runs (defaults filled in).
	Config Config
	// Host is its network namespace.
	Host string
	// QMPPath is its monitor's unix socket (held by QMP; QEMU serves one
	// client at a time).
	QMPPath string
	// Incoming tells whether it was started with "-incoming defer".
	Incoming bool

	cmd *exec.Cmd // nil for a process played by a test's monitor, or adopted
	pid int
	// detached: Detach handed it to another Hypervisor, which cleans up.
	detached atomic.Bool
	log      *slog.Logger
	done     chan struct{}
	waitErr  error
	once     sync.Once

	mu     sync.Mutex
	mon    qmp.Monitor                                // the current monitor connection
	dial   func(context.Context) (qmp.Monitor, error) // a new connection to QMPPath
	closed bool                                       // close ran: no reconnecting
}

// QMP is the connected monitor. After Reconnect it is the new connection.
func (p *Process) QMP() qmp.Monitor {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.mon
}

// Reconnect replaces a monitor connection that has ended (QEMU accepts a
// new client on QMPPath once the old one is gone) and returns the one to
// use. A connection that is still open is kept.
func (p *Process) Reconnect(ctx context.Context) (qmp.Monitor, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mon != nil && p.mon.Err() == nil {
		return p.mon, nil
	}
	if p.closed || p.dial == nil {
		return nil, fmt.Errorf("qemu: vm %q: monitor: %w", p.Config.Name, qmp.ErrClosed)
	}
	m, err := p.dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("qemu: vm %q: reconnect monitor: %w", p.Config.Name, err)
	}
	if p.mon != nil {
		p.mon.Close()
	}
	p.mon = m
	p.log.Info("monitor reconnected", "vm", p.Config.Name, "host", p.Host)
	return m, nil
}

// Launch starts QEMU for cfg (taps created as needed, QMP connected). It
// returns ErrExists if a live QEMU already serves <StateDir>/<name>.qmp.
func Launch(ctx context.Context, cfg Config, o LaunchOptions) (*Process, error) {
	if o.StateDir == "" {
		return nil, fmt.Errorf("%w: LaunchOptions.StateDir is empty", hypervisor.ErrInvalid)
	}
	cfg = cfg.withDefaults(o.StateDir)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if o.TLSDir != "" {
		if err := migtls.CheckDir(o.TLSDir); err != nil {
			return nil, err
		}
	}
	if o.QEMU == "" {
		o.QEMU = "qemu-system-x86_64"
	}
	bin, err := exec.LookPath(o.QEMU)
	if err != nil {
		return nil, fmt.Errorf("%w: QEMU binary %q: %v", hypervisor.ErrInvalid, o.QEMU, err)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(o.StateDir, 0o700); err != nil {
		return nil, err
	}
	qmpPath := filepath.Join(o.StateDir, cfg.Name+".qmp")
	if live(qmpPath) {
		return nil, fmt.Errorf("%w: vm %q: a QEMU already serves %s", hypervisor.ErrExists, cfg.Name, qmpPath)
	}
	_ = os.Remove(qmpPath)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: qmpPath, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("qemu: listen %s: %w", qmpPath, err)
	}
	ln.SetUnlinkOnClose(false)
	lf, err := ln.File()
	ln.Close()
	if err != nil {
		os.Remove(qmpPath)
		return nil, err
	}
	defer lf.Close()

	taps, err := ensureTaps(o.Host, cfg.NICs)
	if err != nil {
		os.Remove(qmpPath)
		return nil, fmt.Errorf("qemu: vm %q on host %q: %w", cfg.Name, o.Host, err)
	}
	logf, err := os.OpenFile(filepath.Join(o.StateDir, cfg.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		deleteTaps(o.Host, taps)
		os.Remove(qmpPath)
		return nil, err
	}
	defer logf.Close()
	args := append(cfg.Args(3, o.Incoming), "-pidfile", pidPath(o.StateDir, cfg.Name))
	cmd := exec.Command(bin, append(args, tlsArgs(o.TLSDir, o.Incoming)...)...)
	cmd.ExtraFiles = []*os.File{lf}
	cmd.Stdout, cmd.Stderr = logf, logf
	// Start from a thread inside the host's namespace: the child inherits it.
	if err := nsutil.Do(o.Host, cmd.Start); err != nil {
		deleteTaps(o.Host, taps)
		os.Remove(qmpPath)
		return nil, fmt.Errorf("qemu: start vm %q on host %q: %w", cfg.Name, o.Host, err)
	}
	p := &Process{Config: cfg, Host: o.Host, QMPPath: qmpPath, Incoming: o.Incoming,
		cmd: cmd, pid: cmd.Process.Pid, log: o.Logger, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		if !p.detached.Load() {
			deleteTaps(o.Host, taps)
			os.Remove(qmpPath)
		}
		close(p.done)
	}()
	o.Logger.Debug("qemu started", "vm", cfg.Name, "host", o.Host, "pid", cmd.Process.Pid, "incoming", o.Incoming)

	dctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.done:
			cancel()
		case <-dctx.Done():
		}
	}()
	p.dial = func(ctx context.Context) (qmp.Monitor, error) { return qmp.Dial(ctx, qmpPath) }
	c, err := p.dial(dctx)
	if err != nil {
		p.Kill()
		return nil, fmt.Errorf("qemu: vm %q: %w (see %s)", cfg.Name, errors.Join(err, p.waitErr), filepath.Join(o.StateDir, cfg.Name+".log"))
	}
	p.mon = c
	return p, nil
}

// live reports whether something accepts connections on the unix socket.
func live(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Pid is the QEMU process id.
func (p *Process) Pid() int { return p.pid }

// Done is closed once QEMU has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether QEMU has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Err is QEMU's exit status once it exited (nil for a clean exit).
func (p *Process) Err() error {
	<-p.done
	return p.waitErr
}

// Quit asks QEMU to quit and waits until it is gone; if ctx ends first it
// is killed.
func (p *Process) Quit(ctx context.Context) error {
	if p.Exited() {
		return nil
	}
	if m := p.QMP(); m != nil {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := m.Execute(qctx, "quit", nil, nil)
		cancel()
		if err == nil || errors.Is(err, qmp.ErrClosed) {
			select {
			case <-p.done:
				p.close()
				return nil
			case <-ctx.Done():
			}
		}
	}
	p.Kill()
	return ctx.Err()
}

// Kill kills QEMU and waits until it is reaped.
func (p *Process) Kill() {
	if !p.Exited() {
		switch {
		case p.cmd != nil:
			_ = p.cmd.Process.Kill()
		case p.pid > 0: // adopted; its pidfd watcher closes done
			_ = syscall.Kill(p.pid, syscall.SIGKILL)
		}
	}
	<-p.done
	p.close()
}

func (p *Process) close() {
	p.once.Do(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.closed = true
		if p.mon != nil {
			p.mon.Close()
		}
	})
}

// Status runs query-status.
func (p *Process) Status(ctx context.Context) (string, error) {
	var st struct {
		Status  string `json:"status"`
		Running bool   `json:"running"`
	}
	if err := p.QMP().Execute(ctx, "query-status", nil, &st); err != nil {
		return "", err
	}
	return st.Status, nil
}

// state maps QEMU's run state to the contract's.
func state(status string) hypervisor.State {
	switch status {
	case "running":
		return hypervisor.Running
	case "inmigrate":
		return hypervisor.Incoming
	case "shutdown", "guest-panicked", "internal-error", "io-error", "postmigrate":
		// postmigrate: the guest left for another host.
		return hypervisor.Shutoff
	default: // paused, prelaunch, finish-migrate, postmigrate, suspended, ...
		return hypervisor.Paused
	}
}
