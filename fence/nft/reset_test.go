package nft

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// What fence.ResetMark opens, and nothing more: host A sends packets to
// the fenced VM (AllowVia up0) from a raw socket. Only a marked,
// payload-free TCP ACK or RST arrives; with a payload, another flag,
// another protocol or without the mark it is dropped by the fence.
func TestResetMarkOpensOnlyResets(t *testing.T) {
	w := newWorld(t, false)
	ctx := context.Background()
	f := New(WithHost(w.A))
	spec := w.Spec()
	spec.AllowVia = []string{"up0"}
	require.NoError(t, f.Fence(ctx, spec))

	cases := []struct {
		name    string
		mark    uint32
		proto   byte
		flags   byte
		payload string
		arrives bool
	}{
		{"marked ACK", fence.ResetMark, unix.IPPROTO_TCP, 0x10, "", true},
		{"marked RST", fence.ResetMark, unix.IPPROTO_TCP, 0x04, "", true},
		{"marked RST+ACK", fence.ResetMark, unix.IPPROTO_TCP, 0x14, "", true},
		{"marked ACK with data", fence.ResetMark, unix.IPPROTO_TCP, 0x10, "SEALIFT-DATA", false},
		{"marked PSH+ACK", fence.ResetMark, unix.IPPROTO_TCP, 0x18, "", false},
		{"marked SYN", fence.ResetMark, unix.IPPROTO_TCP, 0x02, "", false},
		{"marked UDP", fence.ResetMark, unix.IPPROTO_UDP, 0, "", false},
		{"unmarked ACK", 0, unix.IPPROTO_TCP, 0x10, "", false},
		{"other mark", fence.ResetMark + 1, unix.IPPROTO_TCP, 0x10, "", false},
	}
	for _, c := range cases {
		capt, err := lab.StartCapture(w.VM, "eth0", nil)
		require.NoError(t, err)
		before := dropped(t, f, "vm-1")
		err = sendRaw(w.A, c.mark, rawPacket(lab.Peer2Addr, lab.VMAddr, c.proto, c.flags, []byte(c.payload)))
		if c.arrives {
			require.NoError(t, err, c.name)
			assert.Eventually(t, func() bool { return capt.Snapshot().ByProto[c.proto] > 0 }, 5*time.Second, 10*time.Millisecond,
				"%s: did not reach the VM", c.name)
		} else {
			// Dropped in the output hook: sendto fails with EPERM.
			assert.ErrorIs(t, err, unix.EPERM, c.name)
			assert.Greater(t, dropped(t, f, "vm-1"), before, "%s: the fence did not drop it", c.name)
		}
		st := capt.Stop()
		if !c.arrives {
			assert.Zero(t, st.ByProto[c.proto], "%s reached the VM", c.name)
		}
	}
}

func sendRaw(ns string, mark uint32, pkt []byte) error {
	dst := [4]byte(pkt[16:20])
	return nsutil.Do(ns, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if mark != 0 {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
				return err
			}
		}
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst})
	})
}

// rawPacket builds an IPv4 packet with a 20-byte TCP header (flags) or
// an 8-byte UDP header, then payload; checksums filled in.
func rawPacket(src, dst netip.Addr, proto, flags byte, payload []byte) []byte {
	var l4 []byte
	if proto == unix.IPPROTO_TCP {
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], 8080)
		binary.BigEndian.PutUint16(l4[2:], 7000)
		l4[12], l4[13] = 5<<4, flags
		binary.BigEndian.PutUint16(l4[14:], 1024)
	} else {
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], 8080)
		binary.BigEndian.PutUint16(l4[2:], 7001)
		binary.BigEndian.PutUint16(l4[4:], uint16(8+len(payload)))
	}
	l4 = append(l4, payload...)
	pseudo := append(append(src.AsSlice(), dst.AsSlice()...), 0, proto, byte(len(l4)>>8), byte(len(l4)))
	sum := csum(append(pseudo, l4...))
	if proto == unix.IPPROTO_TCP {
		binary.BigEndian.PutUint16(l4[16:], sum)
	} else {
		binary.BigEndian.PutUint16(l4[6:], sum)
	}
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, proto
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], csum(ip))
	return append(ip, l4...)
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}
