package agent

import (
	"net/netip"
	"time"

	"github.com/sealift/sealift/agent/agentpb"
	"github.com/sealift/sealift/fence"
)

// specToPB and specFromPB convert fence.Spec; specFromPB names the first
// field that does not parse (the agent gets its input from the network).
func specToPB(s fence.Spec) *agentpb.FenceSpec {
	pb := &agentpb.FenceSpec{Vm: s.VM, Port: s.Port, Mac: s.MAC, AllowVia: s.AllowVia,
		AllowMarks: s.AllowMarks, AllowIpsec: s.AllowIPsec, Hold: s.Hold}
	for _, a := range s.Addrs {
		pb.Addrs = append(pb.Addrs, a.String())
	}
	for _, p := range s.Peers {
		pb.Peers = append(pb.Peers, p.String())
	}
	return pb
}

func specFromPB(pb *agentpb.FenceSpec) (fence.Spec, error) {
	if pb == nil {
		return fence.Spec{}, invalid(fence.ErrInvalid, "spec is missing")
	}
	s := fence.Spec{VM: pb.GetVm(), Port: pb.GetPort(), MAC: pb.GetMac(), AllowVia: pb.GetAllowVia(),
		AllowMarks: pb.GetAllowMarks(), AllowIPsec: pb.GetAllowIpsec(), Hold: pb.GetHold()}
	for i, a := range pb.GetAddrs() {
		ad, err := netip.ParseAddr(a)
		if err != nil {
			return s, invalid(fence.ErrInvalid, "spec.addrs[%d] %q: %v (VM %q)", i, a, err, s.VM)
		}
		s.Addrs = append(s.Addrs, ad)
	}
	for i, p := range pb.GetPeers() {
		pr, err := netip.ParsePrefix(p)
		if err != nil {
			return s, invalid(fence.ErrInvalid, "spec.peers[%d] %q: %v (VM %q)", i, p, err, s.VM)
		}
		s.Peers = append(s.Peers, pr)
	}
	if err := s.Validate(); err != nil {
		return s, toStatus(err)
	}
	return s, nil
}

func fenceToPB(f fence.Fence) *agentpb.Fence {
	pb := &agentpb.Fence{Spec: specToPB(f.Spec), Backend: f.Backend}
	if !f.Since.IsZero() {
		pb.SinceUnixNano = f.Since.UnixNano()
	}
	return pb
}

// fenceFromPB converts a listed fence; a listed spec the client cannot
// parse is reported as it came (its text kept out of the typed fields).
func fenceFromPB(pb *agentpb.Fence) (fence.Fence, error) {
	s, err := specFromPB(pb.GetSpec())
	if err != nil {
		return fence.Fence{}, err
	}
	f := fence.Fence{Spec: s, Backend: pb.GetBackend()}
	if n := pb.GetSinceUnixNano(); n != 0 {
		f.Since = time.Unix(0, n)
	}
	return f, nil
}
