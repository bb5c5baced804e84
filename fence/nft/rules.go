package nft

import (
	"encoding/binary"
	"net"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/sealift/sealift/fence"
)

// The rules of one fence, by chain. Every VM has the same four chains,
// whatever its Spec, so replacing a fence is "flush the four chains and
// fill them again", and the jumps into them change only when AllowIPsec
// does (see jumpExprs):
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

// Keys google/nftables v0.3.0 (and golang.org/x/sys) do not name; the
// values are those of linux/netfilter/nf_tables.h.
const (
	// metaKeySecpath is NFT_META_SECPATH (enum nft_meta_keys: right
	// after NFT_META_PRANDOM, 24): a u8, 1 if the packet came out of an
	// IPsec transform (it arrived encrypted and was decrypted), as nft's
	// "meta secpath exists" tests. (Not 33: that is NFT_META_SDIF.) The
	// kernel accepts it only in the prerouting, input and forward hooks.
	metaKeySecpath expr.MetaKey = 25
	// rtKeyXFRM is NFT_RT_XFRM (enum nft_rt_keys): a u8, 1 if the
	// packet's route carries an XFRM bundle (the kernel will transform it
	// on its way out), as nft's "rt ipsec exists" tests. Any hook of the
	// ip, ip6 and inet families; a packet without a route does not match.
	rtKeyXFRM expr.RtKey = 4
)

// rtIPsec matches a packet whose route will IPsec-transform it.
func rtIPsec() []expr.Any {
	return []expr.Any{&expr.Rt{Register: reg, Key: rtKeyXFRM}, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{1}}}
}

// noSecpath matches a packet that did not arrive decrypted.
func noSecpath() []expr.Any { return metaEq(metaKeySecpath, []byte{0}) }

