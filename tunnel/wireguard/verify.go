package wireguard

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sealift/sealift/tunnel"
)

// Activate and Verify read the peer counters after 1 ms, then at doubling
// intervals up to maxPoll: a handshake takes about a millisecond here.
const maxPoll = 16 * time.Millisecond

type backoff struct{ d time.Duration }

func newBackoff() *backoff { return &backoff{d: time.Millisecond / 2} }

// next returns a channel that fires after the next interval.
func (b *backoff) next() <-chan time.Time {
	b.d = min(2*b.d, maxPoll)
	return time.After(b.d)
}

// sessionLive reports whether a handshake at t still keys a session:
// WireGuard rejects a session's keys 180 s after its handshake.
func sessionLive(t time.Time) bool {
	return !t.IsZero() && time.Since(t) < 170*time.Second
}

// Verify proves the link encrypts: it makes both ends send a keepalive
// (the secure end first; which runs a handshake if there is no session)
// and waits until both
// ends report a completed handshake and their transmit and receive byte
// counters rose. Without that before the context's deadline (or the
// Linker's verify timeout) it returns an error wrapping
// tunnel.ErrNotProven that says what was missing. WireGuard counts bytes,
// not packets: Proof's packet counts stay 0.
func (l *Linker) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	lk, err := l.get(id)
	if err != nil {
		return tunnel.Proof{}, err
	}
	lk.mu.Lock()
	defer lk.mu.Unlock()
	if lk.gone {
		return tunnel.Proof{}, fmt.Errorf("%w: %q", tunnel.ErrNoLink, id)
	}
	if !lk.st.Link.Active {
		return tunnel.Proof{}, fmt.Errorf("%w: link %q is not active", tunnel.ErrNotProven, id)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, l.verifyTimeout)
		defer cancel()
	}
	ends := lk.st.Ends
	var before [2]wgtypes.Peer
	for i, e := range ends {
		if before[i], err = peerStats(e.Host, e.Device); err != nil {
			return tunnel.Proof{}, fmt.Errorf("%w: %w", tunnel.ErrNotProven, err)
		}
	}
	// Kick the secure end first and the remote end once the secure end
	// has a live session, so the two never start crossing handshakes
	// (which void each other until WireGuard retries 5 s later).
	if err := kickKeepalive(ends[0].Host, ends[0].Device, l.keepalive); err != nil {
		return tunnel.Proof{}, fmt.Errorf("%w: %w", tunnel.ErrNotProven, err)
	}
	remoteKicked := false
	wait := newBackoff()
	for {
		var now [2]wgtypes.Peer
		var missing []error
		for i, e := range ends {
			p, err := peerStats(e.Host, e.Device)
			if err != nil {
				return tunnel.Proof{}, fmt.Errorf("%w: %w", tunnel.ErrNotProven, err)
			}
			now[i] = p
			switch {
			case p.LastHandshakeTime.IsZero():
				missing = append(missing, fmt.Errorf("%s end %s: no handshake", e.Role, e.Device))
			case p.TransmitBytes <= before[i].TransmitBytes:
				missing = append(missing, fmt.Errorf("%s end %s: transmit counter stays at %d", e.Role, e.Device, p.TransmitBytes))
			case p.ReceiveBytes <= before[i].ReceiveBytes:
				missing = append(missing, fmt.Errorf("%s end %s: receive counter stays at %d", e.Role, e.Device, p.ReceiveBytes))
			}
		}
		if !remoteKicked && sessionLive(now[0].LastHandshakeTime) {
			if err := kickKeepalive(ends[1].Host, ends[1].Device, l.keepalive); err != nil {
				return tunnel.Proof{}, fmt.Errorf("%w: %w", tunnel.ErrNotProven, err)
			}
			remoteKicked = true
			continue // read the counters again at once
		}
		if len(missing) == 0 {
			pr := tunnel.Proof{
				Handshake: now[0].LastHandshakeTime,
				TxBytes:   uint64(now[0].TransmitBytes + now[1].TransmitBytes),
				RxBytes:   uint64(now[0].ReceiveBytes + now[1].ReceiveBytes),
				Detail: fmt.Sprintf("%s: %s handshake %s tx %d rx %d; %s handshake %s tx %d rx %d",
					lk.st.Link.Backend,
					ends[0].Device, now[0].LastHandshakeTime.Format(time.RFC3339Nano), now[0].TransmitBytes, now[0].ReceiveBytes,
					ends[1].Device, now[1].LastHandshakeTime.Format(time.RFC3339Nano), now[1].TransmitBytes, now[1].ReceiveBytes),
			}
			return pr, nil
		}
		select {
		case <-ctx.Done():
			return tunnel.Proof{}, fmt.Errorf("%w: link %q: %w (%v)", tunnel.ErrNotProven, id, errors.Join(missing...), ctx.Err())
		case <-wait.next():
		}
	}
}
