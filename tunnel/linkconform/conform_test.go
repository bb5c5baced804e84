package linkconform

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/internal/conform"
	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// broken is a LinkEnd with some methods replaced (nil: the real one's).
type broken struct {
	tunnel.LinkEnd
	open     func(e tunnel.LinkEnd, ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error)
	connect  func(e tunnel.LinkEnd, ctx context.Context, id string, p tunnel.Public) error
	activate func(e tunnel.LinkEnd, ctx context.Context, id string) error
	verify   func(e tunnel.LinkEnd, ctx context.Context, id string) (tunnel.Proof, error)
	close    func(e tunnel.LinkEnd, ctx context.Context, id string) error
	list     func(e tunnel.LinkEnd, ctx context.Context) ([]tunnel.EndState, error)
}

func (b *broken) Open(ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error) {
	if b.open != nil {
		return b.open(b.LinkEnd, ctx, s, r)
	}
	return b.LinkEnd.Open(ctx, s, r)
}

func (b *broken) Connect(ctx context.Context, id string, p tunnel.Public) error {
	if b.connect != nil {
		return b.connect(b.LinkEnd, ctx, id, p)
	}
	return b.LinkEnd.Connect(ctx, id, p)
}

func (b *broken) Activate(ctx context.Context, id string) error {
	if b.activate != nil {
		return b.activate(b.LinkEnd, ctx, id)
	}
	return b.LinkEnd.Activate(ctx, id)
}

func (b *broken) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	if b.verify != nil {
		return b.verify(b.LinkEnd, ctx, id)
	}
	return b.LinkEnd.Verify(ctx, id)
}

func (b *broken) Close(ctx context.Context, id string) error {
	if b.close != nil {
		return b.close(b.LinkEnd, ctx, id)
	}
	return b.LinkEnd.Close(ctx, id)
}

func (b *broken) List(ctx context.Context) ([]tunnel.EndState, error) {
	if b.list != nil {
		return b.list(b.LinkEnd, ctx)
	}
	return b.LinkEnd.List(ctx)
}

// mutant is a LinkEnd broken for its host.
type mutant func(host string, e tunnel.LinkEnd) tunnel.LinkEnd

func mapErr(fn func(error) error) mutant {
	return func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
		return &broken{LinkEnd: e,
			open: func(e tunnel.LinkEnd, ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error) {
				st, err := e.Open(ctx, s, r)
				return st, fn(err)
			},
			connect: func(e tunnel.LinkEnd, ctx context.Context, id string, p tunnel.Public) error {
				return fn(e.Connect(ctx, id, p))
			},
			activate: func(e tunnel.LinkEnd, ctx context.Context, id string) error { return fn(e.Activate(ctx, id)) },
			verify: func(e tunnel.LinkEnd, ctx context.Context, id string) (tunnel.Proof, error) {
				p, err := e.Verify(ctx, id)
				return p, fn(err)
			},
			close: func(e tunnel.LinkEnd, ctx context.Context, id string) error { return fn(e.Close(ctx, id)) },
		}
	}
}

// activeLiar lists its ends Active once Activate "ran", whatever it did.
func activeLiar(e tunnel.LinkEnd, activate func(e tunnel.LinkEnd, ctx context.Context, id string) error) *broken {
	var mu sync.Mutex
	active := map[string]bool{}
	return &broken{LinkEnd: e,
		activate: func(e tunnel.LinkEnd, ctx context.Context, id string) error {
			if err := activate(e, ctx, id); err != nil {
				return err
			}
			mu.Lock()
			active[id] = true
			mu.Unlock()
			return nil
		},
		list: func(e tunnel.LinkEnd, ctx context.Context) ([]tunnel.EndState, error) {
			ends, err := e.List(ctx)
			mu.Lock()
			defer mu.Unlock()
			for i := range ends {
				ends[i].Active = ends[i].Active || active[ends[i].Spec.ID]
			}
			return ends, err
		},
	}
}

