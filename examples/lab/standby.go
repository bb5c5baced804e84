package main

// The crash matrix with an etcd journal (-standby): a 3-member etcd
// cluster (embedded in the lab's process, in its own namespace's address
// on a veth into the controllers' namespace), the owning controller
// (`sealift migrate -name owner`) and a standby (`sealift controller
// -name standby`), both in ctl. The owner is killed; the standby claims
// the migration once the owner's lease has expired and finishes it.

import (
	"context"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sealift/sealift/internal/etcdlab"
	"github.com/sealift/sealift/internal/lab"
)

// leaseTTL is the controllers' lease in the lab: a dead owner's
// migration is the standby's this long after its last renewal.
const leaseTTL = 3 * time.Second

// etcdNet is the /30 between the lab's namespace (.1, etcd's members)
// and ctl (.2): derived from the lab's prefix, so that labs running at
// once do not collide.
func etcdNet(prefix string) (root, ctl netip.Addr) {
	h := fnv.New32a()
	h.Write([]byte(prefix))
	v := h.Sum32()
	base := netip.AddrFrom4([4]byte{10, 251, byte(v >> 8), byte(v&63) * 4})
	return base.Next(), base.Next().Next()
}

// startEtcd starts the cluster the controllers share and points the
// controller's configuration at it.
func (w *world) startEtcd(t lab.TB) error {
	r := w.rm
	root, ctl := etcdNet(w.l.Prefix)
	name := w.l.Prefix + "e"
	if len(name) > 15 {
		name = name[:15]
	}
	if err := lab.Veth(r.ctl, "etcd0", ctl.String()+"/30", "", name, root.String()+"/30"); err != nil {
		return fmt.Errorf("the link to etcd: %w", err)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", name).Run() })
	dir := filepath.Join(w.dir, "etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	c, err := etcdlab.StartIn(t, 3, root.String(), dir)
	if err != nil {
		return err
	}
	r.etcd = c.Endpoints()
	return w.writeControllerConfig()
}

// standbyProc is the standby controller, running throughout.
type standbyProc struct {
	*ctlProc
	took    chan string    // its "took over" lines
	claimed chan time.Time // when it started recovering a migration (it had claimed it)
}

func (w *world) startStandby(ctx context.Context) (*standbyProc, error) {
	c, err := w.startController(ctx, "controller", "-name", "standby")
	if err != nil {
		return nil, err
	}
	s := &standbyProc{ctlProc: c, took: make(chan string, 8), claimed: make(chan time.Time, 8)}
	go func() {
		for line := range c.lines {
			switch {
			case strings.HasPrefix(line, "started: recovery "):
				s.claimed <- time.Now()
			case strings.HasPrefix(line, "took over "):
				s.took <- line
			}
		}
	}()
	// It watches once it says so.
	return s, nil
}

func (s *standbyProc) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
	}
	s.wait()
}

// standbyTakeover waits for the standby to take the migration over and
// returns its outcome and reason (from its "took over ID (VM x): OUTCOME
// REASON" line).
func (w *world) standbyTakeover(ctx context.Context, s *standbyProc, limit time.Duration) (outcome, line string, err error) {
	select {
	case line = <-s.took:
	case <-s.done:
		return "", "", fmt.Errorf("the standby exited: %v", s.wait().err)
	case <-time.After(limit):
		return "", "", fmt.Errorf("the standby took nothing over in %v", limit)
	case <-ctx.Done():
		return "", "", ctx.Err()
	}
	if _, rest, ok := strings.Cut(line, "): "); ok {
		outcome, _, _ = strings.Cut(rest, " ")
	}
	return outcome, line, nil
}

// journalUnfinished asks `sealift status` (as an operator would) how many
// migrations the journal holds unfinished.
func (w *world) journalUnfinished(ctx context.Context) (int, error) {
	c, err := w.startController(ctx, "status")
	if err != nil {
		return 0, err
	}
	<-c.done
	if err := c.cmd.Wait(); err != nil { // (not c.wait: no reports here)
		return 0, fmt.Errorf("sealift status: %w: %s", err, strings.Join(c.tail, " | "))
	}
	var sts []struct {
		State string `json:"state"`
	}
	if err := json.Unmarshal(c.stdout.Bytes(), &sts); err != nil {
		return 0, fmt.Errorf("sealift status -json: %w", err)
	}
	n := 0
	for _, s := range sts {
		switch s.State {
		case "unfinished", "running", "orphaned": // (bbolt; etcd: by its owner's lease)
			n++
		}
	}
	return n, nil
}

// inspected is what `sealift inspect HOST -json` shows of a host.
type inspected struct {
	Fences int `json:"fences"`
	Links  int `json:"link_ends"`
}

// inspectHosts runs `sealift inspect` (as an operator would) on A and B.
func (w *world) inspectHosts(ctx context.Context) (map[string]inspected, error) {
	out := map[string]inspected{}
	for _, h := range []string{"host-a", "host-b"} {
		c, err := w.startController(ctx, "inspect", h)
		if err != nil {
			return nil, err
		}
		<-c.done
		if err := c.cmd.Wait(); err != nil {
			return nil, fmt.Errorf("sealift inspect %s: %w: %s", h, err, strings.Join(c.tail, " | "))
		}
		var st struct {
			Fences []json.RawMessage `json:"fences"`
			Links  []json.RawMessage `json:"links"`
		}
		if err := json.Unmarshal(c.stdout.Bytes(), &st); err != nil {
			return nil, fmt.Errorf("sealift inspect %s -json: %w", h, err)
		}
		out[h] = inspected{Fences: len(st.Fences), Links: len(st.Links)}
	}
	return out, nil
}

// agentsHold is what the agents' own lists hold on A and B (the lab's
// clients), for comparing with what sealift inspect shows.
func (w *world) agentsHold(ctx context.Context) (map[string]inspected, error) {
	out := map[string]inspected{}
	for _, h := range []string{"host-a", "host-b"} {
		cl := w.rm.agents[h].client
		es, err := cl.LinkEnd().List(ctx)
		if err != nil {
			return nil, err
		}
		f, err := cl.Fencer(ctx)
		if err != nil {
			return nil, err
		}
		fs, err := f.List(ctx)
		if err != nil {
			return nil, err
		}
		out[h] = inspected{Fences: len(fs), Links: len(es)}
	}
	return out, nil
}
