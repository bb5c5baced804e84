package wireguard

import (
	"io"
	"log/slog"
	"time"
)

// Backend selects what carries a link.
type Backend int

const (
	// Auto uses the kernel WireGuard device where the host's kernel can
	// create one (netlink link type "wireguard") and the embedded
	// wireguard-go otherwise.
	Auto Backend = iota
	// Kernel forces the kernel device; Prepare fails with
	// tunnel.ErrKernelUnsupported where the kernel lacks CONFIG_WIREGUARD.
	Kernel
	// Userspace forces the embedded wireguard-go over TUN.
	Userspace
)

// Backend names reported in tunnel.Link.Backend.
const (
	BackendKernel    = "wireguard-kernel"
	BackendUserspace = "wireguard-userspace"
)

// String returns the option's name.
func (b Backend) String() string {
	switch b {
	case Auto:
		return "auto"
	case Kernel:
		return "kernel"
	case Userspace:
		return "userspace"
	}
	return "unknown"
}

// DefaultPort is the first UDP port tried when an End's Port is 0 (the
// next ones are tried if it is taken on that host).
const DefaultPort = 51820

// DefaultKeepalive is the persistent keepalive interval of both peers.
const DefaultKeepalive = 25 * time.Second

// DefaultVerifyTimeout bounds Verify when its context has no deadline:
// long enough for two of WireGuard's handshake retries (every 5 s).
const DefaultVerifyTimeout = 12 * time.Second

// DefaultStateDir holds one state file per link (no keys) for List and
// for Close after a restart.
const DefaultStateDir = "/run/sealift/wireguard"

// Option configures a Linker.
type Option func(*Linker)

// WithBackend forces the kernel device or the embedded wireguard-go
// (default Auto).
func WithBackend(b Backend) Option { return func(l *Linker) { l.backend = b } }

// WithLogger sets the logger (default: a logger that discards). Keys are
// never logged.
func WithLogger(log *slog.Logger) Option {
	return func(l *Linker) {
		if log != nil {
			l.log = log
		}
	}
}

// WithPresharedKey adds a fresh random preshared key to every link
// (post-quantum hedge of the WireGuard protocol).
func WithPresharedKey(on bool) Option { return func(l *Linker) { l.psk = on } }

// WithKeepalive sets the persistent keepalive interval of both peers
// (default DefaultKeepalive; 0 disables it).
func WithKeepalive(d time.Duration) Option { return func(l *Linker) { l.keepalive = d } }

// WithVerifyTimeout bounds Verify when its context carries no deadline
// (default DefaultVerifyTimeout).
func WithVerifyTimeout(d time.Duration) Option {
	return func(l *Linker) {
		if d > 0 {
			l.verifyTimeout = d
		}
	}
}

// WithStateDir sets where link state files live (default
// DefaultStateDir); "" keeps state in memory only, so List reports only
// this Linker's links.
func WithStateDir(dir string) Option { return func(l *Linker) { l.stateDir = dir } }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
