// Package guest builds and talks to sealift's small test guest: Debian's
// kernel, a busybox initramfs with the virtio-net modules, and a static Go
// agent (see ./agent) that configures eth0 from the kernel command line
// (sealift.ip=CIDR sealift.gw=ADDR, and for IPv6 sealift.ip6=CIDR
// sealift.gw6=ADDR), echoes on TCP 7777 and serves a
// counter with the boot id on TCP 7778 (also printed on the serial
// console every 100 ms). Same boot id and a larger counter after a
// migration prove the guest kept running.
//
// Guests are QEMU processes described by a qemu.Config (see Image.Config)
// and started by hypervisor/qemu (Hypervisor.Start, or qemu.Launch).
package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/sealift/sealift/internal/initramfs"
)

//go:embed agent/main.go
var agentSource []byte

// Modules are the kernel modules the guest loads (with their
// dependencies, resolved by initramfs.AddModules).
var Modules = []string{"virtio_pci", "virtio_net"}

// Image is a bootable guest: kernel and initramfs files.
type Image struct {
	Kernel string // /boot/vmlinuz-<ver>-amd64
	Initrd string // cached gzip cpio with busybox, modules and the agent
}

// Option configures Build.
type Option func(*buildOpts)

type buildOpts struct {
	cacheDir string
	goBin    string
	log      *slog.Logger
}

// WithCacheDir sets where the agent and initramfs are cached (default
// $XDG_CACHE_HOME or ~/.cache, under sealift-guest; else a temp dir).
func WithCacheDir(dir string) Option { return func(o *buildOpts) { o.cacheDir = dir } }

// WithGo sets the go binary used to build the agent (default: "go" from
// PATH, else $GOROOT/bin/go).
func WithGo(bin string) Option { return func(o *buildOpts) { o.goBin = bin } }

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(o *buildOpts) { o.log = l } }

var buildMu sync.Mutex // one build at a time per process

// Build returns the guest image, building the agent (CGO_ENABLED=0) and
// the initramfs unless a cached copy for the same inputs exists. Missing
// host parts (kernel, busybox-static, go) are reported with the apt
// package to install.
func Build(ctx context.Context, opts ...Option) (Image, error) {
	o := buildOpts{log: slog.New(slog.DiscardHandler)}
	for _, f := range opts {
		f(&o)
	}
	if o.cacheDir == "" {
		if d, err := os.UserCacheDir(); err == nil {
			o.cacheDir = filepath.Join(d, "sealift-guest")
		} else {
			o.cacheDir = filepath.Join(os.TempDir(), "sealift-guest")
		}
	}
	vmlinuz, modDir, err := initramfs.Kernel()
	if err != nil {
		return Image{}, err
	}
	goBin, err := findGo(o.goBin)
	if err != nil {
		return Image{}, err
	}
	goVer, err := exec.CommandContext(ctx, goBin, "env", "GOVERSION").Output()
	if err != nil {
		return Image{}, fmt.Errorf("guest: %s env GOVERSION: %w", goBin, err)
	}

	buildMu.Lock()
	defer buildMu.Unlock()
	if err := os.MkdirAll(o.cacheDir, 0o755); err != nil {
		return Image{}, err
	}
	sum := sha256.New()
	fmt.Fprintf(sum, "agent\x00%s\x00%s\x00%s\x00%s\x00%v\x00", agentSource, goVer, initScript(nil), modDir, Modules)
	key := hex.EncodeToString(sum.Sum(nil))[:16]
	img := Image{Kernel: vmlinuz, Initrd: filepath.Join(o.cacheDir, "initrd-"+key+".gz")}
	if _, err := os.Stat(img.Initrd); err == nil {
		return img, nil
	}

	agent, err := buildAgent(ctx, goBin, o.cacheDir, key)
	if err != nil {
		return Image{}, err
	}
	b := initramfs.New()
	if err := b.AddBusybox(); err != nil {
		return Image{}, err
	}
	order, err := b.AddModules(modDir, Modules...)
	if err != nil {
		return Image{}, err
	}
	if err := b.AddHostFile("/bin/sealift-agent", agent, 0o755); err != nil {
		return Image{}, err
	}
	b.AddFile("/init", 0o755, initScript(order))
	tmp, err := os.CreateTemp(o.cacheDir, "initrd-*.tmp")
	if err != nil {
		return Image{}, err
	}
	defer os.Remove(tmp.Name())
	if err := b.Write(tmp); err != nil {
		tmp.Close()
		return Image{}, err
	}
	if err := tmp.Close(); err != nil {
		return Image{}, err
	}
	if err := os.Rename(tmp.Name(), img.Initrd); err != nil {
		return Image{}, err
	}
	o.log.Info("guest image built", "kernel", img.Kernel, "initrd", img.Initrd, "modules", order)
	return img, nil
}

