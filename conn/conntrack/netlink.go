package conntrack

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// nlSocket is a raw netlink socket for pipelined requests: many requests go
// out in one sendmsg and their acks are matched back by sequence number,
// which the request/response libraries cannot do.
type nlSocket struct {
	fd  int
	seq uint32
}

// openNetlink opens a netlink socket of proto in the calling thread's
// namespace (the caller runs it inside nsutil.Do).
func openNetlink(proto int) (*nlSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return nil, fmt.Errorf("netlink socket: %w", err)
	}
	// Acks without the echoed request, and room for a whole chunk of them.
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 4<<20); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink bind: %w", err)
	}
	return &nlSocket{fd: fd}, nil
}

func (s *nlSocket) Close() error { return unix.Close(s.fd) }

// nlRequest is one request body (everything after the nlmsghdr).
type nlRequest struct {
	Type  uint16
	Flags uint16
	Body  []byte
}

// chunk is how many requests go out per sendmsg: their acks (one skb of
// ~1 KiB truesize each) must fit in the receive buffer.
const chunk = 256

// pipeline sends reqs (each with NLM_F_ACK) chunk by chunk and returns
// one errno per request (0 for success), matched by sequence number.
func (s *nlSocket) pipeline(reqs []nlRequest) ([]syscall.Errno, error) {
	out := make([]syscall.Errno, len(reqs))
	buf := make([]byte, 0, 64*1024)
	rbuf := make([]byte, 64*1024)
	for start := 0; start < len(reqs); start += chunk {
		end := min(start+chunk, len(reqs))
		base := s.seq + 1
		buf = buf[:0]
		for i := start; i < end; i++ {
			s.seq++
			buf = appendMsg(buf, reqs[i].Type, reqs[i].Flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK, s.seq, reqs[i].Body)
		}
		if err := unix.Sendto(s.fd, buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, fmt.Errorf("netlink send: %w", err)
		}
		pending := end - start
		for pending > 0 {
			n, _, err := unix.Recvfrom(s.fd, rbuf, 0)
			if errors.Is(err, unix.EINTR) {
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("netlink receive: %w", err)
			}
			msgs, err := syscall.ParseNetlinkMessage(rbuf[:n])
			if err != nil {
				return nil, fmt.Errorf("netlink parse: %w", err)
			}
			for _, m := range msgs {
				if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
					continue
				}
				i := int(m.Header.Seq - base)
				if m.Header.Seq < base || i >= end-start {
					continue // a stale ack
				}
				code := int32(binary.NativeEndian.Uint32(m.Data[:4]))
				out[start+i] = syscall.Errno(-code)
				pending--
			}
		}
	}
	return out, nil
}

func appendMsg(b []byte, typ, flags uint16, seq uint32, body []byte) []byte {
	l := unix.NLMSG_HDRLEN + len(body)
	var h [unix.NLMSG_HDRLEN]byte
	binary.NativeEndian.PutUint32(h[0:], uint32(l))
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], seq)
	b = append(b, h[:]...)
	b = append(b, body...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}
