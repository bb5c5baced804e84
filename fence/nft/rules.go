package nft

import (
	"encoding/binary"
	"net"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
)

// The rules of one fence, by chain. Every VM has the same four chains,
// whatever its Spec, so replacing a fence is "flush the four chains and
// fill them again" and the jumps into them never change:
//
//	bridge <id>-fwd  from the bridge's forward hook: frames between ports
//	bridge <id>-in   from its input hook: frames from a port to the host
//	bridge <id>-out  from its output hook: frames from the host to a port
//	inet   <id>      from input, forward and output: routed traffic
//
// Chains only drop or return, so one VM's exception never lets traffic
// of another fenced VM through.
type ruleSet struct {
	fwd, in, out, inet [][]expr.Any
}

const reg = 1 // NFT_REG_1

// buildRules returns the rules of s; bridge is the bridge the port is
// on ("" if none).
func buildRules(s fence.Spec, bridge string) ruleSet {
	var rs ruleSet
	var allow [][]expr.Any
	for _, m := range s.AllowMarks {
		allow = append(allow, cat(metaEq(expr.MetaKeyMARK, binaryutil.NativeEndian.PutUint32(m)), ret()))
	}
	for _, v := range s.AllowVia {
		allow = append(allow,
			cat(metaEq(expr.MetaKeyIIFNAME, ifname(v)), ret()),
			cat(metaEq(expr.MetaKeyOIFNAME, ifname(v)), ret()))
	}
	via := len(s.AllowVia) > 0
	mac, _ := net.ParseMAC(s.MAC)
	var v4, v6 []netip.Addr
	for _, a := range s.Addrs {
		if a = a.Unmap(); a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}

	// Everything of the VM, on L2: its port, its MAC, its addresses.
	var l2 [][]expr.Any
	l2 = append(l2,
		cat(metaEq(expr.MetaKeyIIFNAME, ifname(s.Port)), drop()),
		cat(metaEq(expr.MetaKeyOIFNAME, ifname(s.Port)), drop()))
	if mac != nil {
		l2 = append(l2,
			cat(loadEq(expr.PayloadBaseLLHeader, 6, mac), drop()),
			cat(loadEq(expr.PayloadBaseLLHeader, 0, mac), drop()))
	}
	for _, a := range v4 {
		l2 = append(l2,
			cat(metaEq(expr.MetaKeyPROTOCOL, be16(unix.ETH_P_IP)), loadEq(expr.PayloadBaseNetworkHeader, 12, a.AsSlice()), drop()),
			cat(metaEq(expr.MetaKeyPROTOCOL, be16(unix.ETH_P_IP)), loadEq(expr.PayloadBaseNetworkHeader, 16, a.AsSlice()), drop()))
	}
	for _, a := range v6 {
		l2 = append(l2,
			cat(metaEq(expr.MetaKeyPROTOCOL, be16(unix.ETH_P_IPV6)), loadEq(expr.PayloadBaseNetworkHeader, 8, a.AsSlice()), drop()),
			cat(metaEq(expr.MetaKeyPROTOCOL, be16(unix.ETH_P_IPV6)), loadEq(expr.PayloadBaseNetworkHeader, 24, a.AsSlice()), drop()))
	}
	rs.fwd = append(append(rs.fwd, allow...), l2...)

	if !via {
		// Nothing may reach or leave the VM through the host either.
		rs.in = append(append(rs.in, allow...), l2...)
		rs.out = append(append(rs.out, allow...), l2...)
	} else {
		// The secure link may be a routed device: frames between the
		// port and the host pass here, and the inet chain decides by the
		// outgoing/incoming device. So that a guest cannot dodge the
		// inet rules by changing its MAC or IP, the port may send only
		// with its own MAC and addresses, and receive only for its own.
		// And the host may not route the VM's traffic back onto the
		// bridge (hairpin): other ports never see its addresses.
		// IPv6 neighbour discovery between the VM and the host must work
		// for the VM to route through the host (it never leaves the link).
		rs.in = append(rs.in, append(allow, ndReturn())...)
		rs.out = append(rs.out, append(allow, ndReturn())...)
		fromPort := metaEq(expr.MetaKeyIIFNAME, ifname(s.Port))
		toPort := metaEq(expr.MetaKeyOIFNAME, ifname(s.Port))
		if mac != nil {
			rs.in = append(rs.in, cat(fromPort, loadNeq(expr.PayloadBaseLLHeader, 6, mac), drop()))
		}
		for _, fam := range []struct {
			eth      uint16
			src, dst uint32
			n        uint32
			addrs    []netip.Addr
		}{{unix.ETH_P_IP, 12, 16, 4, v4}, {unix.ETH_P_IPV6, 8, 24, 16, v6}} {
			if len(fam.addrs) == 0 {
				continue
			}
			proto := metaEq(expr.MetaKeyPROTOCOL, be16(fam.eth))
			rs.in = append(rs.in, cat(fromPort, proto, loadNotIn(fam.src, fam.n, fam.addrs), drop()))
			rs.out = append(rs.out, cat(toPort, proto, loadNotIn(fam.dst, fam.n, fam.addrs), drop()))
			for _, a := range fam.addrs {
				rs.in = append(rs.in, cat(metaNeq(expr.MetaKeyIIFNAME, ifname(s.Port)), proto,
					loadEq(expr.PayloadBaseNetworkHeader, fam.dst, a.AsSlice()), drop()))
				rs.out = append(rs.out, cat(metaNeq(expr.MetaKeyOIFNAME, ifname(s.Port)), proto,
					loadEq(expr.PayloadBaseNetworkHeader, fam.src, a.AsSlice()), drop()))
			}
		}
	}

	// Routed traffic (inet: input, forward, output).
	rs.inet = append(rs.inet, allow...)
	if via {
		rs.inet = append(rs.inet, ndReturn())
	}
	if via && bridge != "" {
		// With br_netfilter, bridged packets also pass the inet hooks,
		// in and out of the bridge device: the bridge chains judge them.
		rs.inet = append(rs.inet, cat(metaEq(expr.MetaKeyIIFNAME, ifname(bridge)),
			metaEq(expr.MetaKeyOIFNAME, ifname(bridge)), ret()))
	}
	rs.inet = append(rs.inet,
		cat(metaEq(expr.MetaKeyIIFNAME, ifname(s.Port)), drop()),
		cat(metaEq(expr.MetaKeyOIFNAME, ifname(s.Port)), drop()))
	if mac != nil {
		rs.inet = append(rs.inet, cat(metaEq(expr.MetaKeyIIFTYPE, binaryutil.NativeEndian.PutUint16(unix.ARPHRD_ETHER)),
			loadEq(expr.PayloadBaseLLHeader, 6, mac), drop()))
	}
	for _, a := range v4 {
		rs.inet = append(rs.inet,
			cat(metaEq(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV4}), loadEq(expr.PayloadBaseNetworkHeader, 12, a.AsSlice()), drop()),
			cat(metaEq(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV4}), loadEq(expr.PayloadBaseNetworkHeader, 16, a.AsSlice()), drop()))
	}
	for _, a := range v6 {
		rs.inet = append(rs.inet,
			cat(metaEq(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV6}), loadEq(expr.PayloadBaseNetworkHeader, 8, a.AsSlice()), drop()),
			cat(metaEq(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV6}), loadEq(expr.PayloadBaseNetworkHeader, 24, a.AsSlice()), drop()))
	}
	rs.inet = append(rs.inet, icmpErrorDrops(v4, v6)...)
	return rs
}

