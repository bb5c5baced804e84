package conn

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// scripted is a ConnAuditor whose List returns the next snapshot each
// call (the last one forever).
type scripted struct {
	mu    sync.Mutex
	snaps [][]Conn
	calls int
	err   error
}

func (s *scripted) List(ctx context.Context, sel Selector) ([]Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	if s.err != nil {
		return nil, s.err
	}
	i := min(s.calls-1, len(s.snaps)-1)
	return s.snaps[i], nil
}

func (s *scripted) Reset(context.Context, Selector, []Conn) (ResetResult, error) {
	return ResetResult{}, nil
}

var _ ConnAuditor = (*scripted)(nil)

func TestWaitReestablished(t *testing.T) {
	sel := Selector{Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}}
	p := Policy{WireGuardDevices: []string{"wg0"}}
	asClient := c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "eth0", "")
	asServer := c(TCP, "10.1.0.10:22", "10.2.0.30:51000", "eth0", "")
	udp := c(UDP, "10.1.0.10:40001", "10.2.0.20:53", "eth0", "")
	established := func(x Conn) Conn { x.State = "ESTABLISHED"; return x }

	newClient := established(c(TCP, "10.1.0.10:40100", "10.2.0.20:8080", "wg0", ""))
	newServer := established(c(TCP, "10.1.0.10:22", "10.2.0.30:51999", "eth0", ""))
	newUDP := c(UDP, "10.1.0.10:40002", "10.2.0.20:53", "wg0", "")
	a := &scripted{snaps: [][]Conn{
		{established(asClient), established(asServer), udp},                                                        // old ones still there
		{established(asClient), {Proto: TCP, Local: newClient.Local, Remote: newClient.Remote, State: "SYN_SENT"}}, // not yet
		{newServer, newClient, newUDP, established(c(TCP, "10.1.0.10:40200", "10.2.0.99:8080", "eth0", ""))},
	}}
	vs, err := WaitReestablished(t.Context(), a, sel, []Conn{asClient, asServer, udp, asClient}, p)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != 3 || a.calls != 3 {
		t.Fatalf("verdicts %+v after %d calls", vs, a.calls)
	}
	for i, want := range []struct {
		conn   Conn
		reason Reason
	}{{newClient, ReasonWireGuard}, {newServer, ReasonUnsecured}, {newUDP, ReasonWireGuard}} {
		if vs[i].Conn != want.conn || vs[i].Reason != want.reason || vs[i].Secure != (want.reason != ReasonUnsecured) {
			t.Errorf("verdict %d = %+v, want %v %s", i, vs[i], want.conn, want.reason)
		}
	}
}

func TestWaitReestablishedGivesUp(t *testing.T) {
	sel := Selector{Addrs: []netip.Prefix{netip.MustParsePrefix("10.1.0.10/32")}}
	old := c(TCP, "10.1.0.10:40000", "10.2.0.20:8080", "eth0", "")
	other := c(TCP, "10.1.0.10:40001", "10.2.0.20:9090", "eth0", "")
	back := c(TCP, "10.1.0.10:40002", "10.2.0.20:9090", "eth0", "")
	a := &scripted{snaps: [][]Conn{{old, back}}}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	vs, err := WaitReestablished(ctx, a, sel, []Conn{old, other}, Policy{})
	if !errors.Is(err, context.DeadlineExceeded) || len(vs) != 1 || vs[0].Conn != back {
		t.Fatalf("got %+v, %v; want the one found and DeadlineExceeded", vs, err)
	}

	boom := errors.New("boom")
	if _, err := WaitReestablished(t.Context(), &scripted{err: boom}, sel, []Conn{old}, Policy{}); !errors.Is(err, boom) {
		t.Errorf("List error: %v", err)
	}
	if _, err := WaitReestablished(t.Context(), a, Selector{}, []Conn{old}, Policy{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("empty selector: %v", err)
	}
	if _, err := WaitReestablished(t.Context(), nil, sel, []Conn{old}, Policy{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil auditor: %v", err)
	}
	if vs, err := WaitReestablished(t.Context(), a, sel, nil, Policy{}); err != nil || len(vs) != 0 {
		t.Errorf("nothing to wait for: %+v, %v", vs, err)
	}
}