// buildRules returns the rules of s; bridge is the bridge the port is
// on ("" if none); group is the log group that holds packets to the VM
// (s.Hold; 0 without).
func buildRules(s fence.Spec, bridge string, group uint16) ruleSet {
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
	// open: the VM may talk through a secure link (devices or IPsec); the
	// bridge chains then only keep the port to its own MAC and addresses
	// and the inet chain decides. IPsec returns only in the inet chain:
	// frames the bridge carries are never transformed. Packets that
	// arrived decrypted do not enter the inet chain from the input and
	// forward hooks at all (see jumpExprs).
	via := len(s.AllowVia) > 0 || s.AllowIPsec
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
	// Hold: a copy of each packet to the VM goes to the log group right
	// before the rules that drop it, after every rule that could let it
	// through: so only dropped packets are held, each once (the first
	// chain that sees it drops it).
	hold := holdRules(group, v4, v6, expr.MetaKeyPROTOCOL, unix.ETH_P_IP, unix.ETH_P_IPV6)
	rs.fwd = append(append(append(rs.fwd, allow...), hold...), l2...)

	if !via {
		// Nothing may reach or leave the VM through the host either.
		rs.in = append(append(rs.in, allow...), l2...)
		rs.out = append(append(append(rs.out, allow...), hold...), l2...)
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
	if s.AllowIPsec {
		rs.inet = append(rs.inet, cat(rtIPsec(), ret()))
	}
	if via {
		rs.inet = append(rs.inet, ndReturn())
		rs.inet = append(rs.inet, resetReturns(v4, v6)...)
	}
	if via && bridge != "" {
		// With br_netfilter, bridged packets also pass the inet hooks,
		// in and out of the bridge device: the bridge chains judge them.
		rs.inet = append(rs.inet, cat(metaEq(expr.MetaKeyIIFNAME, ifname(bridge)),
			metaEq(expr.MetaKeyOIFNAME, ifname(bridge)), ret()))
	}
	rs.inet = append(rs.inet, holdRules(group, v4, v6, expr.MetaKeyNFPROTO, unix.NFPROTO_IPV4, unix.NFPROTO_IPV6)...)
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

// holdRules copy packets addressed to v4/v6 to log group (none if group
// is 0). key is how the chain's family tells IPv4 from IPv6: the bridge
// family by EtherType (meta protocol), inet by NFPROTO (its values are
// a byte, EtherTypes two).
func holdRules(group uint16, v4, v6 []netip.Addr, key expr.MetaKey, p4, p6 int) [][]expr.Any {
	if group == 0 {
		return nil
	}
	fam := func(p int) []expr.Any {
		if key == expr.MetaKeyNFPROTO {
			return metaEq(key, []byte{byte(p)})
		}
		return metaEq(key, be16(uint16(p)))
	}
	log := &expr.Log{Key: 1<<unix.NFTA_LOG_GROUP | 1<<unix.NFTA_LOG_SNAPLEN | 1<<unix.NFTA_LOG_QTHRESHOLD,
		Group: group, Snaplen: 0xffff, QThreshold: 1}
	var rules [][]expr.Any
	for _, a := range v4 {
		rules = append(rules, cat(fam(p4), loadEq(expr.PayloadBaseNetworkHeader, 16, a.AsSlice()), []expr.Any{log}))
	}
	for _, a := range v6 {
		rules = append(rules, cat(fam(p6), loadEq(expr.PayloadBaseNetworkHeader, 24, a.AsSlice()), []expr.Any{log}))
	}
	return rules
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

// resetReturns let conn/conntrack's reset packets reach the VM: marked
// fence.ResetMark, addressed to one of its addresses, TCP without options
// or payload (IPv4: header 0x45, total length 40; IPv6: TCP next, payload
// length 20; TCP data offset 5), flags ACK and/or RST only. Such a packet
// can end a connection of the VM but carries no data.
func resetReturns(v4, v6 []netip.Addr) [][]expr.Any {
	var rules [][]expr.Any
	mark := metaEq(expr.MetaKeyMARK, binaryutil.NativeEndian.PutUint32(fence.ResetMark))
	tcp := cat(
		metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_TCP}),
		loadEq(expr.PayloadBaseTransportHeader, 12, []byte{0x50}),
		[]expr.Any{
			&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: []byte{0}},
			&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 1, Mask: []byte{^byte(0x14)}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: []byte{0}},
		})
	for _, a := range v4 {
		rules = append(rules, cat(mark, metaEq(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV4}),
			loadEq(expr.PayloadBaseNetworkHeader, 16, a.AsSlice()),
			loadEq(expr.PayloadBaseNetworkHeader, 0, []byte{0x45}),
			loadEq(expr.PayloadBaseNetworkHeader, 2, be16(40)),
			tcp, ret()))
	}
	for _, a := range v6 {
		rules = append(rules, cat(mark, metaEq(expr.MetaKeyNFPROTO, []byte{unix.NFPROTO_IPV6}),
			loadEq(expr.PayloadBaseNetworkHeader, 24, a.AsSlice()),
			loadEq(expr.PayloadBaseNetworkHeader, 6, []byte{unix.IPPROTO_TCP}),
			loadEq(expr.PayloadBaseNetworkHeader, 4, be16(20)),
			tcp, ret()))
	}
	return rules
}

// guard is the host-wide Peers guard: the union of the installed fences'
// Peers, and of the AllowVia devices of the fences that carry Peers.
type guard struct {
	via    []string
	ipsec  bool // some fence with Peers has AllowIPsec
	v4, v6 []netip.Prefix
}

func guardOf(specs []fence.Spec) guard {
	var g guard
	for _, s := range specs {
		if len(s.Peers) == 0 {
			continue
		}
		g.via = append(g.via, s.AllowVia...)
		g.ipsec = g.ipsec || s.AllowIPsec
		for _, p := range s.Peers {
			if p.Addr().Is4() {
				g.v4 = append(g.v4, p)
			} else {
				g.v6 = append(g.v6, p)
			}
		}
	}
	slices.Sort(g.via)
	g.via = slices.Compact(g.via)
	for _, ps := range []*[]netip.Prefix{&g.v4, &g.v6} {
		slices.SortFunc(*ps, func(a, b netip.Prefix) int { return a.Compare(b) })
		*ps = slices.Compact(*ps)
	}
	return g
}

func (g guard) empty() bool { return len(g.v4)+len(g.v6) == 0 }

func (g guard) equal(h guard) bool {
	return slices.Equal(g.via, h.via) && g.ipsec == h.ipsec && slices.Equal(g.v4, h.v4) && slices.Equal(g.v6, h.v6)
}

