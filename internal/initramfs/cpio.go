// Package initramfs builds gzip-compressed newc cpio archives for booting
// Debian's kernel in a QEMU guest: a static busybox, kernel modules with
// their dependencies, and whatever files a test puts in.
package initramfs

import (
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
)

// entry is one archive member.
type entry struct {
	mode         uint32 // unix mode including the file type bits
	data         []byte // file contents or symlink target
	rmaj, rmin   uint32 // device numbers for device nodes
	explicitMode bool
}

// Builder collects files and writes them as one newc cpio archive.
// Parent directories are created implicitly (mode 0755). A later Add for
// the same path replaces the earlier one.
type Builder struct {
	entries map[string]*entry
}

// New returns an empty Builder.
func New() *Builder { return &Builder{entries: map[string]*entry{}} }

// clean turns dst into an archive path without a leading slash.
func clean(dst string) string {
	return strings.TrimPrefix(path.Clean("/"+dst), "/")
}

// unixMode converts an os.FileMode into unix st_mode bits.
func unixMode(m os.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&os.ModeSetuid != 0 {
		u |= syscall.S_ISUID
	}
	if m&os.ModeSetgid != 0 {
		u |= syscall.S_ISGID
	}
	if m&os.ModeSticky != 0 {
		u |= syscall.S_ISVTX
	}
	switch {
	case m&os.ModeDir != 0:
		u |= syscall.S_IFDIR
	case m&os.ModeSymlink != 0:
		u |= syscall.S_IFLNK
	case m&os.ModeCharDevice != 0:
		u |= syscall.S_IFCHR
	case m&os.ModeDevice != 0:
		u |= syscall.S_IFBLK
	case m&os.ModeNamedPipe != 0:
		u |= syscall.S_IFIFO
	default:
		u |= syscall.S_IFREG
	}
	return u
}

// AddFile puts data at dst with mode (os.ModeDir makes a directory,
// os.ModeSymlink a symlink whose target is data).
func (b *Builder) AddFile(dst string, mode os.FileMode, data []byte) {
	b.entries[clean(dst)] = &entry{mode: unixMode(mode), data: data, explicitMode: true}
}

// AddDir creates the directory dst with mode perm.
func (b *Builder) AddDir(dst string, perm os.FileMode) {
	b.AddFile(dst, os.ModeDir|perm.Perm(), nil)
}

// AddSymlink creates dst as a symlink pointing to target.
func (b *Builder) AddSymlink(dst, target string) {
	b.AddFile(dst, os.ModeSymlink|0o777, []byte(target))
}

// AddCharDev creates the character device node dst (e.g. /dev/console 5:1).
func (b *Builder) AddCharDev(dst string, perm os.FileMode, major, minor uint32) {
	b.entries[clean(dst)] = &entry{mode: unixMode(os.ModeDevice | os.ModeCharDevice | perm.Perm()), rmaj: major, rmin: minor, explicitMode: true}
}

// AddHostFile copies the host file src into the archive at dst with mode.
func (b *Builder) AddHostFile(dst, src string, mode os.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("initramfs: add %s: %w", dst, err)
	}
	b.AddFile(dst, mode, data)
	return nil
}

// Has reports whether dst is already in the archive.
func (b *Builder) Has(dst string) bool {
	_, ok := b.entries[clean(dst)]
	return ok
}

// Write writes the gzip-compressed newc archive to w. Directories come
// before their contents; the output is deterministic.
func (b *Builder) Write(w io.Writer) error {
	all := map[string]*entry{}
	for p, e := range b.entries {
		all[p] = e
		for d := path.Dir(p); d != "." && d != "/"; d = path.Dir(d) {
			if _, ok := all[d]; !ok {
				if _, ok := b.entries[d]; !ok {
					all[d] = &entry{mode: syscall.S_IFDIR | 0o755}
				}
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		if p == "" || p == "." {
			continue
		}
		names = append(names, p)
	}
	// Sorting by path puts every directory before its children, because a
	// parent path is a strict prefix of its children's paths.
	sort.Strings(names)

	zw := gzip.NewWriter(w)
	cw := &cpioWriter{w: zw}
	for i, n := range names {
		e := all[n]
		nlink := uint32(1)
		if e.mode&syscall.S_IFMT == syscall.S_IFDIR {
			nlink = 2
		}
		if err := cw.header(uint32(i+1), e.mode, nlink, uint32(len(e.data)), e.rmaj, e.rmin, n); err != nil {
			return err
		}
		if err := cw.body(e.data); err != nil {
			return err
		}
	}
	if err := cw.header(0, 0, 1, 0, 0, 0, "TRAILER!!!"); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("initramfs: gzip: %w", err)
	}
	return nil
}

// cpioWriter writes newc records and tracks the offset for padding.
type cpioWriter struct {
	w   io.Writer
	off int64
	err error
}

func (c *cpioWriter) write(p []byte) error {
	if c.err != nil {
		return c.err
	}
	n, err := c.w.Write(p)
	c.off += int64(n)
	if err != nil {
		c.err = fmt.Errorf("initramfs: write: %w", err)
	}
	return c.err
}

func (c *cpioWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *cpioWriter) header(ino, mode, nlink, size, rmaj, rmin uint32, name string) error {
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, rmaj, rmin, len(name)+1, 0)
	if err := c.write([]byte(h + name + "\x00")); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) body(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	if err := c.write(data); err != nil {
		return err
	}
	return c.pad()
}
