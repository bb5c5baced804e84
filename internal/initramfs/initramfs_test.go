package initramfs

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/lab"
)

// readArchive decodes a gzip newc archive into path → (mode, data).
func readArchive(t *testing.T, r io.Reader) (map[string]uint32, map[string][]byte, []string) {
	t.Helper()
	zr, err := gzip.NewReader(r)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	modes, datas := map[string]uint32{}, map[string][]byte{}
	var order []string
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("bad header field %d at %d: %v", i, off, err)
		}
		return uint32(v)
	}
	align := func(n int) int { return (n + 3) &^ 3 }
	for {
		if string(raw[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d: %q", off, raw[off:off+6])
		}
		mode, size, nameLen := field(1), int(field(6)), int(field(11))
		name := string(raw[off+110 : off+110+nameLen-1])
		off = align(off + 110 + nameLen)
		if name == "TRAILER!!!" {
			break
		}
		modes[name] = mode
		datas[name] = raw[off : off+size]
		order = append(order, name)
		off = align(off + size)
	}
	return modes, datas, order
}

func TestArchiveLayout(t *testing.T) {
	b := New()
	b.AddFile("/etc/hello", 0o600, []byte("hi"))
	b.AddFile("init", 0o755, []byte("#!/bin/sh\n"))
	b.AddSymlink("/bin/sh", "busybox")
	b.AddCharDev("/dev/console", 0o600, 5, 1)
	var buf bytes.Buffer
	if err := b.Write(&buf); err != nil {
		t.Fatal(err)
	}
	modes, datas, order := readArchive(t, &buf)
	want := map[string]uint32{
		"bin": 0o40755, "bin/sh": 0o120777, "dev": 0o40755, "dev/console": 0o20600,
		"etc": 0o40755, "etc/hello": 0o100600, "init": 0o100755,
	}
	for p, m := range want {
		if modes[p] != m {
			t.Errorf("%s: mode %o, want %o", p, modes[p], m)
		}
	}
	if len(modes) != len(want) {
		t.Errorf("archive holds %v, want %d entries", order, len(want))
	}
	if string(datas["etc/hello"]) != "hi" || string(datas["bin/sh"]) != "busybox" {
		t.Errorf("contents: hello=%q sh=%q", datas["etc/hello"], datas["bin/sh"])
	}
	idx := map[string]int{}
	for i, p := range order {
		idx[p] = i
	}
	if idx["etc"] > idx["etc/hello"] {
		t.Errorf("directory after its child: %v", order)
	}
}

func TestAddModulesOrder(t *testing.T) {
	_, modDir, err := Kernel()
	if err != nil {
		lab.Missing(t, err.Error())
	}
	b := New()
	order, err := b.AddModules(modDir, "esp4", "xfrm_user", "wireguard")
	if err != nil {
		t.Fatal(err)
	}
	pos := map[string]int{}
	for i, p := range order {
		n := modName(p)
		if _, dup := pos[n]; dup {
			t.Errorf("%s twice in %v", n, order)
		}
		pos[n] = i
	}
	for _, dep := range [][2]string{{"xfrm_algo", "esp4"}, {"xfrm_algo", "xfrm_user"}, {"libcurve25519_generic", "wireguard"}, {"udp_tunnel", "wireguard"}} {
		a, ok1 := pos[dep[0]]
		c, ok2 := pos[dep[1]]
		if !ok1 || !ok2 || a > c {
			t.Errorf("%s must come before %s: %v", dep[0], dep[1], order)
		}
	}
	if _, err := b.AddModules(modDir, "no_such_module_x"); err == nil || !strings.Contains(err.Error(), "no_such_module_x") {
		t.Errorf("unknown module: err %v", err)
	}
}

// TestBootTrivialInit boots Debian's kernel on the archive with a busybox
// /init that loads modules (in AddModules' order) and prints a marker.
func TestBootTrivialInit(t *testing.T) {
	vmlinuz, modDir, err := Kernel()
	if err != nil {
		lab.Missing(t, err.Error())
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		lab.Missing(t, "qemu-system-x86_64 (apt package qemu-system-x86)")
	}
	b := New()
	if err := b.AddBusybox(); err != nil {
		lab.Missing(t, err.Error())
	}
	order, err := b.AddModules(modDir, "veth", "esp4")
	if err != nil {
		t.Fatal(err)
	}
	b.AddCharDev("/dev/console", 0o600, 5, 1)
	script := "#!/bin/sh\nmount -t proc proc /proc\n"
	for _, m := range order {
		script += "insmod " + m + " || echo INSMOD-FAILED " + m + "\n"
	}
	script += "ip link add v0 type veth peer name v1 && echo VETH-OK\n"
	script += "echo BOOT-MARKER $(grep -c . /proc/modules)\npoweroff -f\n"
	b.AddFile("/init", 0o755, []byte(script))
	img := filepath.Join(t.TempDir(), "initrd.gz")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Write(f); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256",
		"-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
		"-kernel", vmlinuz, "-initrd", img, "-append", "console=ttyS0 panic=-1 quiet")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("qemu: %v\n%s", err, out)
	}
	var marker string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if strings.HasPrefix(l, "INSMOD-FAILED") {
			t.Errorf("guest: %s", l)
		}
		if strings.HasPrefix(l, "BOOT-MARKER") {
			marker = l
		}
	}
	if marker != fmt.Sprintf("BOOT-MARKER %d", len(order)) {
		t.Fatalf("marker %q, want %d modules loaded; output:\n%s", marker, len(order), out)
	}
	if !bytes.Contains(out, []byte("VETH-OK")) {
		t.Fatalf("veth module not usable; output:\n%s", out)
	}
	t.Logf("booted, %d modules loaded: %v", len(order), order)
}

// TestAddModulesCompressed resolves dependencies in a synthetic module
// tree and decompresses .ko.xz files.
func TestAddModulesCompressed(t *testing.T) {
	xz, err := exec.LookPath("xz")
	if err != nil {
		lab.Missing(t, "xz (apt package xz-utils)")
	}
	dir := filepath.Join(t.TempDir(), "9.9.9-test")
	if err := os.MkdirAll(filepath.Join(dir, "kernel"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(rel, content string) {
		p := filepath.Join(dir, rel)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("kernel/base.ko", "BASE")
	write("kernel/mid-dash.ko", "MID")
	if out, err := exec.Command(xz, "-k", filepath.Join(dir, "kernel/mid-dash.ko")).CombinedOutput(); err != nil {
		t.Fatalf("xz: %v %s", err, out)
	}
	os.Remove(filepath.Join(dir, "kernel/mid-dash.ko"))
	write("kernel/top.ko", "TOP")
	write("modules.dep", "kernel/top.ko: kernel/mid-dash.ko.xz kernel/base.ko\nkernel/mid-dash.ko.xz: kernel/base.ko\nkernel/base.ko:\n")
	write("modules.builtin", "kernel/builtin_one.ko\n")
	b := New()
	order, err := b.AddModules(dir, "top", "builtin-one", "base")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"/lib/modules/9.9.9-test/kernel/base.ko", "/lib/modules/9.9.9-test/kernel/mid-dash.ko", "/lib/modules/9.9.9-test/kernel/top.ko"}
	if fmt.Sprint(order) != fmt.Sprint(want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	var buf bytes.Buffer
	if err := b.Write(&buf); err != nil {
		t.Fatal(err)
	}
	_, datas, _ := readArchive(t, &buf)
	if got := string(datas["lib/modules/9.9.9-test/kernel/mid-dash.ko"]); got != "MID" {
		t.Fatalf("decompressed module = %q, want MID", got)
	}
}
