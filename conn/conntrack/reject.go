package conntrack

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Registers of concatenated keys start at NFT_REG32_00.
const reg32 = 8

// elemsPerMsg keeps one NEWSETELEM message under netlink's 64 KiB
// attribute limit (an IPv6 element is ~60 bytes on the wire).
const elemsPerMsg = 800

var (
	key4 = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeInetService)
	key6 = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeIP6Addr, nftables.TypeInetService, nftables.TypeInetService)
)

// rejecter is one installed reset table.
type rejecter struct {
	nft   *nftables.Conn
	table *nftables.Table
	// tcp maps each TCP set to the directions not yet seen rejected, by key.
	tcp map[*nftables.Set]map[string]dir
}

// installReject adds, in one batch, a table with the plan's sets, a
// forward chain rejecting their packets and an output chain exempting
// tickles (mark) from conntrack and marking the RSTs the kernel sends
// for the rejected TCP packets (so a fence lets them reach the VM, see
// fence.ResetMark).
func installReject(ns netns.NsHandle, p *plan, mark uint32) (*rejecter, error) {
	sizeOpt := nftables.WithSockOptions(func(c *netlink.Conn) error {
		return bigSendBuffer(c, 64+len(p.tcp4)*48+len(p.udp4)*48+len(p.tcp6)*72+len(p.udp6)*72)
	})
	nft, err := nftables.New(nftables.WithNetNSFd(int(ns)), sizeOpt)
	if err != nil {
		return nil, fmt.Errorf("conntrack: nftables: %w", err)
	}
	var rnd [4]byte
	_, _ = rand.Read(rnd[:])
	t := nft.AddTable(&nftables.Table{Name: "sealift_reset_" + hex.EncodeToString(rnd[:]), Family: nftables.TableFamilyINet})
	r := &rejecter{nft: nft, table: t, tcp: make(map[*nftables.Set]map[string]dir)}

	fwd := nft.AddChain(&nftables.Chain{Name: "forward", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityMangle})
	out := nft.AddChain(&nftables.Chain{Name: "tickle", Table: t, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw})
	nft.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Notrack{},
	}})

	for _, s := range []struct {
		name  string
		dirs  []dir
		v6    bool
		proto byte
	}{
		{"tcp4", p.tcp4, false, unix.IPPROTO_TCP},
		{"tcp6", p.tcp6, true, unix.IPPROTO_TCP},
		{"udp4", p.udp4, false, unix.IPPROTO_UDP},
		{"udp6", p.udp6, true, unix.IPPROTO_UDP},
	} {
		if len(s.dirs) == 0 {
			continue
		}
		kt := key4
		if s.v6 {
			kt = key6
		}
		// The ID is ours: google/nftables allocates a missing one from a
		// package-global counter without a lock shared across Conns, a
		// data race when two Auditors install at once.
		set := &nftables.Set{Table: t, Name: s.name, ID: setIDs.Add(1), KeyType: kt, Concatenation: true, Counter: s.proto == unix.IPPROTO_TCP}
		if err := nft.AddSet(set, nil); err != nil {
			return nil, fmt.Errorf("conntrack: set %s: %w", s.name, err)
		}
		elems := make([]nftables.SetElement, len(s.dirs))
		keys := make(map[string]dir, len(s.dirs))
		for i, d := range s.dirs {
			k := d.match.key()
			elems[i] = nftables.SetElement{Key: k}
			keys[string(k)] = d
		}
		for i := 0; i < len(elems); i += elemsPerMsg {
			if err := nft.SetAddElements(set, elems[i:min(i+elemsPerMsg, len(elems))]); err != nil {
				return nil, fmt.Errorf("conntrack: set %s elements: %w", s.name, err)
			}
		}
		if s.proto == unix.IPPROTO_TCP {
			r.tcp[set] = keys
			nft.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: markRule(set, s.v6, mark)})
		}
		nft.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: matchRule(set, s.v6, s.proto)})
	}
	if err := nft.Flush(); err != nil {
		return nil, fmt.Errorf("conntrack: install reset table %s: %w", t.Name, err)
	}
	return r, nil
}

