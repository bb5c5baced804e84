package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/sealift/sealift/internal/nsutil"
)

// Status is what the agent reports: its boot id and counter.
type Status struct {
	BootID  string
	Counter uint64
}

// ParseStatus parses "boot=ID counter=N" (the status port's answer) or a
// console line "sealift-counter N boot=ID".
func ParseStatus(line string) (Status, error) {
	var s Status
	f := strings.Fields(strings.TrimSpace(line))
	if len(f) == 3 && f[0] == "sealift-counter" {
		f = []string{f[2], "counter=" + f[1]}
	}
	for _, kv := range f {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "boot":
			s.BootID = v
		case "counter":
			n, err := strconv.ParseUint(v, 10, 64)
			if err != nil {
				return Status{}, fmt.Errorf("guest: bad counter in %q", line)
			}
			s.Counter = n
		}
	}
	if s.BootID == "" {
		return Status{}, fmt.Errorf("guest: no boot id in %q", line)
	}
	return s, nil
}

// Dial opens a TCP connection to addr:port from host's namespace.
func Dial(ctx context.Context, host string, addr netip.Addr, port int) (net.Conn, error) {
	var c net.Conn
	err := nsutil.Do(host, func() error {
		var d net.Dialer
		var err error
		// The socket is created in host's namespace and stays there.
		c, err = d.DialContext(ctx, "tcp", netip.AddrPortFrom(addr, uint16(port)).String())
		return err
	})
	return c, err
}

// Query asks the agent at addr (seen from host's namespace) for its status.
func Query(ctx context.Context, host string, addr netip.Addr) (Status, error) {
	c, err := Dial(ctx, host, addr, StatusPort)
	if err != nil {
		return Status{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return Status{}, fmt.Errorf("guest: read status from %s: %w", addr, err)
	}
	return ParseStatus(line)
}

// WaitReady polls the agent's status port until it answers or ctx ends
// (a guest boots in a few seconds under TCG).
func WaitReady(ctx context.Context, host string, addr netip.Addr) (Status, error) {
	var last error
	for {
		qctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		s, err := Query(qctx, host, addr)
		cancel()
		if err == nil {
			return s, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return Status{}, fmt.Errorf("guest %s not ready: %w (last: %v)", addr, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitCounter polls the agent until its counter exceeds above (the guest
// runs) or ctx ends.
func WaitCounter(ctx context.Context, host string, addr netip.Addr, above uint64) (Status, error) {
	for {
		s, err := WaitReady(ctx, host, addr)
		if err != nil {
			return s, err
		}
		if s.Counter > above {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("guest %s: counter stays at %d: %w", addr, s.Counter, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Echo sends msg to the echo port and checks it comes back unchanged.
func Echo(ctx context.Context, host string, addr netip.Addr, msg []byte) error {
	c, err := Dial(ctx, host, addr, EchoPort)
	if err != nil {
		return err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := c.Write(msg); err != nil {
		return err
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("guest: echo from %s: %w", addr, err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("guest: echo from %s: got %q, sent %q", addr, got, msg)
	}
	return nil
}

// Ping sends count ICMP echo requests from host's namespace (iputils
// ping) and returns an error unless all are answered.
func Ping(ctx context.Context, host string, addr netip.Addr, count int) error {
	var out []byte
	err := nsutil.Do(host, func() error {
		var err error
		out, err = exec.CommandContext(ctx, "ping", "-n", "-q", "-c", strconv.Itoa(count), "-i", "0.2", "-W", "2", addr.String()).CombinedOutput()
		return err
	})
	if err != nil {
		return fmt.Errorf("guest: ping %s from %q: %w: %s", addr, host, err, strings.TrimSpace(string(out)))
	}
	if !strings.Contains(string(out), fmt.Sprintf("%d received", count)) {
		return fmt.Errorf("guest: ping %s from %q: %s", addr, host, out)
	}
	return nil
}

// SerialCounters returns the first and last counter lines printed on a
// serial console file (ErrNoCounter if there is none).
func SerialCounters(path string) (first, last Status, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return first, last, err
	}
	found := false
	lines := strings.Split(string(data), "\n")
	for _, l := range lines[:len(lines)-1] { // the last one is unterminated

		i := strings.Index(l, "sealift-counter ")
		if i < 0 {
			continue
		}
		s, perr := ParseStatus(l[i:])
		if perr != nil {
			continue
		}
		if !found {
			first, found = s, true
		}
		last = s
	}
	if !found {
		return first, last, fmt.Errorf("%w in %s", ErrNoCounter, path)
	}
	return first, last, nil
}

// ErrNoCounter: a serial file holds no counter line.
var ErrNoCounter = errors.New("guest: no counter line")