// plainActivate routes the link's traffic across the wan in clear (the
// lab's core and wan namespaces carry it), proxying ARP as the link
// would, instead of through the link.
func plainActivate(host string) func(e tunnel.LinkEnd, ctx context.Context, id string) error {
	return func(e tunnel.LinkEnd, ctx context.Context, id string) error {
		prefix, role, _ := strings.Cut(host, "-")
		run := func(ns string, args ...string) error {
			_, err := lab.Exec(prefix+"-"+ns, args[0], args[1:]...)
			return err
		}
		var cmds [][]string
		if role == "a" {
			cmds = [][]string{{"a", "ip", "route", "replace", "10.1.0.10/32", "via", "10.255.1.2"},
				{"core", "ip", "route", "replace", "10.1.0.10/32", "via", "198.51.100.2"},
				{"wan", "ip", "route", "replace", "10.1.0.10/32", "via", "203.0.113.1"},
				{"a", "ip", "neigh", "replace", "proxy", "10.1.0.10", "dev", "br0"}}
		} else {
			cmds = [][]string{{"b", "ip", "route", "replace", "10.1.0.20/32", "via", "203.0.113.2"},
				{"b", "ip", "neigh", "replace", "proxy", "10.1.0.20", "dev", "br0"}}
		}
		for _, c := range cmds {
			if err := run(c[0], c[1:]...); err != nil {
				return err
			}
		}
		return lab.Sysctl(host, "net/ipv4/neigh/br0/proxy_delay", "0")
	}
}