// matchRule is "meta nfproto ipvX meta l4proto P saddr . daddr . sport .
// dport @set reject" (tcp reset for TCP, port unreachable for UDP).
// setIDs numbers the sets of a batch (NFTA_SET_ID; unique within one
// transaction is all the kernel asks).
var setIDs atomic.Uint32

func matchRule(set *nftables.Set, v6 bool, proto byte) []expr.Any {
	fam, alen, soff, doff := byte(unix.NFPROTO_IPV4), uint32(4), uint32(12), uint32(16)
	if v6 {
		fam, alen, soff, doff = unix.NFPROTO_IPV6, 16, 8, 24
	}
	words := alen / 4
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: reg32, Base: expr.PayloadBaseNetworkHeader, Offset: soff, Len: alen},
		&expr.Payload{DestRegister: reg32 + words, Base: expr.PayloadBaseNetworkHeader, Offset: doff, Len: alen},
		&expr.Payload{DestRegister: reg32 + 2*words, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Payload{DestRegister: reg32 + 2*words + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg32, SetName: set.Name, SetID: set.ID},
	}
	if proto == unix.IPPROTO_TCP {
		return append(e, &expr.Reject{Type: unix.NFT_REJECT_TCP_RST})
	}
	return append(e, &expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH})
}

// markRule is "meta l4proto tcp tcp flags & rst != 0 daddr . saddr .
// dport . sport @set meta mark set mark": the RST the kernel built from a
// rejected packet of the set (its addresses and ports reversed) gets the
// mark. It runs in the output hook before any filter chain (raw priority).
func markRule(set *nftables.Set, v6 bool, mark uint32) []expr.Any {
	fam, alen, soff, doff := byte(unix.NFPROTO_IPV4), uint32(4), uint32(12), uint32(16)
	if v6 {
		fam, alen, soff, doff = unix.NFPROTO_IPV6, 16, 8, 24
	}
	words := alen / 4
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x04}, Xor: []byte{0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0}},
		&expr.Payload{DestRegister: reg32, Base: expr.PayloadBaseNetworkHeader, Offset: doff, Len: alen},
		&expr.Payload{DestRegister: reg32 + words, Base: expr.PayloadBaseNetworkHeader, Offset: soff, Len: alen},
		&expr.Payload{DestRegister: reg32 + 2*words, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Payload{DestRegister: reg32 + 2*words + 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Lookup{SourceRegister: reg32, SetName: set.Name, SetID: set.ID},
		&expr.Immediate{Register: 1, Data: binaryutil.NativeEndian.PutUint32(mark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// unhit returns the TCP directions that have not had a packet rejected.
func (r *rejecter) unhit() (*plan, error) {
	left := &plan{}
	for set, keys := range r.tcp {
		if len(keys) == 0 {
			continue
		}
		elems, err := r.nft.GetSetElements(set)
		if err != nil {
			return nil, fmt.Errorf("conntrack: read set %s: %w", set.Name, err)
		}
		for _, e := range elems {
			if e.Counter != nil && e.Counter.Packets > 0 {
				delete(keys, string(e.Key))
			}
		}
		for _, d := range keys {
			if d.match.src.Is4() {
				left.tcp4 = append(left.tcp4, d)
			} else {
				left.tcp6 = append(left.tcp6, d)
			}
		}
	}
	return left, nil
}

// remove deletes the table with everything in it.
func (r *rejecter) remove() error {
	r.nft.DelTable(r.table)
	if err := r.nft.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("conntrack: remove reset table %s: %w", r.table.Name, err)
	}
	return nil
}

// bigSendBuffer lets one batch of n bytes go out in a single sendmsg.
func bigSendBuffer(c *netlink.Conn, n int) error {
	if n < 128*1024 {
		return nil
	}
	n += 64 * 1024
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, n)
		if errors.Is(serr, syscall.EPERM) {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, n)
		}
	})
	return errors.Join(err, serr)
}
