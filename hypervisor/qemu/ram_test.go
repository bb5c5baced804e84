package qemu

import (
	"slices"
	"strconv"
	"strings"
	"testing"
)

// TestArgsRAMSize: QEMU gets a RAM size that is not a multiple of 256 KiB
// (see ramSlackKiB: QEMU 7.2's fast dirty-bitmap sync loses TCG stores).
func TestArgsRAMSize(t *testing.T) {
	for _, mib := range []int{128, 256, 1024} {
		a := Config{Name: "x", MemoryMiB: mib, Kernel: "/k"}.Args(3, false)
		i := slices.Index(a, "-m")
		if i < 0 || i+1 >= len(a) {
			t.Fatalf("no -m in %q", a)
		}
		kib, err := strconv.Atoi(strings.TrimSuffix(a[i+1], "k"))
		if err != nil || !strings.HasSuffix(a[i+1], "k") {
			t.Fatalf("-m %q: want <KiB>k", a[i+1])
		}
		if kib != mib<<10-ramSlackKiB || kib%256 == 0 || kib%8 != 0 {
			t.Fatalf("MemoryMiB %d: -m %dk; want %d KiB, not a multiple of 256 KiB, a multiple of 8 KiB", mib, kib, mib<<10-ramSlackKiB)
		}
	}
}
