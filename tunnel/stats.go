package tunnel

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// EndStats are one link end's counters, as its host's encrypting layer
// counts them: the WireGuard peer's byte counters (ciphertext, WireGuard's
// own framing included) or the sum of the link's SAs at this host (XFRM
// lifetime counters: the bytes of the packets the SAs carried, before
// encryption or after decryption). Counters restart from zero when an end
// is opened again (a rekey is a new Open); they never hold key material.
type EndStats struct {
	// RxBytes were received and decrypted by this end, TxBytes encrypted
	// and sent by it.
	RxBytes, TxBytes uint64
	// LastHandshake is the end's last completed WireGuard handshake (zero:
	// none yet, or an XFRM end, which has no handshake).
	LastHandshake time.Time
}

// EndStatser is a LinkEnd that reports its ends' counters (optional: a
// monitoring agent asks for it with a type assertion). Stats reads the
// kernel (or the embedded device) and changes nothing; an end this host
// does not hold is ErrNoLink, and an end not connected yet has zero
// counters.
type EndStatser interface {
	Stats(ctx context.Context, id string) (EndStats, error)
}

var _ EndStatser = Kinds{}

// Stats asks the end that knows the link (ends that do not report
// counters are skipped: a link only they hold is ErrNoLink).
func (k Kinds) Stats(ctx context.Context, id string) (EndStats, error) {
	for _, kind := range k.kinds() {
		s, ok := k[kind].(EndStatser)
		if !ok {
			continue
		}
		st, err := s.Stats(ctx, id)
		if !errors.Is(err, ErrNoLink) {
			return st, err
		}
	}
	return EndStats{}, fmt.Errorf("%w: %q", ErrNoLink, id)
}