// icmpErrorDrops drop ICMP and ICMPv6 errors that quote a packet from or
// to the VM (its addresses in the quoted header), unless an earlier rule
// let them through a secure link. The host itself sends such errors
// (destination unreachable while the VM is paused or gone, time
// exceeded, ...) from its own address, which the VM's address rules do
// not match: without these, an error about a peer's packet to the VM
// would leave by the host's default route and carry the start of that
// packet's payload across the untrusted network in clear.
func icmpErrorDrops(v4, v6 []netip.Addr) [][]expr.Any {
	var rules [][]expr.Any
	// ICMP errors: destination unreachable (3), time exceeded (11),
	// parameter problem (12); the quoted IPv4 header starts 8 bytes into
	// the ICMP message: source at +12, destination at +16.
	for _, typ := range []byte{3, 11, 12} {
		for _, a := range v4 {
			for _, off := range []uint32{8 + 12, 8 + 16} {
				rules = append(rules, cat(metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMP}),
					loadEq(expr.PayloadBaseTransportHeader, 0, []byte{typ}),
					loadEq(expr.PayloadBaseTransportHeader, off, a.AsSlice()), drop()))
			}
		}
	}
	// ICMPv6 errors 1-4; the quoted IPv6 header starts 8 bytes in:
	// source at +8, destination at +24.
	for _, typ := range []byte{1, 2, 3, 4} {
		for _, a := range v6 {
			for _, off := range []uint32{8 + 8, 8 + 24} {
				rules = append(rules, cat(metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMPV6}),
					loadEq(expr.PayloadBaseTransportHeader, 0, []byte{typ}),
					loadEq(expr.PayloadBaseTransportHeader, off, a.AsSlice()), drop()))
			}
		}
	}
	return rules
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func metaEq(k expr.MetaKey, v []byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: k, Register: reg}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: v}}
}