// rules returns the guard's rules for the postrouting chain of the inet
// table (bridge false: what the host routes or sends, by the device it
// leaves through) or of the bridge table (frames a bridge sends out of a
// port, by that port): an AllowVia device returns, and in the inet table
// with ipsec a packet the kernel will IPsec-transform (its plaintext
// passes postrouting before the transform, with the XFRM bundle as its
// route; the encrypted packet, addressed to the tunnel's end, passes
// again), anything else to a guarded prefix is dropped. Frames a bridge
// sends out are never transformed: no IPsec exception there.
func (g guard) rules(bridge bool) [][]expr.Any {
	if g.empty() {
		return nil
	}
	var rules [][]expr.Any
	for _, v := range g.via {
		rules = append(rules, cat(metaEq(expr.MetaKeyOIFNAME, ifname(v)), ret()))
	}
	if g.ipsec && !bridge {
		rules = append(rules, cat(rtIPsec(), ret()))
	}
	for _, fam := range []struct {
		nfproto byte
		eth     uint16
		off     uint32
		ps      []netip.Prefix
	}{{unix.NFPROTO_IPV4, unix.ETH_P_IP, 16, g.v4}, {unix.NFPROTO_IPV6, unix.ETH_P_IPV6, 24, g.v6}} {
		proto := metaEq(expr.MetaKeyNFPROTO, []byte{fam.nfproto})
		if bridge {
			proto = metaEq(expr.MetaKeyPROTOCOL, be16(fam.eth))
		}
		for _, p := range fam.ps {
			rules = append(rules, cat(proto, loadPrefix(fam.off, p), drop()))
		}
	}
	return rules
}

// loadPrefix matches when the network-header address at off is in p.
func loadPrefix(off uint32, p netip.Prefix) []expr.Any {
	n := uint32(p.Addr().BitLen() / 8)
	out := []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n}}
	if p.Bits() < p.Addr().BitLen() {
		mask := net.CIDRMask(p.Bits(), p.Addr().BitLen())
		out = append(out, &expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: p.Addr().AsSlice()})
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
// (types 133-136) through, as neighbour discovery is: hop limit 255
// (RFC 4861 drops any other), so never routed (a forwarded packet's hop
// limit is already decremented in the forward hook). Without that, a
// fenced VM's data in ICMPv6 of those types, addressed off-link, would be
// forwarded by any device, in clear.
func ndReturn() []expr.Any {
	return cat(metaEq(expr.MetaKeyL4PROTO, []byte{unix.IPPROTO_ICMPV6}),
		loadEq(expr.PayloadBaseNetworkHeader, 7, []byte{255}),
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

// guardChains hold the Peers guard (no VM jumps into them): the inet
// table's postrouting sees every packet the host routes or sends, after
// its routing decision, ICMP errors and nftables' rejects included; the
// bridge table's sees every frame a bridge sends out of a port.
var guardChains = []baseChain{
	{inetTable, "postrouting", nftables.ChainHookPostrouting, "", nftables.ChainPriorityFilter},
	{bridgeTable, "postrouting", nftables.ChainHookPostrouting, "", bridgePrio},
}

func (b baseChain) chain() *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{Name: b.name, Table: b.table, Hooknum: b.hook,
		Priority: b.prio, Type: nftables.ChainTypeFilter, Policy: &accept}
}

// jumpExprs is the rule by which base chain b enters the VM's chain id.
// With AllowIPsec, the inet input and forward hooks do not enter it for
// packets that arrived decrypted (they came through the secure link; the
// kernel's in and fwd policies have admitted them, and it drops a packet
// out of an IPsec tunnel that no policy admits): the kernel refuses
// "meta secpath" in the output hook, which enters the VM's inet chain
// too, so the test sits in the jump.
func jumpExprs(b baseChain, id string, s fence.Spec) []expr.Any {
	if s.AllowIPsec && secpathHook(b) {
		return cat(noSecpath(), jump(id+b.sub))
	}
	return jump(id + b.sub)
}

// secpathHook reports whether b is a base chain whose jump depends on
// AllowIPsec: the inet table's input and forward.
func secpathHook(b baseChain) bool {
	return b.table == inetTable && (*b.hook == *nftables.ChainHookInput || *b.hook == *nftables.ChainHookForward)
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
