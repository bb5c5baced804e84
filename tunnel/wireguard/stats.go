package wireguard

import (
	"context"

	"github.com/sealift/sealift/tunnel"
)

var _ tunnel.EndStatser = (*End)(nil)

// Stats reads the counters of end id's device (its one peer's receive and
// transmit bytes and last handshake, from wgctrl in the End's netns): no
// key is read out of it. An end not connected yet has zero counters (its
// device has no peer); a device that is gone (a wireguard-go device of a
// previous run) is an error naming it. It waits for a call in progress on
// this End (Connect waits up to 2 s for a handshake); ctx bounds the rest.
func (e *End) Stats(ctx context.Context, id string) (tunnel.EndStats, error) {
	if err := ctx.Err(); err != nil {
		return tunnel.EndStats{}, err
	}
	e.mu.Lock()
	o, err := e.get(id)
	var dev string
	var connected bool
	if err == nil {
		dev, connected = o.st.Device, o.st.Connected
	}
	e.mu.Unlock()
	if err != nil || !connected {
		return tunnel.EndStats{}, err
	}
	p, err := peerStats(e.host, dev)
	if err != nil {
		return tunnel.EndStats{}, err
	}
	return tunnel.EndStats{RxBytes: uint64(p.ReceiveBytes), TxBytes: uint64(p.TransmitBytes), LastHandshake: p.LastHandshakeTime}, nil
}
