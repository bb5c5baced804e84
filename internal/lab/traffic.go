package lab

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// ReplyTimeout bounds each wait of SendTCP and SendUDP (connect, and each
// reply): traffic that does not come back within it counts as lost.
const ReplyTimeout = 1 * time.Second

// Echo is an echo server (TCP or UDP) running in a namespace. It counts
// what it received, so tests can count delivery at the receiver.
type Echo struct {
	closers []io.Closer
	mu      sync.Mutex
	conns   map[net.Conn]struct{}
	closed  bool
	wg      sync.WaitGroup
	msgs    atomic.Int64 // UDP datagrams or TCP reads
	bytes   atomic.Int64
	accepts atomic.Int64
}

// Received returns the datagrams (UDP) or reads (TCP) and bytes received.
func (e *Echo) Received() (msgs, bytes int) { return int(e.msgs.Load()), int(e.bytes.Load()) }

// Accepted returns the number of TCP connections accepted (0 for UDP).
func (e *Echo) Accepted() int { return int(e.accepts.Load()) }

// Close stops the server and waits for its goroutines.
func (e *Echo) Close() {
	e.mu.Lock()
	e.closed = true
	for _, c := range e.closers {
		c.Close()
	}
	for c := range e.conns {
		c.Close()
	}
	e.mu.Unlock()
	e.wg.Wait()
}

// StartTCPEcho listens on addr (host:port) in ns and echoes every byte.
func StartTCPEcho(ns, addr string) (*Echo, error) {
	var ln net.Listener
	if err := nsutil.Do(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		return nil, fmt.Errorf("tcp echo %s %s: %w", ns, addr, err)
	}
	e := &Echo{closers: []io.Closer{ln}, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			e.accepts.Add(1)
			e.mu.Lock()
			if e.closed {
				e.mu.Unlock()
				c.Close()
				return
			}
			e.conns[c] = struct{}{}
			e.wg.Add(1)
			e.mu.Unlock()
			go func() {
				defer e.wg.Done()
				defer func() { e.mu.Lock(); delete(e.conns, c); e.mu.Unlock(); c.Close() }()
				buf := make([]byte, 64<<10)
				for {
					n, err := c.Read(buf)
					if n > 0 {
						e.msgs.Add(1)
						e.bytes.Add(int64(n))
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return e, nil
}

// StartUDPEcho listens on addr (host:port) in ns and sends every datagram
// back to its source.
func StartUDPEcho(ns, addr string) (*Echo, error) {
	var pc net.PacketConn
	if err := nsutil.Do(ns, func() (err error) { pc, err = net.ListenPacket("udp", addr); return }); err != nil {
		return nil, fmt.Errorf("udp echo %s %s: %w", ns, addr, err)
	}
	e := &Echo{closers: []io.Closer{pc}, conns: map[net.Conn]struct{}{}}
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			e.msgs.Add(1)
			e.bytes.Add(int64(n))
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	return e, nil
}

// ServeEcho runs a TCP echo server on addr in ns until stop is called.
func ServeEcho(ns, addr string) (stop func(), err error) {
	e, err := StartTCPEcho(ns, addr)
	if err != nil {
		return nil, err
	}
	return e.Close, nil
}

// ServeUDPEcho runs a UDP echo server on addr in ns until stop is called.
func ServeUDPEcho(ns, addr string) (stop func(), err error) {
	e, err := StartUDPEcho(ns, addr)
	if err != nil {
		return nil, err
	}
	return e.Close, nil
}

// SendTCP connects from ns to addr, sends payload n times, each time
// waiting (ReplyTimeout) for the echo, and returns how many came back.
// A connection that cannot be made returns 0 and the error; a reply that
// does not come back ends the run with the replies so far and an error.
func SendTCP(ns, addr string, payload []byte, n int) (replies int, err error) {
	if len(payload) == 0 {
		return 0, errors.New("SendTCP: empty payload")
	}
	var c net.Conn
	if err := nsutil.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, ReplyTimeout); return }); err != nil {
		return 0, fmt.Errorf("tcp %s -> %s: %w", ns, addr, err)
	}
	defer c.Close()
	got := make([]byte, len(payload))
	for i := 0; i < n; i++ {
		_ = c.SetDeadline(time.Now().Add(ReplyTimeout))
		if _, err := c.Write(payload); err != nil {
			return replies, fmt.Errorf("tcp %s -> %s: write %d: %w", ns, addr, i, err)
		}
		if _, err := io.ReadFull(c, got); err != nil {
			return replies, fmt.Errorf("tcp %s -> %s: reply %d: %w", ns, addr, i, err)
		}
		if !bytes.Equal(got, payload) {
			return replies, fmt.Errorf("tcp %s -> %s: reply %d differs from payload", ns, addr, i)
		}
		replies++
	}
	return replies, nil
}

// SendUDP sends payload n times from ns to addr, one datagram at a time,
// waiting up to ReplyTimeout for each echo, and returns how many came
// back. The socket is unconnected, so an echo from another address of
// the server (a multi-homed or renumbered host) counts too. Lost replies
// are not an error: the count says it.
func SendUDP(ns, addr string, payload []byte, n int) (replies int, err error) {
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return 0, fmt.Errorf("udp %s -> %s: %w", ns, addr, err)
	}
	var c net.PacketConn
	if err := nsutil.Do(ns, func() (err error) { c, err = net.ListenPacket("udp", ":0"); return }); err != nil {
		return 0, fmt.Errorf("udp %s -> %s: %w", ns, addr, err)
	}
	defer c.Close()
	buf := make([]byte, len(payload)+64)
	for i := 0; i < n; i++ {
		if _, err := c.WriteTo(payload, to); err != nil {
			return replies, fmt.Errorf("udp %s -> %s: write %d: %w", ns, addr, i, err)
		}
		deadline := time.Now().Add(ReplyTimeout)
		for {
			_ = c.SetReadDeadline(deadline)
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					break
				}
				return replies, fmt.Errorf("udp %s -> %s: read %d: %w", ns, addr, i, err)
			}
			if bytes.Equal(buf[:k], payload) {
				replies++
				break
			}
		}
	}
	return replies, nil
}

