package initramfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Kernel finds Debian's kernel image (/boot/vmlinuz-*-amd64) and its module
// directory (/lib/modules/<version>). With several kernels installed the
// newest (by name) with a module directory wins. The error names the apt
// package to install when none is found.
func Kernel() (vmlinuz, modDir string, err error) {
	images, _ := filepath.Glob("/boot/vmlinuz-*-amd64")
	sort.Sort(sort.Reverse(sort.StringSlice(images)))
	for _, img := range images {
		ver := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		dir := filepath.Join("/lib/modules", ver)
		if _, err := os.Stat(filepath.Join(dir, "modules.dep")); err == nil {
			return img, dir, nil
		}
	}
	if len(images) > 0 {
		return "", "", fmt.Errorf("initramfs: %s has no /lib/modules/<version>/modules.dep (reinstall apt package linux-image-amd64): %w", images[0], os.ErrNotExist)
	}
	return "", "", fmt.Errorf("initramfs: no /boot/vmlinuz-*-amd64 (install apt package linux-image-amd64): %w", os.ErrNotExist)
}

// errNoBusybox is returned when the static busybox is missing.
var errNoBusybox = errors.New("initramfs: /bin/busybox is missing or not static (install apt package busybox-static)")
