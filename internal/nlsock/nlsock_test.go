package nlsock_test

import (
	"encoding/binary"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nlsock"
	"github.com/sealift/sealift/internal/nsutil"
)

// TestAppendMsg: the header holds the unpadded length, type, flags and
// sequence number; the message is padded to 4 bytes and appended.
func TestAppendMsg(t *testing.T) {
	b := nlsock.AppendMsg([]byte{0xaa, 0xbb, 0xcc, 0xdd}, 0x1234, 0x0305, 77, []byte{1, 2, 3, 4, 5})
	if len(b) != 4+unix.NLMSG_HDRLEN+8 {
		t.Fatalf("len = %d, want %d", len(b), 4+unix.NLMSG_HDRLEN+8)
	}
	if b[0] != 0xaa || b[3] != 0xdd {
		t.Fatalf("prefix overwritten: % x", b[:4])
	}
	m := b[4:]
	if l := binary.NativeEndian.Uint32(m[0:]); l != unix.NLMSG_HDRLEN+5 {
		t.Errorf("nlmsg_len = %d, want %d", l, unix.NLMSG_HDRLEN+5)
	}
	if typ, flags := binary.NativeEndian.Uint16(m[4:]), binary.NativeEndian.Uint16(m[6:]); typ != 0x1234 || flags != 0x0305 {
		t.Errorf("type %#x flags %#x", typ, flags)
	}
	if seq, pid := binary.NativeEndian.Uint32(m[8:]), binary.NativeEndian.Uint32(m[12:]); seq != 77 || pid != 0 {
		t.Errorf("seq %d pid %d", seq, pid)
	}
	if got := m[unix.NLMSG_HDRLEN:]; string(got) != string([]byte{1, 2, 3, 4, 5, 0, 0, 0}) {
		t.Errorf("body % x", got)
	}
}

// addrReq is an RTM_NEWADDR body: a /32 on lo.
func addrReq(a netip.Addr) []byte {
	b := make([]byte, unix.SizeofIfAddrmsg, unix.SizeofIfAddrmsg+8)
	b[0], b[1] = unix.AF_INET, 32
	binary.NativeEndian.PutUint32(b[4:], 1) // lo
	var h [4]byte
	binary.NativeEndian.PutUint16(h[0:], 8)
	binary.NativeEndian.PutUint16(h[2:], unix.IFA_LOCAL)
	ip := a.As4()
	return append(append(b, h[:]...), ip[:]...)
}

// TestPipelineAndDump in a fresh namespace: 700 RTM_NEWADDR requests
// (three sendmsg chunks), every third one repeating the address before
// it, come back with one errno each in request order (0 or EEXIST); a
// request the kernel rejects (no such link) gets its own errno; an
// RTM_GETADDR dump then sees exactly the addresses that were added.
func TestPipelineAndDump(t *testing.T) {
	lab.RequireRoot(t)
	ns := lab.NewPrefix() + "-nl"
	if err := lab.AddNS(ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = lab.Exec("", "ip", "netns", "del", ns) })
	if out, err := lab.Exec(ns, "ip", "link", "set", "lo", "up"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	h, err := nsutil.Open(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()

	const n = 700
	var reqs []nlsock.Request
	want := make([]syscall.Errno, 0, n+1)
	added := map[netip.Addr]bool{}
	for i := range n {
		k := i
		if i%3 == 2 {
			k = i - 1 // the same address again
		}
		a := netip.AddrFrom4([4]byte{10, 9, byte(k >> 8), byte(k)})
		reqs = append(reqs, nlsock.Request{Type: unix.RTM_NEWADDR, Flags: unix.NLM_F_CREATE | unix.NLM_F_EXCL, Body: addrReq(a)})
		if added[a] {
			want = append(want, unix.EEXIST)
		} else {
			want = append(want, 0)
		}
		added[a] = true
	}
	bad := make([]byte, unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(bad[4:], 99999) // no such ifindex
	reqs = append(reqs, nlsock.Request{Type: unix.RTM_DELLINK, Body: bad})
	want = append(want, unix.ENODEV)

	got, err := nlsock.PipelineAt(h, unix.NETLINK_ROUTE, reqs)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d errnos for %d requests", len(got), len(want))
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("request %d: errno %v, want %v", i, got[i], want[i])
		}
	}

	listed := map[netip.Addr]bool{}
	err = nsutil.DoHandle(h, func() error {
		s, err := nlsock.Open(unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		defer s.Close()
		req := make([]byte, unix.SizeofIfAddrmsg)
		req[0] = unix.AF_INET
		return s.Dump(unix.RTM_GETADDR, req, func(data []byte) error {
			attrs, err := syscall.ParseNetlinkRouteAttr(&syscall.NetlinkMessage{
				Header: syscall.NlMsghdr{Type: unix.RTM_NEWADDR}, Data: data})
			if err != nil {
				return err
			}
			for _, a := range attrs {
				if a.Attr.Type == unix.IFA_LOCAL && len(a.Value) == 4 {
					listed[netip.AddrFrom4([4]byte(a.Value))] = true
				}
			}
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	for a := range added {
		if !listed[a] {
			t.Errorf("dump: %v missing", a)
		}
	}
	if len(listed) != len(added)+1 || !listed[netip.MustParseAddr("127.0.0.1")] {
		t.Errorf("dump: %d addresses, want %d and 127.0.0.1", len(listed), len(added)+1)
	}
}