// Ping sends n ICMP (or ICMPv6) echo requests from ns to dst through a
// raw socket and returns how many distinct replies came back within
// timeout after the last request.
func Ping(ns string, dst netip.Addr, n int, timeout time.Duration) (received int, err error) {
	network, typ, replyTyp := "ip4:icmp", byte(8), byte(0)
	if dst.Is6() && !dst.Is4In6() {
		network, typ, replyTyp = "ip6:ipv6-icmp", 128, 129
	}
	dst = dst.Unmap()
	var c net.PacketConn
	if err := nsutil.Do(ns, func() (err error) { c, err = net.ListenPacket(network, ""); return }); err != nil {
		return 0, fmt.Errorf("ping %s -> %s: %w", ns, dst, err)
	}
	defer c.Close()
	var idb [2]byte
	if _, err := rand.Read(idb[:]); err != nil {
		return 0, err
	}
	id := binary.BigEndian.Uint16(idb[:])
	to := &net.IPAddr{IP: dst.AsSlice()}
	seen := map[uint16]bool{}
	buf := make([]byte, 1500)
	for seq := 0; seq < n; seq++ {
		msg := make([]byte, 8+16)
		msg[0] = typ
		binary.BigEndian.PutUint16(msg[4:], id)
		binary.BigEndian.PutUint16(msg[6:], uint16(seq))
		copy(msg[8:], "sealift-lab-ping")
		if typ == 8 { // the kernel fills in the ICMPv6 checksum
			binary.BigEndian.PutUint16(msg[2:], Checksum(msg))
		}
		if _, err := c.WriteTo(msg, to); err != nil {
			return received, fmt.Errorf("ping %s -> %s: send %d: %w", ns, dst, seq, err)
		}
		// Read what has already come back, without waiting.
		_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
		received += readEchoReplies(c, buf, replyTyp, id, seen, n)
	}
	deadline := time.Now().Add(timeout)
	for received < n && time.Now().Before(deadline) {
		_ = c.SetReadDeadline(deadline)
		got := readEchoReplies(c, buf, replyTyp, id, seen, n)
		if got == 0 {
			break
		}
		received += got
	}
	return received, nil
}

// readEchoReplies reads until the deadline set on c passes (or n replies
// are in) and returns the new distinct replies matching id.
func readEchoReplies(c net.PacketConn, buf []byte, replyTyp byte, id uint16, seen map[uint16]bool, n int) int {
	got := 0
	for len(seen) < n {
		k, _, err := c.ReadFrom(buf)
		if err != nil {
			return got
		}
		m := buf[:k]
		if k < 8 || m[0] != replyTyp || binary.BigEndian.Uint16(m[4:]) != id {
			continue
		}
		seq := binary.BigEndian.Uint16(m[6:])
		if !seen[seq] {
			seen[seq] = true
			got++
		}
	}
	return got
}

// Checksum is the Internet checksum of b (an ICMPv4 message).
func Checksum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

// AddAddr adds addr (CIDR, IPv4 or IPv6) to ifname in ns. IPv6 addresses
// skip duplicate address detection, so they are usable at once.
func AddAddr(ns, ifname, addr string) error {
	h, err := Handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("%s: %s: %w", ns, ifname, err)
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("%s: address %q: %w", ns, addr, err)
	}
	if a.IP.To4() == nil {
		a.Flags |= unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(l, a); err != nil {
		return fmt.Errorf("%s: addr %s on %s: %w", ns, addr, ifname, err)
	}
	return nil
}

// Target is an endpoint namespace with a TCP and a UDP echo server that
// count arrivals, so a test can count delivery at the receiver.
type Target struct {
	NS, Iface        string // the namespace and the interface captured on
	TCPPort, UDPPort uint16
	TCP, UDP         *Echo
}