var mutants = []conform.Mutant[mutant]{
	{Name: "Open makes no device", Caught: []string{"OpenCarriesNothing"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, open: func(e tunnel.LinkEnd, ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error) {
				st, err := e.Open(ctx, s, r)
				st.Device = "nodev0"
				return st, err
			}}
		}},
	{Name: "Open carries traffic at once (in clear)", Caught: []string{"OpenCarriesNothing"},
		Break: func(host string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, connect: func(e tunnel.LinkEnd, ctx context.Context, id string, p tunnel.Public) error {
				if err := e.Connect(ctx, id, p); err != nil {
					return err
				}
				return plainActivate(host)(e, ctx, id)
			}}
		}},
	{Name: "Open gives out another key than the device's", Caught: []string{"ConnectProvesTheEnds"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, open: func(e tunnel.LinkEnd, ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error) {
				st, err := e.Open(ctx, s, r)
				if k, kerr := wgtypes.GeneratePrivateKey(); kerr == nil {
					st.Public.Key = k.PublicKey().String()
				}
				return st, err
			}}
		}},
	{Name: "Verify proves anything", Caught: []string{"ConnectProvesTheEnds"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, verify: func(e tunnel.LinkEnd, ctx context.Context, id string) (tunnel.Proof, error) {
				p, err := e.Verify(ctx, id)
				if errors.Is(err, tunnel.ErrNotProven) {
					return tunnel.Proof{TxPackets: 1}, nil
				}
				return p, err
			}}
		}},
	{Name: "Activate does nothing (and lists the end active)", Caught: []string{"ActivateCarriesEncrypted"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return activeLiar(e, func(tunnel.LinkEnd, context.Context, string) error { return nil })
		}},
	{Name: "Activate of an active end does not announce", Caught: []string{"ActivateCarriesEncrypted", "DualStackOverIPv6Underlay"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, activate: func(e tunnel.LinkEnd, ctx context.Context, id string) error {
				ends, _ := e.List(ctx)
				for _, s := range ends {
					if s.Spec.ID == id && s.Active {
						return nil
					}
				}
				return e.Activate(ctx, id)
			}}
		}},
	{Name: "Activate routes in clear over the wan (and lists the end active)", Caught: []string{"ActivateCarriesEncrypted"},
		Break: func(host string, e tunnel.LinkEnd) tunnel.LinkEnd { return activeLiar(e, plainActivate(host)) }},
	{Name: "Open drops the IPv6 protected prefixes", Caught: []string{"DualStackOverIPv6Underlay"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, open: func(e tunnel.LinkEnd, ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error) {
				for _, ps := range []*[]netip.Prefix{&s.Secure.Protected, &s.Remote.Protected} {
					*ps = slices.DeleteFunc(slices.Clone(*ps), func(p netip.Prefix) bool { return p.Addr().Is6() })
				}
				return e.Open(ctx, s, r)
			}}
		}},
	{Name: "List forgets what an earlier end left", Caught: []string{"ListAfterRestart"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			var mu sync.Mutex
			mine := map[string]bool{}
			return &broken{LinkEnd: e,
				open: func(e tunnel.LinkEnd, ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error) {
					mu.Lock()
					mine[s.ID] = true
					mu.Unlock()
					return e.Open(ctx, s, r)
				},
				list: func(e tunnel.LinkEnd, ctx context.Context) ([]tunnel.EndState, error) {
					ends, err := e.List(ctx)
					mu.Lock()
					defer mu.Unlock()
					var out []tunnel.EndState
					for _, s := range ends {
						if mine[s.Spec.ID] {
							out = append(out, s)
						}
					}
					return out, err
				}}
		}},
	{Name: "Close forgets the end but leaves its device and routes", Caught: []string{"CloseRemovesEverything"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			var mu sync.Mutex
			closed := map[string]bool{}
			b := &broken{LinkEnd: e,
				close: func(e tunnel.LinkEnd, ctx context.Context, id string) error {
					mu.Lock()
					defer mu.Unlock()
					if closed[id] {
						return e.Close(ctx, id) // the world's cleanup: for real
					}
					closed[id] = true
					return nil
				},
				list: func(e tunnel.LinkEnd, ctx context.Context) ([]tunnel.EndState, error) {
					ends, err := e.List(ctx)
					mu.Lock()
					defer mu.Unlock()
					var out []tunnel.EndState
					for _, s := range ends {
						if !closed[s.Spec.ID] {
							out = append(out, s)
						}
					}
					return out, err
				}}
			return b
		}},
	{Name: "Close of an unknown link fails", Caught: []string{"CloseRemovesEverything"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, close: func(e tunnel.LinkEnd, ctx context.Context, id string) error {
				ends, _ := e.List(ctx)
				for _, s := range ends {
					if s.Spec.ID == id {
						return e.Close(ctx, id)
					}
				}
				return tunnel.ErrNoLink
			}}
		}},
	{Name: "Close fails once the host is gone", Caught: []string{"HostGone"},
		Break: func(h string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, close: func(e tunnel.LinkEnd, ctx context.Context, id string) error {
				if err := nsutil.Check(h); err != nil {
					return err
				}
				return e.Close(ctx, id)
			}}
		}},
	{Name: "a second Open replaces the end", Caught: []string{"OpenRefusesBadInput"},
		Break: func(_ string, e tunnel.LinkEnd) tunnel.LinkEnd {
			return &broken{LinkEnd: e, open: func(e tunnel.LinkEnd, ctx context.Context, s tunnel.Spec, r tunnel.Role) (tunnel.EndState, error) {
				st, err := e.Open(ctx, s, r)
				if errors.Is(err, tunnel.ErrExists) {
					_ = e.Close(ctx, s.ID)
					return e.Open(ctx, s, r)
				}
				return st, err
			}}
		}},
	{Name: "ErrInvalid names no field", Caught: []string{"OpenRefusesBadInput", "ConnectProvesTheEnds"},
		Break: mapErr(func(err error) error {
			if errors.Is(err, tunnel.ErrInvalid) {
				return tunnel.ErrInvalid
			}
			return err
		})},
	{Name: "a missing host loses its sentinel", Caught: []string{"MissingHost", "HostGone"},
		Break: mapErr(func(err error) error {
			if errors.Is(err, host.ErrNotFound) {
				return errors.New(err.Error())
			}
			return err
		})},
}

// TestSuiteCatchesBrokenEnds: each check fails against a LinkEnd
// (wireguard.End, broken on purpose) that breaks the promise it checks.
func TestSuiteCatchesBrokenEnds(t *testing.T) {
	conform.Mutants(t, checks, mutants, func(m conform.Mutant[mutant]) Harness {
		dirs := map[string]string{} // by host: a later End reads an earlier one's state
		var mu sync.Mutex
		return Harness{New: func(t testing.TB, host string) tunnel.LinkEnd {
			mu.Lock()
			if dirs[host] == "" {
				dirs[host] = t.TempDir()
			}
			dir := dirs[host]
			mu.Unlock()
			e := wireguard.NewEnd(host, wireguard.WithBackend(wireguard.Userspace), wireguard.WithStateDir(dir))
			return m.Break(host, e)
		}}
	})
}
