package ipsec

import (
	"context"
	"fmt"

	"github.com/sealift/sealift/tunnel"
)

var _ tunnel.EndStatser = (*End)(nil)

// Stats sums the byte counters of the SAs that carry end id at this host
// (found by the link's reqid, so a rekey's old and new SAs both count
// while both exist): RxBytes those of the SAs toward this end's underlay
// address (decrypted here), TxBytes those from it (encrypted here). XFRM
// counts the packets' bytes before encryption and after decryption, and
// has no handshake (LastHandshake stays zero). No key is returned or
// logged. An end not connected yet has zero counters; ends List found
// only in the kernel (a previous run's, without their state files) are
// ErrNoLink, as are unknown ones. Stats waits for no call in progress on
// the end (a Verify's probe, say): it reads the kernel only.
func (e *End) Stats(ctx context.Context, id string) (tunnel.EndStats, error) {
	if err := checkID(id); err != nil {
		return tunnel.EndStats{}, err
	}
	if err := ctx.Err(); err != nil {
		return tunnel.EndStats{}, err
	}
	e.mu.Lock()
	o := e.ends[id]
	var st tunnel.EndState
	if o != nil {
		st = o.st // under e.mu (setState)
	}
	e.mu.Unlock()
	if st.Spec.ID == "" { // unknown, or being opened
		return tunnel.EndStats{}, fmt.Errorf("%w: %q on %s", tunnel.ErrNoLink, id, e.hostLabel())
	}
	if !st.Connected {
		return tunnel.EndStats{}, nil
	}
	local := st.Spec.Secure.Underlay.Unmap()
	if st.Role == tunnel.RemoteRole {
		local = st.Spec.Remote.Underlay.Unmap()
	}
	h, err := openHandle(e.host)
	if err != nil {
		return tunnel.EndStats{}, err
	}
	defer h.Close()
	sas, err := (&end{host: e.host, h: h}).states(ReqID(id))
	if err != nil {
		return tunnel.EndStats{}, err
	}
	var s tunnel.EndStats
	for _, sa := range sas {
		switch {
		case addrOf(sa.Dst) == local:
			s.RxBytes += sa.Statistics.Bytes
		case addrOf(sa.Src) == local:
			s.TxBytes += sa.Statistics.Bytes
		}
	}
	return s, nil
}
