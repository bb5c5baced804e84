package initramfs

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// busyboxPaths are where Debian's busybox-static installs the binary.
var busyboxPaths = []string{"/bin/busybox", "/usr/bin/busybox"}

// AddBusybox adds the static busybox as /bin/busybox and a symlink for each
// of its applets (in /bin, /sbin, /usr/bin or /usr/sbin as busybox lists
// them), plus the mount points a busybox /init needs (/proc, /sys, /dev,
// /tmp, /run) and /dev/console. Existing entries, /bin/busybox above all,
// are never overwritten.
func (b *Builder) AddBusybox() error {
	var src string
	for _, p := range busyboxPaths {
		if isStatic(p) {
			src = p
			break
		}
	}
	if src == "" {
		return errNoBusybox
	}
	if err := b.AddHostFile("/bin/busybox", src, 0o755); err != nil {
		return err
	}
	out, err := exec.Command(src, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("initramfs: %s --list-full: %w", src, err)
	}
	for _, line := range strings.Split(string(bytes.TrimSpace(out)), "\n") {
		p := strings.TrimSpace(line)
		if p == "" || b.Has(p) {
			continue
		}
		b.AddSymlink(p, "/bin/busybox")
	}
	for _, d := range []string{"/proc", "/sys", "/dev", "/tmp", "/run"} {
		if !b.Has(d) {
			b.AddDir(d, 0o755)
		}
	}
	if !b.Has("/dev/console") {
		b.AddCharDev("/dev/console", 0o600, 5, 1)
	}
	return nil
}

// isStatic reports whether path is an ELF executable without an interpreter.
func isStatic(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false
		}
	}
	_, err = os.Stat(path)
	return err == nil
}
