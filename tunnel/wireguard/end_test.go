package wireguard

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// TestEndPair: two hosts' Ends composed by tunnel.Pair (as a controller
// does with two agents) make a working link: each device holds a private
// key made on its host, the other host's device knows only its public
// key, the exchange crosses the wan encrypted (no marker in clear), the
// pair verifies, and Close leaves both hosts as they were.
func TestEndPair(t *testing.T) {
	w := newWorld(t)
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	a, b := NewEnd(w.l.A, WithBackend(Userspace), WithLogger(log)), NewEnd(w.l.B, WithBackend(Userspace), WithLogger(log))
	pair := tunnel.Pair{Secure: a, Remote: b}
	before := w.sysctls(t)
	ctx := context.Background()
	spec := w.spec()
	link, err := pair.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pair.Close(context.Background(), spec.ID) })
	if link.SecureDevice == "" || link.RemoteDevice == "" || link.Active {
		t.Fatalf("Prepare: %+v", link)
	}
	// Each host's device: its own private key, the other's public key.
	keys := map[string]string{}
	for _, e := range []struct{ host, dev string }{{w.l.A, link.SecureDevice}, {w.l.B, link.RemoteDevice}} {
		if err := withWG(e.host, func(c *wgctrl.Client) error {
			d, err := c.Device(e.dev)
			if err != nil {
				return err
			}
			if len(d.Peers) != 1 {
				t.Fatalf("%s has %d peers", e.dev, len(d.Peers))
			}
			keys[e.host+"/private"] = d.PrivateKey.String()
			keys[e.host+"/public"] = d.PublicKey.String()
			keys[e.host+"/peer"] = d.Peers[0].PublicKey.String()
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if keys[w.l.A+"/peer"] != keys[w.l.B+"/public"] || keys[w.l.B+"/peer"] != keys[w.l.A+"/public"] {
		t.Fatalf("the ends do not know each other's public keys: %v", keys)
	}
	for _, h := range []string{w.l.A, w.l.B} {
		if strings.Contains(logs.String(), keys[h+"/private"]) {
			t.Errorf("the private key of %s's end is in the log", h)
		}
	}

	if err := pair.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	capt, err := lab.StartCapture(w.l.WAN, "b0", marker)
	if err != nil {
		t.Fatal(err)
	}
	w.exchange(t, append([]byte("payload "), marker...))
	st := capt.Stop()
	if st.Marker != 0 || st.Dropped != 0 || st.ByProto[17] < 120 {
		t.Fatalf("wan: %d frames with the marker in clear, %d dropped, %d UDP (want 0, 0, ≥ 120)", st.Marker, st.Dropped, st.ByProto[17])
	}
	proof, err := pair.Verify(ctx, spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if proof.TxBytes == 0 || proof.RxBytes == 0 || proof.Handshake.IsZero() {
		t.Fatalf("proof %+v", proof)
	}
	ls, err := pair.List(ctx)
	if err != nil || len(ls) != 1 || !ls[0].Active {
		t.Fatalf("List: %+v, %v", ls, err)
	}
	if err := pair.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	for _, e := range []struct{ host, dev string }{{w.l.A, link.SecureDevice}, {w.l.B, link.RemoteDevice}} {
		h, err := nlHandle(e.host)
		if err != nil {
			t.Fatal(err)
		}
		if linkExists(h, e.dev) {
			t.Errorf("%s/%s still exists after Close", e.host, e.dev)
		}
		h.Close()
	}
	after := w.sysctls(t)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("sysctl %s: %s before, %s after Close", k, v, after[k])
		}
	}
	if err := b.Activate(ctx, spec.ID); !errors.Is(err, tunnel.ErrNoLink) {
		t.Errorf("Activate after Close: %v, want ErrNoLink", err)
	}
	if !bytes.Contains([]byte(logs.String()), []byte("wireguard end active")) {
		t.Error("no activation in the log: the key check above read nothing")
	}
}

// TestEndRestart: an End with a state dir whose process "dies" (its
// wireguard-go device gone, nothing cleaned): a new End on the same
// state dir lists the end a previous run left, and its Close removes
// what that end installed (routes, rules, proxy entries, sysctls) and
// the record; the state files never hold a key.
func TestEndRestart(t *testing.T) {
	w := newWorld(t)
	before := w.sysctls(t)
	dirA, dirB := t.TempDir(), t.TempDir()
	a := NewEnd(w.l.A, WithBackend(Userspace), WithStateDir(dirA))
	b := NewEnd(w.l.B, WithBackend(Userspace), WithStateDir(dirB))
	pair := tunnel.Pair{Secure: a, Remote: b}
	ctx := context.Background()
	spec := w.spec()
	link, err := pair.Prepare(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := pair.Activate(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	var priv string
	if err := withWG(w.l.B, func(c *wgctrl.Client) error {
		d, err := c.Device(link.RemoteDevice)
		if err == nil {
			priv = d.PrivateKey.String()
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	rec, err := os.ReadFile(filepath.Join(dirB, "end-"+spec.ID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(rec), priv) {
		t.Fatal("the state file holds the private key")
	}

	// B's agent dies: its wireguard-go device with it, the rest stays.
	b.mu.Lock()
	if err := b.ends[spec.ID].user.close(); err != nil {
		t.Fatal(err)
	}
	b.mu.Unlock()
	restarted := NewEnd(w.l.B, WithBackend(Userspace), WithStateDir(dirB))
	ends, err := restarted.List(ctx)
	if err != nil || len(ends) != 1 || ends[0].Spec.ID != spec.ID || !ends[0].Active || ends[0].Role != tunnel.RemoteRole {
		t.Fatalf("List after restart: %+v, %v", ends, err)
	}
	if err := restarted.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dirB, "end-"+spec.ID+".json")); !os.IsNotExist(err) {
		t.Errorf("state file after Close: %v", err)
	}
	after := w.sysctls(t)
	for k, v := range before {
		if after[k] != v {
			t.Errorf("sysctl %s: %s before, %s after", k, v, after[k])
		}
	}
	left, err := proxyEntries(w.l.B)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("proxy entries left at B: %v", left)
	}
	out, err := lab.Exec(w.l.B, "ip", "rule", "show")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), lab.VMAddr.String()) {
		t.Errorf("a rule for the VM is left at B:\n%s", out)
	}
}
