package agent

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sealift/sealift/agent/agentpb"
)

// FuzzFenceSpec: whatever a client sends as a FenceSpec, the agent
// either decodes a Spec that validates or refuses it with
// InvalidArgument, without panicking. (go test -fuzz FuzzFenceSpec
// ./agent/ explores; the seeds run with every go test.)
func FuzzFenceSpec(f *testing.F) {
	f.Add("vm-1", "vm0", "52:54:00:00:00:01", "10.1.0.10,fd00::10", "wg0", uint32(7), "10.2.0.0/24", true, true)
	f.Add("", "", "", "", "", uint32(0), "", false, false)
	f.Add("vm", "p0", "zz", "10.1.0.x", "p0", uint32(0x5ea1f1c7), "10.2.0.1/24", true, false)
	f.Add("vm", "0123456789abcdefg", "", "::ffff:10.0.0.1", "", uint32(1), "0.0.0.0/0", false, true)
	f.Fuzz(func(t *testing.T, vm, port, mac, addrs, via string, mark uint32, peers string, ipsec, hold bool) {
		pb := &agentpb.FenceSpec{Vm: vm, Port: port, Mac: mac, AllowMarks: []uint32{mark}, AllowIpsec: ipsec, Hold: hold}
		if addrs != "" {
			pb.Addrs = strings.Split(addrs, ",")
		}
		if via != "" {
			pb.AllowVia = strings.Split(via, ",")
		}
		if peers != "" {
			pb.Peers = strings.Split(peers, ",")
		}
		s, err := specFromPB(pb)
		if err != nil {
			if c := status.Code(err); c != codes.InvalidArgument {
				t.Fatalf("refused with %v, want InvalidArgument: %v", c, err)
			}
			return
		}
		if err := s.Validate(); err != nil {
			t.Fatalf("decoded a spec that does not validate: %v", err)
		}
	})
}
