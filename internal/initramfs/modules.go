package initramfs

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// modName normalizes a module name ("ghash-generic" and "ghash_generic"
// are the same module).
func modName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// modIndex is modules.dep and modules.builtin of one kernel.
type modIndex struct {
	path    map[string]string   // name → path relative to modDir
	deps    map[string][]string // name → direct and indirect dependencies
	builtin map[string]bool
}

func loadModIndex(modDir string) (*modIndex, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close()
	ix := &modIndex{path: map[string]string{}, deps: map[string][]string{}, builtin: map[string]bool{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		mod, deps, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		n := modName(mod)
		ix.path[n] = mod
		for _, d := range strings.Fields(deps) {
			ix.deps[n] = append(ix.deps[n], modName(d))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("initramfs: read modules.dep: %w", err)
	}
	if data, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for _, l := range strings.Fields(string(data)) {
			ix.builtin[modName(l)] = true
		}
	}
	return ix, nil
}

// AddModules adds the named kernel modules of modDir and everything they
// depend on (from modules.dep) under /lib/modules/<version>/, decompressing
// .ko.xz/.ko.zst/.ko.gz files. It returns the in-archive paths in a valid
// insmod order (dependencies first, each module once). Names built into
// the kernel are skipped; unknown names are an error.
func (b *Builder) AddModules(modDir string, names ...string) ([]string, error) {
	ix, err := loadModIndex(modDir)
	if err != nil {
		return nil, err
	}
	ver := filepath.Base(filepath.Clean(modDir))
	var order []string
	seen := map[string]bool{}
	var visit func(n string, stack []string) error
	visit = func(n string, stack []string) error {
		if seen[n] {
			return nil
		}
		for _, s := range stack {
			if s == n {
				return fmt.Errorf("initramfs: module dependency cycle %v", append(stack, n))
			}
		}
		rel, ok := ix.path[n]
		if !ok {
			if ix.builtin[n] {
				seen[n] = true
				return nil
			}
			return fmt.Errorf("initramfs: module %q not found in %s/modules.dep", n, modDir)
		}
		for _, d := range ix.deps[n] {
			if err := visit(d, append(stack, n)); err != nil {
				return err
			}
		}
		seen[n] = true
		data, err := readModule(filepath.Join(modDir, rel))
		if err != nil {
			return err
		}
		dst := "/lib/modules/" + ver + "/" + modKo(rel)
		b.AddFile(dst, 0o644, data)
		order = append(order, dst)
		return nil
	}
	for _, n := range names {
		if err := visit(modName(n), nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modKo strips a compression suffix from a module path.
func modKo(rel string) string {
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		if strings.HasSuffix(rel, ".ko"+ext) {
			return strings.TrimSuffix(rel, ext)
		}
	}
	return rel
}

// readModule returns the module's ELF bytes, decompressing if needed
// (busybox insmod in the guest cannot be relied on to do it).
func readModule(path string) ([]byte, error) {
	var tool []string
	switch {
	case strings.HasSuffix(path, ".xz"):
		tool = []string{"xz", "-dc", path}
	case strings.HasSuffix(path, ".zst"):
		tool = []string{"zstd", "-dc", path}
	case strings.HasSuffix(path, ".gz"):
		tool = []string{"gzip", "-dc", path}
	default:
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}
		return data, nil
	}
	var stderr bytes.Buffer
	cmd := exec.Command(tool[0], tool[1:]...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("initramfs: decompress %s with %s: %w: %s", path, tool[0], err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}
