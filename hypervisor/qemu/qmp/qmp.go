// Package qmp is a small client for the QEMU Machine Protocol: it reads
// the greeting, negotiates capabilities, runs commands tagged with an id
// (several may be in flight) and fans asynchronous events out to
// subscribers. Code that drives QEMU takes a Monitor, which *Client
// implements and package qmptest scripts for tests.
package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"time"
)

// ErrClosed is returned for commands on a closed connection (also when
// QEMU went away).
var ErrClosed = errors.New("qmp: connection closed")

// Error is an error response from QEMU.
type Error struct {
	Command string
	Class   string
	Desc    string
}

func (e *Error) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// Event is an asynchronous QMP event.
type Event struct {
	Name string          `json:"event"`
	Data json.RawMessage `json:"data"`
	Time time.Time       `json:"-"`
}

type message struct {
	Event     string          `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
	Return json.RawMessage `json:"return"`
	Error  *struct {
		Class string `json:"class"`
		Desc  string `json:"desc"`
	} `json:"error"`
	ID  string          `json:"id"`
	QMP json.RawMessage `json:"QMP"`
}

// Monitor is a QMP connection as sealift's QEMU backend uses it: commands,
// the asynchronous events, and how the connection ended. *Client is the
// real one; package qmptest has a scripted one for tests.
type Monitor interface {
	// Execute runs command with args (nil or a JSON-marshalable value)
	// and decodes the return value into out (if not nil). A QEMU error
	// response is returned as *Error; on a connection that has ended the
	// error wraps ErrClosed.
	Execute(ctx context.Context, command string, args, out any) error
	// Subscribe returns a channel receiving every event from now on and a
	// function that ends the subscription. The channel is closed when the
	// connection ends.
	Subscribe() (<-chan Event, func())
	// Err returns why the connection ended (wrapping ErrClosed), or nil
	// while it is open.
	Err() error
	// Close closes the connection.
	Close() error
}

var _ Monitor = (*Client)(nil)

// Client is one QMP connection. Its methods are safe for concurrent use.
type Client struct {
	conn net.Conn

	wmu sync.Mutex // serialises writes

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan message
	subs    map[int]chan Event
	nextSub int
	err     error // set once the reader stopped
	done    chan struct{}
}

// Dial connects to the QMP unix socket at path, reads the greeting and
// leaves capabilities negotiation mode.
func Dial(ctx context.Context, path string) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient speaks QMP over an established connection: it waits for the
// greeting (bounded by ctx) and runs qmp_capabilities.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetReadDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	r := bufio.NewReaderSize(conn, 64<<10)
	line, err := r.ReadBytes('\n')
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("qmp: read greeting: %w", err)
	}
	var greet message
	if err := json.Unmarshal(line, &greet); err != nil || greet.QMP == nil {
		return nil, fmt.Errorf("qmp: unexpected greeting %q", line)
	}
	_ = conn.SetReadDeadline(time.Time{})
	c := &Client{conn: conn, pending: map[string]chan message{}, subs: map[int]chan Event{}, done: make(chan struct{})}
	go c.read(r)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

func (c *Client) read(r *bufio.Reader) {
	var err error
	for {
		var line []byte
		line, err = r.ReadBytes('\n')
		if err != nil {
			break
		}
		var m message
		if json.Unmarshal(line, &m) != nil {
			continue
		}
		if m.Event != "" {
			ev := Event{Name: m.Event, Data: m.Data,
				Time: time.Unix(m.Timestamp.Seconds, m.Timestamp.Microseconds*1000)}
			c.mu.Lock()
			for _, ch := range c.subs {
				select {
				case ch <- ev:
				default: // a slow subscriber loses events rather than blocking QMP
				}
			}
			c.mu.Unlock()
			continue
		}
		c.mu.Lock()
		ch := c.pending[m.ID]
		delete(c.pending, m.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- m
		}
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %v", ErrClosed, err)
	for id, ch := range c.pending {
		close(ch)
		delete(c.pending, id)
	}
	for id, ch := range c.subs {
		close(ch)
		delete(c.subs, id)
	}
	c.mu.Unlock()
	close(c.done)
}

// Execute runs command with args (nil or a JSON-marshalable value) and
// decodes the return value into out (if not nil). A QEMU error response
// is returned as *Error.
func (c *Client) Execute(ctx context.Context, command string, args, out any) error {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.nextID++
	id := strconv.FormatUint(c.nextID, 10)
	ch := make(chan message, 1)
	c.pending[id] = ch
	c.mu.Unlock()

	req := map[string]any{"execute": command, "id": id}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: encode arguments: %w", command, err)
	}
	c.wmu.Lock()
	_, err = c.conn.Write(append(b, '\n'))
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return fmt.Errorf("qmp %s: %w: %v", command, ErrClosed, err)
	}
	select {
	case m, ok := <-ch:
		if !ok {
			return fmt.Errorf("qmp %s: %w", command, c.Err())
		}
		if m.Error != nil {
			return &Error{Command: command, Class: m.Error.Class, Desc: m.Error.Desc}
		}
		if out != nil && m.Return != nil {
			if err := json.Unmarshal(m.Return, out); err != nil {
				return fmt.Errorf("qmp %s: decode return: %w", command, err)
			}
		}
		return nil
	case <-ctx.Done():
		c.forget(id)
		return fmt.Errorf("qmp %s: %w", command, ctx.Err())
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Subscribe returns a channel receiving every event from now on (buffered;
// a subscriber that falls more than 256 events behind loses events) and a
// function that ends the subscription. The channel is closed when the
// connection ends.
func (c *Client) Subscribe() (<-chan Event, func()) {
	ch := make(chan Event, 256)
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		close(ch)
		return ch, func() {}
	}
	id := c.nextSub
	c.nextSub++
	c.subs[id] = ch
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		if _, ok := c.subs[id]; ok {
			delete(c.subs, id)
			close(ch)
		}
		c.mu.Unlock()
	}
}

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended, or nil while it is open.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }
