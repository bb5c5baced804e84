package klab

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/sealift/sealift/internal/initramfs"
)

// imageVersion changes whenever the base image's layout changes, so stale
// cached images are not reused.
const imageVersion = "klab-base-1"

// baseMu serializes building the base image within one process; separate
// processes are kept apart by writing to a temp file and renaming.
var baseMu sync.Mutex

// baseImage returns the path of the cached base initramfs (busybox and
// modules, with /klab/modules listing the insmod order) for modDir and
// the extra modules, building it if needed.
func baseImage(modDir string, extra []string) (string, error) {
	baseMu.Lock()
	defer baseMu.Unlock()
	required := append(append([]string{}, DefaultModules...), extra...)
	h := sha256.New()
	fmt.Fprintf(h, "%s\n%s\n%s\n%s\n", imageVersion, modDir, strings.Join(required, ","), strings.Join(OptionalModules, ","))
	for _, f := range []string{"/bin/busybox", filepath.Join(modDir, "modules.dep")} {
		if st, err := os.Stat(f); err == nil {
			fmt.Fprintf(h, "%s %d %d\n", f, st.Size(), st.ModTime().UnixNano())
		}
	}
	dir := filepath.Join(os.TempDir(), "sealift-klab")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("klab: %w", err)
	}
	path := filepath.Join(dir, "base-"+hex.EncodeToString(h.Sum(nil))[:16]+".cpio.gz")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}

	b := initramfs.New()
	if err := b.AddBusybox(); err != nil {
		return "", err
	}
	order, err := b.AddModules(modDir, required...)
	if err != nil {
		return "", err
	}
	var list bytes.Buffer
	for _, m := range order {
		fmt.Fprintf(&list, "%s\n", m)
	}
	// Optional modules: resolve one by one so a missing one drops only itself.
	for _, m := range OptionalModules {
		opt, err := b.AddModules(modDir, m)
		if err != nil {
			continue
		}
		for _, p := range opt {
			if !bytes.Contains(list.Bytes(), []byte(p+"\n")) {
				fmt.Fprintf(&list, "%s optional\n", p)
			}
		}
	}
	b.AddFile("/klab/modules", 0o644, list.Bytes())
	tmp, err := os.CreateTemp(dir, "base-*.tmp")
	if err != nil {
		return "", fmt.Errorf("klab: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := b.Write(tmp); err != nil {
		tmp.Close()
		return "", err
	}
	// Pad to 4 bytes so an archive appended later starts aligned; the
	// kernel silently ignores a misaligned appended archive.
	st, err := tmp.Stat()
	if err == nil && st.Size()%4 != 0 {
		_, err = tmp.Write(make([]byte, 4-st.Size()%4))
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return "", fmt.Errorf("klab: write base image: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return "", fmt.Errorf("klab: %w", err)
	}
	return path, nil
}

// initScript is the guest's /init: mounts, module loading, the test
// binary, the exit marker, power off.
func initScript(args, env []string) string {
	var s strings.Builder
	s.WriteString(`#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root TMPDIR=/tmp
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs run /run
mkdir -p /var /root /run/netns
ln -s /run /var/run
ip link set lo up
while read m opt; do
	if ! insmod "$m" 2>/tmp/insmod.err; then
		if [ -z "$opt" ] && ! grep -q 'File exists' /tmp/insmod.err; then
			echo "` + markerInsmod + `$m: $(cat /tmp/insmod.err)"
		fi
	fi
done < /klab/modules
cd /klab/pkg
`)
	for _, e := range env {
		s.WriteString("export " + shellQuote(e) + "\n")
	}
	s.WriteString("/klab/test.bin")
	for _, a := range args {
		s.WriteString(" " + shellQuote(a))
	}
	s.WriteString("\necho \"" + markerExit + "$?\"\npoweroff -f\n")
	return s.String()
}

// shellQuote quotes s for /bin/sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

const (
	markerExit   = "KLAB-EXIT:"
	markerInsmod = "KLAB-INSMOD-FAILED:"
)
