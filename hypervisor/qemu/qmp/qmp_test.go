package qmp_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/sealift/sealift/hypervisor/qemu/qmp"
)

// fakeQEMU speaks the server side of QMP on conn: the greeting, then it
// answers commands by name. "slow" is answered only after the next
// command (out of order), and every "emit" sends an event first.
func fakeQEMU(t *testing.T, conn net.Conn, gotSlow chan<- struct{}) {
	t.Helper()
	go func() {
		defer conn.Close()
		w := json.NewEncoder(conn)
		_ = w.Encode(map[string]any{"QMP": map[string]any{"version": map[string]any{}, "capabilities": []string{}}})
		r := bufio.NewScanner(conn)
		var held map[string]any
		for r.Scan() {
			var req struct {
				Execute   string         `json:"execute"`
				ID        string         `json:"id"`
				Arguments map[string]any `json:"arguments"`
			}
			if json.Unmarshal(r.Bytes(), &req) != nil {
				return
			}
			switch req.Execute {
			case "slow":
				held = map[string]any{"return": map[string]any{"who": "slow"}, "id": req.ID}
				close(gotSlow)
				continue
			case "emit":
				_ = w.Encode(map[string]any{"event": "MIGRATION", "data": map[string]any{"status": "completed"},
					"timestamp": map[string]any{"seconds": 1, "microseconds": 2}})
				_ = w.Encode(map[string]any{"return": map[string]any{}, "id": req.ID})
			case "bad":
				_ = w.Encode(map[string]any{"error": map[string]any{"class": "GenericError", "desc": "no"}, "id": req.ID})
			default:
				_ = w.Encode(map[string]any{"return": map[string]any{"who": req.Execute, "arg": req.Arguments["x"]}, "id": req.ID})
			}
			if held != nil {
				_ = w.Encode(held)
				held = nil
			}
		}
	}()
}

func TestClient(t *testing.T) {
	cli, srv := net.Pipe()
	gotSlow := make(chan struct{})
	fakeQEMU(t, srv, gotSlow)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.NewClient(ctx, cli)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Out-of-order answers reach the right caller.
	slow := make(chan string, 1)
	go func() {
		var out struct{ Who string }
		if err := c.Execute(ctx, "slow", nil, &out); err != nil {
			slow <- err.Error()
			return
		}
		slow <- out.Who
	}()
	<-gotSlow // "slow" is pending at the server
	var out struct {
		Who string
		Arg float64
	}
	if err := c.Execute(ctx, "fast", map[string]any{"x": 7}, &out); err != nil || out.Who != "fast" || out.Arg != 7 {
		t.Fatalf("fast: %+v %v", out, err)
	}
	if got := <-slow; got != "slow" {
		t.Fatalf("slow: %s", got)
	}

	var qe *qmp.Error
	if err := c.Execute(ctx, "bad", nil, nil); !errors.As(err, &qe) || qe.Class != "GenericError" || qe.Desc != "no" {
		t.Fatalf("bad: %v", err)
	}

	events, unsub := c.Subscribe()
	if err := c.Execute(ctx, "emit", nil, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case ev := <-events:
		if ev.Name != "MIGRATION" || string(ev.Data) != `{"status":"completed"}` || ev.Time.Unix() != 1 {
			t.Fatalf("event %+v %s", ev, ev.Data)
		}
	case <-ctx.Done():
		t.Fatal("no event")
	}
	unsub()

	srv.Close()
	<-c.Done()
	if err := c.Execute(ctx, "after", nil, nil); !errors.Is(err, qmp.ErrClosed) {
		t.Fatalf("after close: %v, want ErrClosed", err)
	}
}
