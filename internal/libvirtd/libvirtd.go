// Package libvirtd runs real libvirt daemons side by side on one machine,
// one per lab host, the way /work/shared/notes/lab-facts.md prescribes:
//
//   - each daemon runs in the host's network namespace, in its own private
//     mount namespace, under a small child subreaper (./reaper) that reaps
//     the QEMU processes libvirtd daemonizes (PID 1 here reaps late);
//   - its /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt,
//     /var/log/libvirt and /run are bind mounts of directories under
//     Options.Dir (so /run is private, yet its unix socket is reachable
//     from outside at Daemon.Socket);
//   - libvirtd.conf: distinct host_uuid and tcp_port, listen_tcp=1,
//     auth_tcp="none", listen_addr; qemu.conf: user/group root,
//     security_driver="none", stdio_handler="file", no cgroups or
//     namespaces, distinct migration ports; optionally a TLS credentials
//     directory for migrations (Options.MigrateTLSDir);
//   - a libvirt-qemu user and group exist (added to bind-mounted copies
//     of /etc/passwd and /etc/group when the machine lacks them).
package libvirtd

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/internal/nsutil"
)

//go:embed reaper/main.go
var reaperSource []byte

// ErrInvalid: an Options field is wrong; nothing was started.
var ErrInvalid = errors.New("libvirtd: invalid options")

// Options describe one daemon.
type Options struct {
	// Host is the network namespace the daemon (and its QEMUs) run in.
	Host string
	// Dir is the daemon's private state root (required, absolute, short:
	// the unix socket path must fit in 108 bytes).
	Dir string
	// CacheDir becomes /var/cache/libvirt. Keeping it across runs saves
	// the QEMU capabilities probe (~7 s on first connect). Default Dir/cache.
	CacheDir string
	// ListenAddr is the TCP address the daemon listens on (default
	// 127.0.0.1); other daemons reach it there for peer-to-peer migration.
	ListenAddr string
	// TCPPort is the daemon's TCP port (default 16509); distinct per daemon
	// when they share an address space.
	TCPPort int
	// MigrationPortMin/Max bound the ports QEMU receives migrations on
	// (default 49152–49215).
	MigrationPortMin, MigrationPortMax int
	// MigrateTLSDir, if set, is the X.509 credentials directory QEMU uses
	// for migrations with VIR_MIGRATE_TLS (qemu.conf
	// migrate_tls_x509_cert_dir, with migrate_tls_x509_verify = 1: the
	// target verifies the source's client certificate). It must be an
	// absolute path holding ca-cert.pem, server-cert.pem, server-key.pem,
	// client-cert.pem and client-key.pem (see migtls.NewDir); the server
	// certificate must name the address migrations to this daemon use.
	MigrateTLSDir string
	// Libvirtd is the daemon binary (default /usr/sbin/libvirtd).
	Libvirtd string
	// Logger (default: discard).
	Logger *slog.Logger
}

// Daemon is a running libvirtd.
type Daemon struct {
	// Host is its network namespace.
	Host string
	// Dir is its state root.
	Dir string
	// UUID is its host_uuid.
	UUID string
	// Socket is the read-write unix socket, reachable from any mount
	// namespace that sees Dir.
	Socket string
	// URI connects to the daemon over its unix socket from this machine.
	URI string
	// TCPURI is how other daemons reach it (qemu+tcp://ADDR:PORT/system).
	TCPURI string
	// MigrateURI is the data-channel URI for migrations into this daemon
	// (tcp://ListenAddr); the port comes from the migration port range.
	MigrateURI string
	// Log is the daemon's log file.
	Log string

	cmd     *exec.Cmd
	done    chan struct{}
	waitErr error
	log     *slog.Logger
}

