package ipsec

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Rekey replaces the link's SAs with fresh keys and SPIs without losing
// traffic: the new SAs go in at both ends first (both can now decrypt
// either generation: the in/fwd templates accept any SPI of the reqid),
// then each end's out policy template switches to the new SPI, then the
// old SAs are removed once the new ones have carried a packet in each
// direction that had traffic (or after the Linker's rekey grace period,
// when nothing flows and so nothing is in flight).
func (k *Linker) Rekey(ctx context.Context, id string) error {
	l, err := k.get(id)
	if err != nil {
		return err
	}
	l.op.Lock()
	defer l.op.Unlock()
	es, err := openEnds(l.spec)
	if err != nil {
		return err
	}
	defer es.close()
	keys, err := newKeys(l.alg)
	if err != nil {
		return err
	}
	next, err := newSPIs(l)
	if err != nil {
		return err
	}
	old := l.spi
	if err := es.addStates(l, next, keys); err != nil {
		return err
	}
	action := netlinkBlock
	if l.active {
		action = netlinkAllow
	}
	for _, e := range es {
		if err := e.updatePolicies(e.outPolicies(l, action, next[e.out])); err != nil {
			// Back to the old SAs; the new ones go.
			var errs []error
			for _, e2 := range es {
				errs = append(errs, e2.updatePolicies(e2.outPolicies(l, action, old[e2.out])))
				errs = append(errs, e2.deleteSAs(l, next))
			}
			return errors.Join(append([]error{err}, errs...)...)
		}
	}
	k.mu.Lock()
	l.spi = next
	k.mu.Unlock()
	if l.active {
		es.awaitTraffic(ctx, l, old, next, k.rekeyGrace)
	}
	var errs []error
	for _, e := range es {
		errs = append(errs, e.deleteSAs(l, old))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	k.log.Info("ipsec: link rekeyed", "link", id)
	return nil
}

// awaitTraffic waits, per direction, until the new SA has decrypted a
// packet at the receiver (so every packet sent with the old SA before the
// switch has arrived: the path keeps order), bounded by grace and ctx.
func (es ends) awaitTraffic(ctx context.Context, l *link, old, next [2]uint32, grace time.Duration) {
	deadline := time.Now().Add(grace)
	for d := range next {
		recv := es[1]
		if d == remoteToSecure {
			recv = es[0]
		}
		for time.Now().Before(deadline) && ctx.Err() == nil {
			st, err := recv.h.XfrmStateGet(stateID(l, d, next[d]))
			if err != nil || st.Statistics.Packets > 0 {
				break
			}
			// Poll: the kernel emits no event for SA use.
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}

// deleteSAs removes the SAs with spis (both directions) at this end.
func (e *end) deleteSAs(l *link, spis [2]uint32) error {
	var errs []error
	for d, spi := range spis {
		if spi == 0 {
			continue
		}
		if err := ignoreGone(e.h.XfrmStateDel(stateID(l, d, spi))); err != nil {
			errs = append(errs, fmt.Errorf("ipsec: host %q: delete SA spi 0x%08x: %w", e.host, spi, err))
		}
	}
	return errors.Join(errs...)
}
