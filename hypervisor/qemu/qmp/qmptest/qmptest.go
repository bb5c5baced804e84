// Package qmptest provides a scripted qmp.Monitor for tests that drive
// code written against QMP without a QEMU: the test scripts the replies
// to commands, emits events and drops the connection when it likes, and
// reads back every command the code under test ran.
//
//	m := qmptest.NewMonitor()
//	m.Reply("query-status", map[string]any{"status": "running", "running": true})
//	m.Handle("migrate", func(json.RawMessage) (any, error) {
//		m.Emit("MIGRATION", map[string]any{"status": "setup"})
//		return struct{}{}, nil
//	})
//	... code under test runs on m ...
//	require.Equal(t, 1, m.Count("migrate"))
package qmptest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/sealift/sealift/hypervisor/qemu/qmp"
)

var _ qmp.Monitor = (*Monitor)(nil)

// Command is one command the code under test ran.
type Command struct {
	Name string
	Args json.RawMessage // nil without arguments
}

// Handler answers one command: it gets the command's arguments (nil
// without) and returns the return value (marshaled to JSON as QEMU's
// "return") or an error (a *qmp.Error for a QEMU error response).
type Handler func(args json.RawMessage) (any, error)

// Monitor is a scripted qmp.Monitor. Commands without a script are
// answered with a *qmp.Error of class CommandNotFound, as QEMU does for
// unknown commands. Its methods are safe for concurrent use; handlers run
// without its lock held, so they may Emit, Drop and script further.
type Monitor struct {
	mu       sync.Mutex
	handlers map[string]Handler
	cmds     []Command
	subs     map[int]chan qmp.Event
	nextSub  int
	err      error // set once the connection ended
	closed   bool  // Close was called
}

// NewMonitor returns an open Monitor with nothing scripted.
func NewMonitor() *Monitor {
	return &Monitor{handlers: map[string]Handler{}, subs: map[int]chan qmp.Event{}}
}

// Handle answers command with f from now on (replacing earlier scripts).
func (m *Monitor) Handle(command string, f Handler) {
	m.mu.Lock()
	m.handlers[command] = f
	m.mu.Unlock()
}

// Reply scripts the answers to command: each run returns the next of
// replies, and the last one again once they run out. A reply that is an
// error is returned as the error (use *qmp.Error for a QEMU error
// response); any other value is the command's return value. No replies:
// an empty object.
func (m *Monitor) Reply(command string, replies ...any) {
	if len(replies) == 0 {
		replies = []any{struct{}{}}
	}
	var mu sync.Mutex
	next := 0
	m.Handle(command, func(json.RawMessage) (any, error) {
		mu.Lock()
		r := replies[min(next, len(replies)-1)]
		next++
		mu.Unlock()
		if err, ok := r.(error); ok {
			return nil, err
		}
		return r, nil
	})
}

// Emit sends an event with data (marshaled to JSON) to every subscriber.
// Like qmp.Client it never blocks: a subscriber whose buffer is full
// loses the event. On an ended connection it does nothing.
func (m *Monitor) Emit(name string, data any) {
	raw, err := json.Marshal(data)
	if err != nil {
		panic(fmt.Sprintf("qmptest: event %s: %v", name, err))
	}
	ev := qmp.Event{Name: name, Data: raw, Time: time.Now()}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ch := range m.subs {
		select {
		case ch <- ev:
		default:
		}
	}
}

// Drop ends the connection as if QEMU's socket had gone away: subscriber
// channels close, Err reports it, and commands fail with qmp.ErrClosed.
func (m *Monitor) Drop() { m.end(fmt.Errorf("%w: dropped by qmptest", qmp.ErrClosed), false) }

func (m *Monitor) end(err error, byClose bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = m.closed || byClose
	if m.err != nil {
		return
	}
	m.err = err
	for id, ch := range m.subs {
		close(ch)
		delete(m.subs, id)
	}
}

// Execute records the command and answers it from the script.
func (m *Monitor) Execute(ctx context.Context, command string, args, out any) error {
	var raw json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("qmp %s: encode arguments: %w", command, err)
		}
		raw = b
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	m.mu.Lock()
	if m.err != nil {
		err := m.err
		m.mu.Unlock()
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	m.cmds = append(m.cmds, Command{Name: command, Args: raw})
	h := m.handlers[command]
	m.mu.Unlock()
	if h == nil {
		return &qmp.Error{Command: command, Class: "CommandNotFound", Desc: fmt.Sprintf("The command %s has not been found", command)}
	}
	ret, err := h(raw)
	if err != nil {
		return err
	}
	if out == nil || ret == nil {
		return nil
	}
	b, err := json.Marshal(ret)
	if err != nil {
		return fmt.Errorf("qmptest: %s: encode reply: %w", command, err)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("qmp %s: decode return: %w", command, err)
	}
	return nil
}

// Subscribe returns a channel receiving every event emitted from now on
// (buffered: 256) and a function that ends the subscription. The channel
// is closed when the connection ends.
func (m *Monitor) Subscribe() (<-chan qmp.Event, func()) {
	ch := make(chan qmp.Event, 256)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err != nil {
		close(ch)
		return ch, func() {}
	}
	id := m.nextSub
	m.nextSub++
	m.subs[id] = ch
	return ch, func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		if _, ok := m.subs[id]; ok {
			delete(m.subs, id)
			close(ch)
		}
	}
}

// Err returns why the connection ended (wrapping qmp.ErrClosed), or nil
// while it is open.
func (m *Monitor) Err() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

// Close ends the connection from the client's side.
func (m *Monitor) Close() error {
	m.end(fmt.Errorf("%w: closed", qmp.ErrClosed), true)
	return nil
}

// Closed reports whether the code under test called Close (also after a
// Drop: code that replaces a lost connection should close it).
func (m *Monitor) Closed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Commands returns the commands run so far, in order.
func (m *Monitor) Commands() []Command {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]Command(nil), m.cmds...)
}

// Names returns the names of the commands run so far, in order.
func (m *Monitor) Names() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := make([]string, len(m.cmds))
	for i, c := range m.cmds {
		n[i] = c.Name
	}
	return n
}

// Count reports how often command has been run.
func (m *Monitor) Count(command string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, c := range m.cmds {
		if c.Name == command {
			n++
		}
	}
	return n
}
