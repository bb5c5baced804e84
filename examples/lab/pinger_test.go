package main

import (
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/internal/lab"
)

// record builds a pinger record: an echo every 5 ms from t0, answered
// after rtt(i) (negative: never).
func record(n int, rtt func(i int) time.Duration) (echoes, time.Time) {
	t0 := time.Unix(1000, 0)
	e := echoes{interval: 5 * time.Millisecond}
	for i := range n {
		st := t0.Add(time.Duration(i) * e.interval)
		e.sent = append(e.sent, st)
		var rt time.Time
		if d := rtt(i); d >= 0 {
			rt = st.Add(d)
		}
		e.recv = append(e.recv, rt)
	}
	return e, t0
}

func TestWindowSteady(t *testing.T) {
	e, t0 := record(100, func(int) time.Duration { return time.Millisecond })
	s := e.window(t0, t0.Add(500*time.Millisecond))
	assert.Equal(t, 100, s.Sent)
	assert.Equal(t, 100, s.Answered)
	assert.Zero(t, s.Blackout, "a reply every interval is no blackout")
	assert.Zero(t, s.Late)
	assert.Equal(t, time.Millisecond, s.MaxRTT)
}

// Echoes sent during a switchover answered late, in a burst, are not
// saved packets: the peer saw nothing arrive meanwhile.
func TestWindowLateBurstIsBlackout(t *testing.T) {
	// Echoes 40..79 (200..395 ms) are held and all answered at 400 ms.
	e, t0 := record(100, func(i int) time.Duration {
		if i >= 40 && i < 80 {
			st := time.Duration(i) * 5 * time.Millisecond
			return 400*time.Millisecond - st
		}
		return time.Millisecond
	})
	s := e.window(t0, t0.Add(600*time.Millisecond))
	assert.Equal(t, 100, s.Answered, "every echo was answered")
	// Last timely reply: echo 39 at 196 ms; next arrival: the burst at
	// 400 ms; minus one interval.
	assert.Equal(t, 400*time.Millisecond-196*time.Millisecond-5*time.Millisecond, s.Blackout)
	assert.Equal(t, t0.Add(196*time.Millisecond), s.BlackoutStart)
	assert.Equal(t, 36, s.Late, "echoes sent before 380 ms waited more than 20 ms")
	assert.Equal(t, 200*time.Millisecond, s.MaxRTT)
}

func TestWindowOutageAtEndCountsToEnd(t *testing.T) {
	e, t0 := record(100, func(i int) time.Duration {
		if i >= 50 {
			return -1
		}
		return time.Millisecond
	})
	s := e.window(t0, t0.Add(500*time.Millisecond))
	assert.Equal(t, 50, s.Answered)
	assert.Equal(t, 500*time.Millisecond-246*time.Millisecond-5*time.Millisecond, s.Blackout)
}

func TestWindowNoReplyIsWholeWindow(t *testing.T) {
	e, t0 := record(100, func(int) time.Duration { return -1 })
	s := e.window(t0, t0.Add(500*time.Millisecond))
	assert.Zero(t, s.Answered)
	assert.Equal(t, 495*time.Millisecond, s.Blackout)
}

func TestFirstReplyAfter(t *testing.T) {
	// Echoes sent before 100 ms are answered late (at 150 ms); those sent
	// after are answered at once, but only from 120 ms on.
	e, t0 := record(60, func(i int) time.Duration {
		st := time.Duration(i) * 5 * time.Millisecond
		switch {
		case st < 100*time.Millisecond:
			return 150*time.Millisecond - st
		case st < 120*time.Millisecond:
			return -1
		}
		return time.Millisecond
	})
	at, ok := e.firstReplyAfter(t0.Add(100 * time.Millisecond))
	assert.True(t, ok)
	// The late replies at 150 ms answer echoes sent before t: they do not
	// count; the first echo sent at/after 100 ms that was answered is the
	// one sent at 120 ms.
	assert.Equal(t, t0.Add(121*time.Millisecond), at)
	_, ok = e.firstReplyAfter(t0.Add(time.Second))
	assert.False(t, ok)
}

// TestPingerIPv6: the pinger over ICMPv6 in the dual-stack topology gets
// its replies (kernel timestamps, its own id) from the VM endpoint, and
// nothing from an address nobody has.
func TestPingerIPv6(t *testing.T) {
	lab.RequireRoot(t)
	l := lab.New(t)
	require.NoError(t, l.DualStack(false))
	require.NoError(t, lab.WaitReachable(l.Peer2, lab.VMAddr6, 5*time.Second))
	p, err := startPinger(l.Peer2, lab.VMAddr6, pingEvery, 0x5999, marker)
	require.NoError(t, err)
	nobody, err := startPinger(l.Peer2, netip.MustParseAddr("fd00:1::99"), pingEvery, 0x599a, marker)
	require.NoError(t, err)
	t0 := time.Now()
	time.Sleep(300 * time.Millisecond)
	p.Stop()
	nobody.Stop()
	s := p.Between(t0, time.Now())
	assert.Greater(t, s.Sent, 20)
	assert.GreaterOrEqual(t, s.Answered, s.Sent-2, "IPv6 echoes answered: %+v", s)
	assert.Zero(t, nobody.Between(t0, time.Now()).Answered, "replies to an address nobody has")
}

// TestWANResultIPv6Control: the IPv6 control is counted apart from the
// IPv4 one, and neither counts as plaintext; a frame beyond them does.
func TestWANResultIPv6Control(t *testing.T) {
	st := func(watched, watched6, mark int) lab.CaptureStats {
		return lab.CaptureStats{Frames: 10 + watched, Watched: watched, Watched6: watched6, Marker: mark, ByKind: map[string]int{lab.KindUnknown: watched}}
	}
	marks := []lab.CaptureStats{st(0, 0, 0), st(1, 0, 1), st(2, 1, 2)}
	r := wanResult(st(2, 1, 2), marks, nil)
	assert.Equal(t, 1, r.ControlByAddress)
	assert.Equal(t, 1, *r.ControlV6ByAddress)
	assert.Equal(t, 1, *r.ControlV6ByMarker)
	assert.Zero(t, r.PlaintextByAddress)
	assert.Zero(t, r.PlaintextByAddressV6)
	assert.Zero(t, r.PlaintextByMarker)
	assert.Zero(t, r.Unknown)

	r = wanResult(st(3, 2, 2), marks, nil) // one IPv6 frame in clear later
	assert.Equal(t, 1, r.PlaintextByAddress)
	assert.Equal(t, 1, r.PlaintextByAddressV6)

	r = wanResult(st(1, 0, 1), marks[:2], nil) // IPv4 wan, no IPv6 control sent
	assert.Nil(t, r.ControlV6ByAddress)
	assert.Zero(t, r.PlaintextByAddress)
}