func (o *Options) check() error {
	if o.Dir == "" || !filepath.IsAbs(o.Dir) {
		return fmt.Errorf("%w: Dir %q must be an absolute path", ErrInvalid, o.Dir)
	}
	if n := len(filepath.Join(o.Dir, "run/libvirt/libvirt-sock")); n > 107 {
		return fmt.Errorf("%w: Dir %q makes a socket path of %d bytes (max 107)", ErrInvalid, o.Dir, n)
	}
	if o.ListenAddr == "" {
		o.ListenAddr = "127.0.0.1"
	}
	if net.ParseIP(o.ListenAddr) == nil {
		return fmt.Errorf("%w: ListenAddr %q is not an IP address", ErrInvalid, o.ListenAddr)
	}
	if o.TCPPort == 0 {
		o.TCPPort = 16509
	}
	if o.TCPPort < 1 || o.TCPPort > 65535 {
		return fmt.Errorf("%w: TCPPort %d out of range", ErrInvalid, o.TCPPort)
	}
	if o.MigrationPortMin == 0 && o.MigrationPortMax == 0 {
		o.MigrationPortMin, o.MigrationPortMax = 49152, 49215
	}
	if o.MigrationPortMin < 1024 || o.MigrationPortMax > 65535 || o.MigrationPortMin > o.MigrationPortMax {
		return fmt.Errorf("%w: migration ports %d-%d out of range", ErrInvalid, o.MigrationPortMin, o.MigrationPortMax)
	}
	if o.CacheDir == "" {
		o.CacheDir = filepath.Join(o.Dir, "cache")
	}
	if o.MigrateTLSDir != "" {
		if !filepath.IsAbs(o.MigrateTLSDir) || strings.ContainsAny(o.MigrateTLSDir, "\"\n\\") {
			return fmt.Errorf("%w: MigrateTLSDir %q must be an absolute path without quotes or backslashes", ErrInvalid, o.MigrateTLSDir)
		}
		if err := migtls.CheckDir(o.MigrateTLSDir); err != nil {
			return fmt.Errorf("%w: MigrateTLSDir: %v", ErrInvalid, err)
		}
	}
	if o.Libvirtd == "" {
		o.Libvirtd = "/usr/sbin/libvirtd"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Host != "" {
		ns, err := nsutil.Open(o.Host)
		if err != nil {
			return fmt.Errorf("%w: Host %q: %v", ErrInvalid, o.Host, err)
		}
		ns.Close()
	}
	return nil
}

// Start launches a daemon and waits until its unix socket accepts
// connections (bounded by ctx). The first libvirt connection to a fresh
// CacheDir still takes several seconds (QEMU capabilities probe).
func Start(ctx context.Context, o Options) (*Daemon, error) {
	if err := o.check(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(o.Libvirtd); err != nil {
		return nil, fmt.Errorf("libvirtd: %s: %w (install apt packages libvirt-daemon libvirt-daemon-driver-qemu)", o.Libvirtd, err)
	}
	reaper, err := buildReaper(ctx)
	if err != nil {
		return nil, err
	}
	uuid, err := newUUID()
	if err != nil {
		return nil, err
	}
	d := &Daemon{Host: o.Host, Dir: o.Dir, UUID: uuid, log: o.Logger, done: make(chan struct{}),
		Socket: filepath.Join(o.Dir, "run/libvirt/libvirt-sock"),
		Log:    filepath.Join(o.Dir, "libvirtd.log")}
	d.URI = "qemu+unix:///system?socket=" + url.QueryEscape(d.Socket)
	d.TCPURI = fmt.Sprintf("qemu+tcp://%s/system", net.JoinHostPort(o.ListenAddr, strconv.Itoa(o.TCPPort)))
	d.MigrateURI = "tcp://" + hostForURI(o.ListenAddr)

	dirs := map[string]string{"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "log": "/var/log/libvirt", "run": "/run"}
	for sub := range dirs {
		if err := os.MkdirAll(filepath.Join(o.Dir, sub), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(o.CacheDir, 0o755); err != nil {
		return nil, err
	}
	// Mount points the packages normally create.
	for _, mp := range []string{"/etc/libvirt", "/var/lib/libvirt", "/var/cache/libvirt", "/var/log/libvirt"} {
		if err := os.MkdirAll(mp, 0o755); err != nil {
			return nil, err
		}
	}
	if err := d.writeConfig(o); err != nil {
		return nil, err
	}
	args := []string{reaper}
	for sub, dst := range dirs {
		args = append(args, "-bind", filepath.Join(o.Dir, sub)+"="+dst)
	}
	args = append(args, "-bind", o.CacheDir+"=/var/cache/libvirt")
	users, err := d.usersFiles()
	if err != nil {
		return nil, err
	}
	args = append(args, users...)
	args = append(args, "--", o.Libvirtd, "--listen", "-f", "/etc/libvirt/libvirtd.conf")

	logf, err := os.OpenFile(d.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	d.cmd = &exec.Cmd{Path: reaper, Args: args, Stdout: logf, Stderr: logf,
		SysProcAttr: &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}}
	if err := nsutil.Do(o.Host, d.cmd.Start); err != nil {
		return nil, fmt.Errorf("libvirtd: start on host %q: %w", o.Host, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.done)
	}()
	o.Logger.Info("libvirtd started", "host", o.Host, "dir", o.Dir, "pid", d.cmd.Process.Pid, "tcp", d.TCPURI)
	if err := d.waitSocket(ctx); err != nil {
		d.Kill()
		return nil, err
	}
	return d, nil
}

func hostForURI(a string) string {
	if strings.Contains(a, ":") {
		return "[" + a + "]"
	}
	return a
}

func (d *Daemon) writeConfig(o Options) error {
	conf := fmt.Sprintf(`# written by sealift internal/libvirtd
listen_tls = 0
listen_tcp = 1
tcp_port = "%d"
listen_addr = "%s"
auth_tcp = "none"
auth_unix_rw = "none"
auth_unix_ro = "none"
unix_sock_rw_perms = "0770"
host_uuid = "%s"
log_outputs = "3:stderr"
keepalive_interval = 5
keepalive_count = 5
`, o.TCPPort, o.ListenAddr, d.UUID)
	qemuConf := fmt.Sprintf(`# written by sealift internal/libvirtd
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
stdio_handler = "file"
cgroup_controllers = [ ]
namespaces = [ ]
migration_port_min = %d
migration_port_max = %d
`, o.MigrationPortMin, o.MigrationPortMax)
	if o.MigrateTLSDir != "" {
		qemuConf += fmt.Sprintf("migrate_tls_x509_cert_dir = %q\nmigrate_tls_x509_verify = 1\n", o.MigrateTLSDir)
	}
	etc := filepath.Join(o.Dir, "etc")
	if err := os.WriteFile(filepath.Join(etc, "libvirtd.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(etc, "qemu.conf"), []byte(qemuConf), 0o644)
}

// usersFiles returns bind mounts of /etc/passwd and /etc/group copies with
// a libvirt-qemu user and group, when the machine lacks them.
func (d *Daemon) usersFiles() ([]string, error) {
	var args []string
	for _, f := range []struct{ path, line string }{
		{"/etc/passwd", "libvirt-qemu:x:64055:64055:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n"},
		{"/etc/group", "libvirt-qemu:x:64055:\n"},
	} {
		data, err := os.ReadFile(f.path)
		if err != nil {
			return nil, err
		}
		if bytes.Contains(data, []byte("\nlibvirt-qemu:")) || bytes.HasPrefix(data, []byte("libvirt-qemu:")) {
			continue
		}
		if len(data) > 0 && data[len(data)-1] != '\n' {
			data = append(data, '\n')
		}
		dst := filepath.Join(d.Dir, filepath.Base(f.path))
		if err := os.WriteFile(dst, append(data, f.line...), 0o644); err != nil {
			return nil, err
		}
		args = append(args, "-bind", dst+"="+f.path)
	}
	return args, nil
}

// waitSocket polls until the daemon's unix socket accepts a connection.
func (d *Daemon) waitSocket(ctx context.Context) error {
	for {
		if c, err := net.DialTimeout("unix", d.Socket, time.Second); err == nil {
			c.Close()
			return nil
		}
		select {
		case <-d.done:
			return fmt.Errorf("libvirtd on host %q exited: %v (log %s: %s)", d.Host, d.waitErr, d.Log, tail(d.Log))
		case <-ctx.Done():
			return fmt.Errorf("libvirtd on host %q: socket %s not ready: %w (log %s: %s)", d.Host, d.Socket, ctx.Err(), d.Log, tail(d.Log))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 800 {
		b = b[len(b)-800:]
	}
	return strings.TrimSpace(string(b))
}

// Pid is the subreaper's process id (libvirtd is its child).
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// Done is closed when the daemon (and its subreaper) exited.
func (d *Daemon) Done() <-chan struct{} { return d.done }

// Stop terminates the daemon (SIGTERM; SIGKILL when ctx ends) and waits.
// QEMU processes it left behind are killed by the subreaper.
func (d *Daemon) Stop(ctx context.Context) error {
	select {
	case <-d.done:
		return nil
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
		return nil
	case <-ctx.Done():
		d.Kill()
		return ctx.Err()
	}
}

// Kill stops the daemon without grace: SIGTERM (the subreaper forwards it
// and then kills what libvirtd left), SIGKILL after 10 s.
func (d *Daemon) Kill() {
	select {
	case <-d.done:
		return
	default:
	}
	// SIGTERM first lets the subreaper kill libvirtd's leftovers; then force.
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

func newUUID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:], nil
}

var reaperMu sync.Mutex

// buildReaper compiles the embedded subreaper (CGO_ENABLED=0), cached
// under the user cache dir by source hash.
func buildReaper(ctx context.Context) (string, error) {
	reaperMu.Lock()
	defer reaperMu.Unlock()
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	dir = filepath.Join(dir, "sealift-libvirtd")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = filepath.Join(runtime.GOROOT(), "bin", "go")
		if _, err := os.Stat(goBin); err != nil {
			goBin = "/usr/local/go/bin/go"
		}
	}
	ver, err := exec.CommandContext(ctx, goBin, "env", "GOVERSION").Output()
	if err != nil {
		return "", fmt.Errorf("libvirtd: %s env GOVERSION: %w", goBin, err)
	}
	sum := sha256.Sum256(append(append([]byte{}, reaperSource...), ver...))
	out := filepath.Join(dir, "reaper-"+hex.EncodeToString(sum[:])[:16])
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	src, err := os.MkdirTemp(dir, "src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	if err := os.WriteFile(filepath.Join(src, "main.go"), reaperSource, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module sealiftreaper\n\ngo 1.22\n"), 0o644); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-o", out+".tmp", ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("libvirtd: build reaper: %w: %s", err, b)
	}
	return out, os.Rename(out+".tmp", out)
}
