// Package nflog receives the packets an nftables "log group N" rule
// copies to user space (nfnetlink_log), in a given network namespace.
// fence/nft uses it to hold the packets a source fence drops during a
// switchover. This kernel has no nft "queue" expression (nft_queue), and
// a log copy suits better anyway: the kernel drops the packet whatever
// happens here, so a slow or dead reader never lets anything through.
package nflog

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/internal/nsutil"
)

// Values of linux/netfilter/nfnetlink.h and nfnetlink_log.h.
const (
	subsysULOG    = 4 // NFNL_SUBSYS_ULOG
	msgPacket     = 0 // NFULNL_MSG_PACKET
	msgConfig     = 1 // NFULNL_MSG_CONFIG
	cfgCmd        = 1 // NFULA_CFG_CMD
	cfgMode       = 2 // NFULA_CFG_MODE
	cfgTimeout    = 4 // NFULA_CFG_TIMEOUT
	cfgQThresh    = 5 // NFULA_CFG_QTHRESH
	cmdBind       = 1 // NFULNL_CFG_CMD_BIND
	copyPacket    = 2 // NFULNL_COPY_PACKET
	attrPacketHdr = 1 // NFULA_PACKET_HDR: hw_protocol (be16), hook (u8)
	attrPayload   = 9 // NFULA_PAYLOAD
)

// Packet is one logged packet: its network-layer bytes (IPv4 or IPv6
// header first) and when it was read.
type Packet struct {
	Proto uint16 // EtherType (unix.ETH_P_IP, unix.ETH_P_IPV6), 0 if unknown
	Data  []byte
	At    time.Time
}

// Reader receives the packets of one log group in one namespace.
type Reader struct {
	c       *netlink.Conn
	group   uint16
	done    chan struct{}
	closing chan struct{}
	mu      sync.Mutex
	err     error
}

// Listen binds log group in host's network namespace ("" = the current
// one) with full-packet copies, and calls fn for each packet from its own
// goroutine until Close. A group another process (or Reader) holds is an
// error (EBUSY).
func Listen(host string, group uint16, fn func(Packet)) (*Reader, error) {
	ns, err := nsutil.Open(host)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: int(ns)})
	if err != nil {
		return nil, fmt.Errorf("nflog: host %q: %w", host, err)
	}
	r := &Reader{c: c, group: group, done: make(chan struct{}), closing: make(chan struct{})}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 0xffff) // copy range
	mode[4] = copyPacket
	steps := [][]netlink.Attribute{
		{{Type: cfgCmd, Data: []byte{cmdBind}}},
		{{Type: cfgMode, Data: mode}},
		{{Type: cfgQThresh, Data: be32(1)}, {Type: cfgTimeout, Data: be32(0)}},
	}
	for _, attrs := range steps {
		if err := r.config(attrs); err != nil {
			c.Close()
			return nil, fmt.Errorf("nflog: host %q: group %d: %w", host, group, err)
		}
	}
	go r.loop(fn)
	return r, nil
}

func (r *Reader) config(attrs []netlink.Attribute) error {
	b, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, 0, 0, 0} // nfgenmsg: family, version, res_id (group, be16)
	binary.BigEndian.PutUint16(hdr[2:], r.group)
	_, err = r.c.Execute(netlink.Message{
		Header: netlink.Header{Type: netlink.HeaderType(subsysULOG<<8 | msgConfig), Flags: netlink.Request | netlink.Acknowledge},
		Data:   append(hdr, b...),
	})
	return err
}

func (r *Reader) loop(fn func(Packet)) {
	defer close(r.done)
	for {
		msgs, err := r.c.Receive()
		if err != nil {
			var oe *netlink.OpError
			if errors.As(err, &oe) && errors.Is(oe.Err, unix.ENOBUFS) {
				continue // the socket overflowed: those copies are lost, the packets dropped anyway
			}
			select {
			case <-r.closing:
			default:
				r.mu.Lock()
				r.err = err
				r.mu.Unlock()
			}
			return
		}
		now := time.Now()
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(subsysULOG<<8|msgPacket) || len(m.Data) < 4 {
				continue
			}
			ad, err := netlink.NewAttributeDecoder(m.Data[4:])
			if err != nil {
				continue
			}
			p := Packet{At: now}
			for ad.Next() {
				switch ad.Type() {
				case attrPacketHdr:
					if b := ad.Bytes(); len(b) >= 2 {
						p.Proto = binary.BigEndian.Uint16(b)
					}
				case attrPayload:
					p.Data = append([]byte(nil), ad.Bytes()...)
				}
			}
			if ad.Err() == nil && len(p.Data) > 0 {
				fn(p)
			}
		}
	}
}

// Close stops the reader (closing the socket unbinds its group: the
// kernel destroys the log instances of a released socket); fn is not
// called after it returns.
func (r *Reader) Close() error {
	close(r.closing)
	err := r.c.Close()
	<-r.done
	return err
}

// Err is what ended the reader's loop early (nil while it runs, and after
// Close).
func (r *Reader) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func be32(v uint32) []byte {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, v)
	return b
}
