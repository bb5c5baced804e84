package fenceconform

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// sinkPort is the UDP port of the Hold check's sinks.
const sinkPort = 9999

// sendRaw sends the IPv4 packet pkt from ns through a raw socket, with
// mark (0: none).
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

// rawTCP builds an IPv4 packet with a 20-byte TCP header (flags), then
// payload, checksums filled in.
func rawTCP(src, dst netip.Addr, flags byte, payload []byte) []byte {
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], 8080)
	binary.BigEndian.PutUint16(l4[2:], 7000)
	l4[12], l4[13] = 5<<4, flags
	binary.BigEndian.PutUint16(l4[14:], 1024)
	l4 = append(l4, payload...)
	pseudo := append(append(src.AsSlice(), dst.AsSlice()...), 0, unix.IPPROTO_TCP, byte(len(l4)>>8), byte(len(l4)))
	binary.BigEndian.PutUint16(l4[16:], lab.Checksum(append(pseudo, l4...)))
	ip := make([]byte, 20)
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_TCP
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(l4)))
	copy(ip[12:], src.AsSlice())
	copy(ip[16:], dst.AsSlice())
	binary.BigEndian.PutUint16(ip[10:], lab.Checksum(ip))
	return append(ip, l4...)
}

// sendUDP sends one datagram msg from ns to dst.
func sendUDP(ns string, dst netip.AddrPort, msg string) error {
	return nsutil.Do(ns, func() error {
		c, err := net.Dial("udp", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte(msg))
		return err
	})
}

// udpSink listens on the VM's address, port sinkPort, in ns; the
// returned function collects the payloads that arrive within d (after
// those already queued).
func udpSink(t testing.TB, ns string) func(d time.Duration) []string {
	t.Helper()
	var c net.PacketConn
	require.NoError(t, nsutil.Do(ns, func() (err error) {
		c, err = net.ListenPacket("udp", netip.AddrPortFrom(lab.VMAddr, sinkPort).String())
		return err
	}))
	t.Cleanup(func() { c.Close() })
	return func(d time.Duration) []string {
		var got []string
		// At least a moment: a deadline already past reports a timeout
		// even with datagrams queued.
		_ = c.SetReadDeadline(time.Now().Add(max(d, 20*time.Millisecond)))
		buf := make([]byte, 1500)
		for {
			n, _, err := c.ReadFrom(buf)
			if err != nil {
				return got
			}
			got = append(got, string(buf[:n]))
		}
	}
}