// StartTarget starts echo servers on all addresses of ns (TCP tcpPort,
// UDP udpPort); iface is where Probe counts incoming frames.
func StartTarget(ns, iface string, tcpPort, udpPort uint16) (*Target, error) {
	t := &Target{NS: ns, Iface: iface, TCPPort: tcpPort, UDPPort: udpPort}
	var err error
	if t.TCP, err = StartTCPEcho(ns, fmt.Sprintf(":%d", tcpPort)); err != nil {
		return nil, err
	}
	if t.UDP, err = StartUDPEcho(ns, fmt.Sprintf(":%d", udpPort)); err != nil {
		t.TCP.Close()
		return nil, err
	}
	return t, nil
}

// Close stops the echo servers.
func (t *Target) Close() { t.TCP.Close(); t.UDP.Close() }

// Probe is what one round of probes got back, and what arrived.
type Probe struct {
	TCP, UDP, Ping4, Ping6 int // replies at the sender
	TCPIn, UDPIn           int // connections accepted / datagrams received by the target
	FramesIn               int // frames that arrived on the target's interface
}

// Probe sends n TCP messages, n UDP datagrams and n pings to dst4 (and n
// pings to dst6 if valid) from ns, counting replies at the sender and
// arrivals at the target (echo counters and a capture on its interface).
// Pings wait up to 1.5 s for replies.
func (t *Target) Probe(from string, dst4, dst6 netip.Addr, n int) (Probe, error) {
	var p Probe
	capt, err := StartCapture(t.NS, t.Iface, nil)
	if err != nil {
		return p, err
	}
	tcp0 := t.TCP.Accepted()
	udp0, _ := t.UDP.Received()
	payload := []byte("sealift-lab-probe")
	p.TCP, _ = SendTCP(from, netip.AddrPortFrom(dst4, t.TCPPort).String(), payload, n)
	p.UDP, _ = SendUDP(from, netip.AddrPortFrom(dst4, t.UDPPort).String(), payload, n)
	p.Ping4, err = Ping(from, dst4, n, 1500*time.Millisecond)
	if err == nil && dst6.IsValid() {
		p.Ping6, err = Ping(from, dst6, n, 1500*time.Millisecond)
	}
	s := capt.Stop()
	if err != nil {
		return p, err
	}
	if s.Dropped != 0 {
		return p, fmt.Errorf("probe: the capture on %s/%s dropped %d frames", t.NS, t.Iface, s.Dropped)
	}
	udp1, _ := t.UDP.Received()
	p.TCPIn, p.UDPIn, p.FramesIn = t.TCP.Accepted()-tcp0, udp1-udp0, s.Frames-s.Outgoing
	return p, nil
}

// Flows: every probe came back and arrived (Ping6 only if v6).
func (p Probe) Flows(n int, v6 bool) bool {
	ok := p.TCP == n && p.UDP == n && p.Ping4 == n && p.TCPIn > 0 && p.UDPIn == n
	return ok && (!v6 || p.Ping6 == n)
}

// None: nothing came back and nothing arrived, not a single frame.
func (p Probe) None() bool { return p == Probe{} }

// Blocked: nothing came back and no TCP connection or UDP datagram
// arrived (frames such as ARP broadcasts may still have).
func (p Probe) Blocked() bool {
	return p.TCP+p.UDP+p.Ping4+p.Ping6+p.TCPIn+p.UDPIn == 0
}

// WaitReachable pings dst from ns until a reply comes back or timeout
// passes: for links that just came up (carrier and neighbour discovery
// can take about a second).
func WaitReachable(ns string, dst netip.Addr, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		wait := min(500*time.Millisecond, max(time.Until(deadline), time.Millisecond))
		r, err := Ping(ns, dst, 1, wait)
		if err != nil {
			return err
		}
		if r == 1 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not reachable within %s", ns, dst, timeout)
		}
	}
}

// SendControl sends one ICMP (ICMPv6 if dst is IPv6) echo reply
// carrying payload from ns to dst: a packet that draws no answer (no host
// replies to a reply), so a capture on its path sees exactly one frame
// per hop. The lab sends it in clear across the wan on purpose, to prove
// its counters count.
func SendControl(ns string, dst netip.Addr, payload []byte) error {
	network, laddr, typ := "ip4:icmp", "0.0.0.0", byte(0)
	if dst.Is6() && !dst.Is4In6() {
		network, laddr, typ = "ip6:ipv6-icmp", "::", 129
	}
	return nsutil.Do(ns, func() error {
		c, err := net.ListenPacket(network, laddr)
		if err != nil {
			return err
		}
		defer c.Close()
		msg := append([]byte{typ, 0, 0, 0, 0x5c, 0x01, 0, 1}, payload...)
		if typ == 0 { // the kernel fills in the ICMPv6 checksum
			binary.BigEndian.PutUint16(msg[2:], Checksum(msg))
		}
		_, err = c.WriteTo(msg, &net.IPAddr{IP: dst.Unmap().AsSlice()})
		return err
	})
}
