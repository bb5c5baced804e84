package wireguard

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/tunnel"
)

// TestProxyNeedsForwarding: a link that would proxy IPv4 (IPv6) hosts at
// a host that does not forward IPv4 (IPv6), whose kernel would never
// answer its proxy ARP (NDP), is refused before anything is made, by the
// Linker and by each End, naming the sysctl; the same link with
// forwarding on (the control) is made.
func TestProxyNeedsForwarding(t *testing.T) {
	for _, fam := range []string{"ipv4", "ipv6"} {
		t.Run(fam, func(t *testing.T) {
			w := newWorld(t)
			spec := w.spec()
			if fam == "ipv6" {
				w.dualStack(t)
				spec = w.spec6()
			}
			// IPv4: the answering interface's own setting (turning all
			// off turns every interface's off); IPv6: the host's.
			key, want := "net/"+fam+"/conf/all/forwarding", "net.ipv6.conf.all.forwarding=1"
			if fam == "ipv4" {
				want = "net.ipv4.conf.br0.forwarding=1"
			}
			if err := lab.Sysctl(w.l.B, key, "0"); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			lk := testLinker(t, nil, WithBackend(Userspace))
			refused := func(what string, err error) {
				t.Helper()
				if !errors.Is(err, tunnel.ErrInvalid) || !strings.Contains(err.Error(), want) {
					t.Errorf("%s at a host without forwarding: %v, want ErrInvalid naming %s", what, err, want)
				}
			}
			_, err := lk.Prepare(ctx, spec)
			refused("Prepare", err)
			if links, err := lk.List(ctx); err != nil || len(links) != 0 {
				t.Errorf("after the refused Prepare: links %+v, %v", links, err)
			}
			end := NewEnd(w.l.B, WithBackend(Userspace), WithStateDir(t.TempDir()))
			_, err = end.Open(ctx, spec, tunnel.RemoteRole)
			refused("End.Open", err)
			if ends, err := end.List(ctx); err != nil || len(ends) != 0 {
				t.Errorf("after the refused Open: ends %+v, %v", ends, err)
			}

			if err := lab.Sysctl(w.l.B, key, "1"); err != nil {
				t.Fatal(err)
			}
			if fam == "ipv4" {
				// Forwarding on the answering interface is enough: the
				// host-wide setting off, br0's on.
				if err := lab.Sysctl(w.l.B, "net/ipv4/conf/all/forwarding", "0"); err != nil {
					t.Fatal(err)
				}
				for _, dev := range []string{"br0", "wan0"} {
					if err := lab.Sysctl(w.l.B, "net/ipv4/conf/"+dev+"/forwarding", "1"); err != nil {
						t.Fatal(err)
					}
				}
			}
			if _, err := lk.Prepare(ctx, spec); err != nil {
				t.Fatalf("control: Prepare with forwarding: %v", err)
			}
			closeOnCleanup(t, lk, spec.ID)
		})
	}
}