func findGo(bin string) (string, error) {
	if bin != "" {
		return exec.LookPath(bin)
	}
	if p, err := exec.LookPath("go"); err == nil {
		return p, nil
	}
	for _, p := range []string{filepath.Join(runtime.GOROOT(), "bin", "go"), "/usr/local/go/bin/go"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("guest: no go toolchain found to build the agent (PATH, GOROOT, /usr/local/go)")
}

// buildAgent compiles the embedded agent source as a static binary, cached
// under dir by key.
func buildAgent(ctx context.Context, goBin, dir, key string) (string, error) {
	out := filepath.Join(dir, "agent-"+key)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	src, err := os.MkdirTemp(dir, "agent-src-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(src)
	if err := os.WriteFile(filepath.Join(src, "main.go"), agentSource, 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(src, "go.mod"), []byte("module sealiftagent\n\ngo 1.22\n"), 0o644); err != nil {
		return "", err
	}
	tmp := out + ".tmp"
	cmd := exec.CommandContext(ctx, goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", tmp, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "GOWORK=off", "GOFLAGS=", "GOTOOLCHAIN=local")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("guest: build agent: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", err
	}
	return out, nil
}

// initScript is the guest's /init: load modules, configure eth0 from the
// kernel command line, run the agent.
func initScript(modules []string) []byte {
	var b bytes.Buffer
	io.WriteString(&b, `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
`)
	for _, m := range modules {
		fmt.Fprintf(&b, "insmod %s || echo sealift-init: insmod %s failed\n", m, m)
	}
	io.WriteString(&b, `ip=; gw=; ip6=; gw6=
for a in $(cat /proc/cmdline); do
  case "$a" in
    sealift.ip=*) ip="${a#sealift.ip=}" ;;
    sealift.gw=*) gw="${a#sealift.gw=}" ;;
    sealift.ip6=*) ip6="${a#sealift.ip6=}" ;;
    sealift.gw6=*) gw6="${a#sealift.gw6=}" ;;
  esac
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
if [ -n "$ip6" ]; then
  # No duplicate address detection (the address is usable at once, and
  # the moved guest's address is answered for by the source's proxy),
  # no router advertisements (the route is the command line's).
  for k in accept_dad dad_transmits accept_ra; do
    echo 0 > /proc/sys/net/ipv6/conf/eth0/$k
  done
  ip -6 addr add "$ip6" dev eth0 || echo sealift-init: address $ip6 failed
fi
if [ -n "$ip" ]; then
  ip addr add "$ip" dev eth0 || echo sealift-init: address $ip failed
fi
if [ -n "$ip" ] || [ -n "$ip6" ]; then
  ip link set eth0 up
  [ -n "$gw" ] && ip route add default via "$gw"
  [ -n "$gw6" ] && { ip -6 route add default via "$gw6" dev eth0 || echo sealift-init: route via $gw6 failed; }
fi
echo "sealift-init: eth0 $ip gw $gw $ip6 gw6 $gw6"
exec /bin/sealift-agent
`)
	return b.Bytes()
}