func metaNeq(k expr.MetaKey, v []byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: k, Register: reg}, &expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: v}}
}

func loadEq(base expr.PayloadBase, off uint32, v []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: uint32(len(v))},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: v},
	}
}

func loadNeq(base expr.PayloadBase, off uint32, v []byte) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg, Base: base, Offset: off, Len: uint32(len(v))},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: v},
	}
}

// loadNotIn matches when the network-header field is none of addrs.
func loadNotIn(off, n uint32, addrs []netip.Addr) []expr.Any {
	out := []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}}
	for _, a := range addrs {
		out = append(out, &expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: a.AsSlice()})
	}
	return out
}

// ndReturn lets ICMPv6 router/neighbour solicitations and advertisements
// (types 133-136) through.
func ndReturn() []expr.Any {
	return cat(metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMPV6}),
		[]expr.Any{
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
			&expr.Cmp{Op: expr.CmpOpGte, Register: reg, Data: []byte{133}},
			&expr.Cmp{Op: expr.CmpOpLte, Register: reg, Data: []byte{136}},
		}, ret())
}

func drop() []expr.Any {
	return []expr.Any{&expr.Counter{}, &expr.Verdict{Kind: expr.VerdictDrop}}
}

func ret() []expr.Any { return []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}} }

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

// ifname pads an interface name to IFNAMSIZ, as the kernel stores it.
func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func be16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// Tables and base chains owned by sealift.
const tableName = "sealift"

var (
	bridgeTable = &nftables.Table{Name: tableName, Family: nftables.TableFamilyBridge}
	inetTable   = &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
)

type baseChain struct {
	table *nftables.Table
	name  string
	hook  *nftables.ChainHook
	sub   string // suffix of the VM chain it jumps to
	prio  *nftables.ChainPriority
}

// bridgePrio is nft's "filter" priority of the bridge family
// (NF_BR_PRI_FILTER_BRIDGED): before br_netfilter hands bridged packets
// to the inet hooks (NF_BR_PRI_BRNF, 0).
var bridgePrio = nftables.ChainPriorityRef(-200)

// baseChains lists the hooks; bridge hook numbers equal the inet ones
// (NF_BR_FORWARD = NF_INET_FORWARD, ...).
var baseChains = []baseChain{
	{bridgeTable, "forward", nftables.ChainHookForward, "-fwd", bridgePrio},
	{bridgeTable, "input", nftables.ChainHookInput, "-in", bridgePrio},
	{bridgeTable, "output", nftables.ChainHookOutput, "-out", bridgePrio},
	{inetTable, "input", nftables.ChainHookInput, "", nftables.ChainPriorityFilter},
	{inetTable, "forward", nftables.ChainHookForward, "", nftables.ChainPriorityFilter},
	{inetTable, "output", nftables.ChainHookOutput, "", nftables.ChainPriorityFilter},
}

func (b baseChain) chain() *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: b.name, Table: b.table, Hooknum: b.hook,
		Priority: b.prio, Type: nftables.ChainTypeFilter, Policy: &accept}
}

// vmChains returns the VM's four chains and the rules for each.
func vmChains(id string, rs ruleSet) []struct {
	c     *nftables.Chain
	rules [][]expr.Any
} {
	return []struct {
		c     *nftables.Chain
		rules [][]expr.Any
	}{
		{&nftables.Chain{Name: id + "-fwd", Table: bridgeTable}, rs.fwd},
		{&nftables.Chain{Name: id + "-in", Table: bridgeTable}, rs.in},
		{&nftables.Chain{Name: id + "-out", Table: bridgeTable}, rs.out},
		{&nftables.Chain{Name: id, Table: inetTable}, rs.inet},
	}
}
