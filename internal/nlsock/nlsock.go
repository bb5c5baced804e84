// Package nlsock is a raw netlink socket for what the request/response
// netlink libraries cannot do: many requests pipelined in one sendmsg with
// their acks matched back by sequence number, and a plain dump loop. The
// connection auditors (conn/conntrack, conn/sockdiag) use it to delete
// conntrack entries and to list and destroy sockets.
package nlsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// Socket is a raw netlink socket of one protocol, bound in the namespace
// it was opened in. It is not safe for concurrent use.
type Socket struct {
	fd  int
	seq uint32
}

// Open opens a netlink socket of proto (e.g. unix.NETLINK_SOCK_DIAG) in
// the calling thread's namespace (the caller runs it inside nsutil.Do or
// nsutil.DoHandle to pick another one).
func Open(proto int) (*Socket, error) {
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
	return &Socket{fd: fd}, nil
}

// Close closes the socket.
func (s *Socket) Close() error { return unix.Close(s.fd) }

// Request is one netlink request: its message type, its flags (Pipeline
// adds NLM_F_REQUEST and NLM_F_ACK) and its body (everything after the
// nlmsghdr).
type Request struct {
	Type  uint16
	Flags uint16
	Body  []byte
}

// chunk is how many requests go out per sendmsg: their acks (one skb of
// ~1 KiB truesize each) must fit in the receive buffer.
const chunk = 256

// Pipeline sends reqs (each with NLM_F_ACK) chunk by chunk and returns
// one errno per request (0 for success), matched by sequence number.
func (s *Socket) Pipeline(reqs []Request) ([]syscall.Errno, error) {
	out := make([]syscall.Errno, len(reqs))
	buf := make([]byte, 0, 64*1024)
	rbuf := make([]byte, 64*1024)
	for start := 0; start < len(reqs); start += chunk {
		end := min(start+chunk, len(reqs))
		base := s.seq + 1
		buf = buf[:0]
		for i := start; i < end; i++ {
			s.seq++
			buf = AppendMsg(buf, reqs[i].Type, reqs[i].Flags|unix.NLM_F_REQUEST|unix.NLM_F_ACK, s.seq, reqs[i].Body)
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

// PipelineAt opens a socket of proto in the namespace ns, runs
// Pipeline(reqs) on it and closes it.
func PipelineAt(ns netns.NsHandle, proto int, reqs []Request) ([]syscall.Errno, error) {
	var errnos []syscall.Errno
	err := nsutil.DoHandle(ns, func() error {
		s, err := Open(proto)
		if err != nil {
			return err
		}
		defer s.Close()
		errnos, err = s.Pipeline(reqs)
		return err
	})
	return errnos, err
}

// Dump sends one dump request (NLM_F_REQUEST|NLM_F_DUMP) of type typ with
// body and calls fn with every reply's body until NLMSG_DONE. An error fn
// returns ends the dump and is returned as it is.
func (s *Socket) Dump(typ uint16, body []byte, fn func(data []byte) error) error {
	s.seq++
	seq := s.seq
	b := AppendMsg(nil, typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, body)
	if err := unix.Sendto(s.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("netlink send: %w", err)
	}
	rbuf := make([]byte, 256*1024)
	for {
		n, _, err := unix.Recvfrom(s.fd, rbuf, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(rbuf[:n])
		if err != nil {
			return fmt.Errorf("netlink parse: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data[:4])); code != 0 {
						return fmt.Errorf("netlink dump: %w", syscall.Errno(-code))
					}
				}
				return nil
			}
			if err := fn(m.Data); err != nil {
				return err
			}
		}
	}
}

// AppendMsg appends to b one netlink message: a header (length, typ,
// flags, seq; port id 0) and body, padded to the 4-byte alignment.
func AppendMsg(b []byte, typ, flags uint16, seq uint32, body []byte) []byte {
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
