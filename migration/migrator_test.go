package migration_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sealift/sealift/conn"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
	"github.com/sealift/sealift/migration/migrationtest"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/tunnel"
)

func newMigrator(t testing.TB, s *migrationtest.Setup) *migration.Migrator {
	t.Helper()
	m, err := migration.New(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func blocks(r *migration.Report) []int {
	var out []int
	for _, s := range r.Steps {
		out = append(out, int(s.Block))
	}
	return out
}

var (
	plainConn = conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:7777"), Remote: netip.MustParseAddrPort("10.2.0.20:40000"), State: "ESTABLISHED"}
	tlsConn   = conn.Conn{Proto: conn.TCP, Local: netip.MustParseAddrPort("10.1.0.10:443"), Remote: netip.MustParseAddrPort("10.2.0.20:40001"), State: "ESTABLISHED"}
)

// The steps of FIG. 3 in their exact order, for each branch.
func TestRunStepOrder(t *testing.T) {
	cases := []struct {
		name      string
		subnet    bool
		unsecured bool
		mode      migration.FenceMode
		want      []int
	}{
		{"vm only, nothing to reset", false, false, migration.FenceAtSwitchover,
			[]int{310, 315, 325, 320, 335, 330, 345, 370, 355, 360, 375, 395}},
		{"vm only, unsecured conn", false, true, migration.FenceAtSwitchover,
			[]int{310, 315, 325, 320, 335, 330, 345, 370, 355, 360, 365, 375, 395}},
		{"before-copy fence", false, true, migration.FenceBeforeCopy,
			[]int{310, 315, 320, 325, 335, 330, 345, 355, 360, 365, 370, 375, 395}},
		{"subnet moved", true, true, migration.FenceAtSwitchover,
			[]int{310, 315, 325, 320, 335, 340, 330, 345, 370, 355, 360, 365, 375, 380, 390, 395}},
		{"subnet moved, nothing to reset", true, false, migration.FenceBeforeCopy,
			[]int{310, 315, 320, 325, 335, 340, 330, 345, 355, 360, 370, 375, 380, 390, 395}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := migrationtest.NewSetup()
			p := s.Plan()
			if c.subnet {
				p = s.SubnetPlan()
			}
			p.FenceMode = c.mode
			if c.unsecured {
				s.Cloud.Auditor.SetConns(plainConn, tlsConn)
			} else {
				s.Cloud.Auditor.SetConns(tlsConn)
			}
			rep, err := newMigrator(t, s).Run(context.Background(), p)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			// Steps are recorded when they end: the hook's steps (325,
			// 320, 335, 340) end inside 330.
			if got := blocks(rep); !slices.Equal(got, c.want) {
				t.Fatalf("steps\n got %v\nwant %v", got, c.want)
			}
			if rep.Outcome != migration.Completed || rep.SubnetMoved != c.subnet {
				t.Fatalf("outcome %s moved %v", rep.Outcome, rep.SubnetMoved)
			}
			if got := s.Where("vm1"); !slices.Equal(got, []string{"b"}) || s.State("b", "vm1") != hypervisor.Running {
				t.Fatalf("VM at %v (state at b %q), want running at b only", got, s.State("b", "vm1"))
			}
			if v := s.Violations(); len(v) > 0 {
				t.Fatalf("invariant violated: %v", v)
			}
			if _, ok := s.Secure.Fencer.Fenced("vm1"); ok {
				t.Fatal("source fence left behind")
			}
			spec, ok := s.Cloud.Fencer.Fenced("vm1")
			if !ok || len(spec.AllowVia) == 0 || spec.AllowVia[0] != rep.Link.RemoteDevice {
				t.Fatalf("target fence %+v (ok %v), want open only via %q", spec, ok, rep.Link.RemoteDevice)
			}
			if c.unsecured {
				if got := s.Cloud.Auditor.ResetConns(); len(got) != 1 || got[0] != plainConn {
					t.Fatalf("reset %v, want only the plaintext one", got)
				}
			} else if len(s.Cloud.Auditor.ResetConns()) != 0 {
				t.Fatal("reset a secure connection")
			}
			links, _ := s.Linker.List(context.Background())
			if len(links) != 1 || !links[0].Active {
				t.Fatalf("links after run: %+v, want the VM's link only, active", links)
			}
			if c.subnet {
				if rep.Redirect == nil || !slices.Contains(spec.AllowVia, rep.Redirect.RemoteDevice) || !slices.Contains(spec.AllowVia, "site0") {
					t.Fatalf("target fence allows %v, want the link, the redirect tunnel and the site link", spec.AllowVia)
				}
				if rep.Converged == nil || rep.Converged.Route.Via != migrationtest.SiteVia {
					t.Fatalf("converged = %+v", rep.Converged)
				}
				if rd, _ := s.Router.Redirects(context.Background()); len(rd) != 0 {
					t.Fatalf("redirect left: %v", rd)
				}
			}
		})
	}
}

// Fail closed. Before the secure link is proven, the target's fence lets
// the VM talk through the link's own devices at most (they encrypt
// everything and carry nothing until the link is activated in the
// switchover hook); a device-less (XFRM) link keeps a full block until
// after the proof. The source is fenced while the VM leaves it.
func TestFailClosedOrder(t *testing.T) {
	for _, kind := range []tunnel.Kind{tunnel.WireGuard, tunnel.IPsec} {
		t.Run(string(kind), func(t *testing.T) {
			s := migrationtest.NewSetup()
			p := s.Plan()
			p.Link = kind
			rep, err := newMigrator(t, s).Run(context.Background(), p)
			if err != nil {
				t.Fatal(err)
			}
			var calls []string
			for _, c := range s.Calls() {
				calls = append(calls, c.String())
			}
			at := func(sub string) int {
				return slices.IndexFunc(calls, func(c string) bool { return strings.Contains(c, sub) })
			}
			dump := strings.Join(calls, "\n")
			migrate, fenceA, activate, resume, verify := at("hv:a.Migrate"), at("fence:a.Fence(vm1"), at("link.Activate"), at("hv:b.Resume"), at("link.Verify")
			if !(migrate < fenceA && fenceA < activate && activate < resume && resume < verify) {
				t.Fatalf("want Migrate < source fenced < link activated < resume < verify; calls:\n%s", dump)
			}
			allowed := map[string]bool{"": true, rep.Link.RemoteDevice: true, "site0": true}
			for i, c := range calls[:verify] {
				if v, ok := strings.CutPrefix(c, "fence:b.Fence(vm1 via="); ok {
					for _, d := range strings.Split(strings.TrimSuffix(v, ")"), ",") {
						if !allowed[d] || kind == tunnel.IPsec && d != "" {
							t.Fatalf("call %d, before the link was proven: %s (link device %q)\n%s", i, c, rep.Link.RemoteDevice, dump)
						}
					}
				}
				if strings.HasPrefix(c, "fence:b.Lift") {
					t.Fatalf("target fence lifted before the link was proven:\n%s", dump)
				}
			}
			if at("fence:b.Fence(vm1") < 0 || at("fence:b.Fence(vm1") > migrate {
				t.Fatalf("incoming VM not fenced before the migration:\n%s", dump)
			}
		})
	}
}

var errBoom = errors.New("boom")

// One fault at every call the Migrator makes, one at a time.
func TestFaultAtEachStep(t *testing.T) {
	type fk struct{ fake, method string }
	cases := []struct {
		at   fk
		want migration.Outcome
		// where the VM must end up
		host  string
		state hypervisor.State
	}{
		{fk{"hv:a", "Lookup"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"hv:b", "PrepareIncoming"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"fence:b", "Fence"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"link", "Prepare"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"fence:a", "Fence"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"routing", "AddRedirect"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"link", "Activate"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"hv:a", "Migrate"}, migration.RolledBack, "a", hypervisor.Running},
		{fk{"hv:b", "Resume"}, migration.StayedFenced, "b", hypervisor.Paused},
		{fk{"link", "Verify"}, migration.StayedFenced, "b", hypervisor.Running},
		{fk{"audit:b", "List"}, migration.StayedFenced, "b", hypervisor.Running},
		{fk{"audit:b", "Reset"}, migration.StayedFenced, "b", hypervisor.Running},
		{fk{"fence:a", "Lift"}, migration.StayedFenced, "b", hypervisor.Running},
		{fk{"routing", "Wait"}, migration.Completed, "b", hypervisor.Running},
		{fk{"routing", "RemoveRedirect"}, migration.Completed, "b", hypervisor.Running},
	}
	for _, c := range cases {
		for _, subnet := range []bool{false, true} {
			if !subnet && c.at.fake == "routing" {
				continue
			}
			name := c.at.fake + "." + c.at.method
			if subnet {
				name += "/subnet"
			}
			t.Run(name, func(t *testing.T) {
				s := migrationtest.NewSetup()
				p := s.Plan()
				if subnet {
					p = s.SubnetPlan()
				}
				s.Cloud.Auditor.SetConns(plainConn)
				faults := map[string]*migrationtest.Faults{
					"hv:a": &s.Secure.Hypervisor.Faults, "hv:b": &s.Cloud.Hypervisor.Faults,
					"fence:a": &s.Secure.Fencer.Faults, "fence:b": &s.Cloud.Fencer.Faults,
					"link": &s.Linker.Faults, "audit:b": &s.Cloud.Auditor.Faults, "routing": &s.Router.Faults,
				}
				faults[c.at.fake].FailOn(c.at.method, 1, errBoom)
				m := newMigrator(t, s)
				rep, err := m.Run(context.Background(), p)
				if rep == nil {
					t.Fatalf("no report (err %v)", err)
				}
				if rep.Outcome != c.want {
					t.Fatalf("outcome %q (err %v), want %q", rep.Outcome, err, c.want)
				}
				switch c.want {
				case migration.RolledBack:
					if !errors.Is(err, migration.ErrRolledBack) || !errors.Is(err, errBoom) {
						t.Fatalf("err %v, want ErrRolledBack wrapping the cause", err)
					}
				case migration.StayedFenced:
					if !errors.Is(err, migration.ErrStayedFenced) || !errors.Is(err, errBoom) {
						t.Fatalf("err %v, want ErrStayedFenced wrapping the cause", err)
					}
				case migration.Completed:
					if err != nil || len(rep.Warnings) == 0 {
						t.Fatalf("err %v warnings %v, want completed with a warning", err, rep.Warnings)
					}
				}
				if got := s.Where("vm1"); !slices.Equal(got, []string{c.host}) || s.State(c.host, "vm1") != c.state {
					t.Fatalf("VM active at %v, state at %s %q; want %s only, %s", got, c.host, s.State(c.host, "vm1"), c.host, c.state)
				}
				if v := s.Violations(); len(v) > 0 {
					t.Fatalf("VM in two places: %v", v)
				}
				links, _ := s.Linker.List(context.Background())
				fa, fencedA := s.Secure.Fencer.Fenced("vm1")
				fb, fencedB := s.Cloud.Fencer.Fenced("vm1")
				switch c.want {
				case migration.RolledBack:
					if fencedA || fencedB || len(links) != 0 {
						t.Fatalf("after rollback: fence a %v b %v, links %v; want none", fencedA, fencedB, links)
					}
					if rd, _ := s.Router.Redirects(context.Background()); len(rd) != 0 {
						t.Fatalf("redirect left after rollback: %v", rd)
					}
				case migration.StayedFenced:
					if !fencedB || len(fb.AllowVia) != 0 {
						t.Fatalf("target fence %+v (%v), want a full block", fb, fencedB)
					}
					if !strings.Contains(rep.Reason, "boom") {
						t.Fatalf("reason %q does not say why", rep.Reason)
					}
					_ = fa
				}
				// Every fence left in place is in the journal: the journal
				// of an unfinished or stayed-fenced migration names it.
				if fencedA || fencedB {
					if rep.Outcome == migration.RolledBack {
						t.Fatal("fence left after a rollback")
					}
				}
			})
		}
	}
}

// A second Run for the same VM while one is going is refused.
func TestBusy(t *testing.T) {
	s := migrationtest.NewSetup()
	m := newMigrator(t, s)
	p := s.Plan()
	s.Cloud.Auditor.SetConns()
	entered, release := make(chan struct{}), make(chan struct{})
	s.Config.Linkers["wireguard"] = blockingLinker{s.Linker, entered, release}
	m = newMigrator(t, s)
	done := make(chan error)
	go func() { _, err := m.Run(context.Background(), p); done <- err }()
	<-entered
	if _, err := m.Run(context.Background(), p); !errors.Is(err, migration.ErrBusy) {
		t.Fatalf("second Run: %v, want ErrBusy", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// After it finished the VM can move again (back).
	back := p
	back.From, back.To = "cloud", "secure"
	s.Secure.Auditor.SetConns()
	if _, err := m.Run(context.Background(), back); err != nil {
		t.Fatalf("migrate back: %v", err)
	}
}

type blockingLinker struct {
	*migrationtest.Linker
	entered, release chan struct{}
}

func (b blockingLinker) Verify(ctx context.Context, id string) (tunnel.Proof, error) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.release
	return b.Linker.Verify(ctx, id)
}

// A controller that dies mid-run leaves an unfinished journal; a new
// Migrator over the same bbolt file finishes it.
func TestCrashRecovery(t *testing.T) {
	cases := []struct {
		fake, method string
		want         migration.Outcome
		host         string
	}{
		{"link", "Prepare", migration.RolledBack, "a"},
		{"fence:a", "Fence", migration.RolledBack, "a"},       // in the switchover hook
		{"link", "Activate", migration.RolledBack, "a"},       // source paused
		{"hv:b", "Resume", migration.Completed, "b"},          // VM complete at b, paused
		{"link", "Verify", migration.Completed, "b"},          // VM running at b, fenced
		{"audit:b", "Reset", migration.Completed, "b"},        //
		{"routing", "Wait", migration.Completed, "b"},         // subnet: redirect in place
		{"routing", "AddRedirect", migration.RolledBack, "a"}, // in the hook
	}
	for _, c := range cases {
		t.Run(c.fake+"."+c.method, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal.db")
			s := migrationtest.NewSetup()
			s.Cloud.Auditor.SetConns(plainConn)
			j, err := migration.OpenBoltJournal(path)
			if err != nil {
				t.Fatal(err)
			}
			s.Config.Journal = j
			p := s.SubnetPlan()
			faults := map[string]*migrationtest.Faults{
				"hv:b": &s.Cloud.Hypervisor.Faults, "fence:a": &s.Secure.Fencer.Faults,
				"link": &s.Linker.Faults, "audit:b": &s.Cloud.Auditor.Faults, "routing": &s.Router.Faults,
			}
			faults[c.fake].CrashOn(c.method, 1)
			m1 := newMigrator(t, s)
			done := make(chan struct{})
			go func() { defer close(done); m1.Run(context.Background(), p) }()
			<-done
			m1.Close() // the process is gone; its file lock too

			j2, err := migration.OpenBoltJournal(path)
			if err != nil {
				t.Fatal(err)
			}
			defer j2.Close()
			un, _ := j2.Unfinished(context.Background())
			if len(un) != 1 {
				t.Fatalf("unfinished after crash: %d, want 1", len(un))
			}
			faults[c.fake].ClearFaults()
			s.Config.Journal = j2
			m2 := newMigrator(t, s)
			reps, err := m2.Recover(context.Background())
			if len(reps) != 1 {
				t.Fatalf("recovered %d (err %v)", len(reps), err)
			}
			if reps[0].Outcome != c.want {
				t.Fatalf("outcome %q (err %v, reason %q), want %q", reps[0].Outcome, err, reps[0].Reason, c.want)
			}
			if got := s.Where("vm1"); !slices.Equal(got, []string{c.host}) || s.State(c.host, "vm1") != hypervisor.Running {
				t.Fatalf("VM at %v, want running at %s only", got, c.host)
			}
			if v := s.Violations(); len(v) > 0 {
				t.Fatalf("VM in two places: %v", v)
			}
			if un, _ := j2.Unfinished(context.Background()); len(un) != 0 {
				t.Fatalf("still unfinished: %+v", un)
			}
			links, _ := s.Linker.List(context.Background())
			rd, _ := s.Router.Redirects(context.Background())
			_, fa := s.Secure.Fencer.Fenced("vm1")
			if c.want == migration.RolledBack {
				if len(links) != 0 || len(rd) != 0 || fa {
					t.Fatalf("left after rollback: links %v redirects %v source fence %v", links, rd, fa)
				}
				if _, fb := s.Cloud.Fencer.Fenced("vm1"); fb {
					t.Fatal("target fence left after rollback")
				}
			} else {
				spec, fb := s.Cloud.Fencer.Fenced("vm1")
				if len(links) != 1 || len(rd) != 0 || fa || !fb || len(spec.AllowVia) == 0 {
					t.Fatalf("after roll forward: links %v redirects %v source fence %v target %+v", links, rd, fa, spec)
				}
			}
			// Nothing more to do the second time.
			if reps, err := m2.Recover(context.Background()); len(reps) != 0 || err != nil {
				t.Fatalf("second Recover: %d, %v", len(reps), err)
			}
		})
	}
}

func TestEventsAndJournal(t *testing.T) {
	s := migrationtest.NewSetup()
	j := migration.NewMemJournal()
	s.Config.Journal = j
	m := newMigrator(t, s)
	ev, cancel := m.Subscribe(256)
	rep, err := m.Run(context.Background(), s.Plan())
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	var started, finished, progress int
	var last migration.Event
	for e := range ev {
		switch e.(type) {
		case migration.StepStarted:
			started++
		case migration.StepFinished:
			finished++
		case migration.MigrationProgress:
			progress++
		}
		last = e
	}
	if started != len(rep.Steps) || finished != len(rep.Steps) || progress == 0 {
		t.Fatalf("events: %d started, %d finished, %d progress; %d steps", started, finished, progress, len(rep.Steps))
	}
	if f, ok := last.(migration.Finished); !ok || f.Outcome != migration.Completed {
		t.Fatalf("last event %#v", last)
	}
	rec, entries, err := j.Load(context.Background(), rep.ID)
	if err != nil || rec.Outcome != migration.Completed {
		t.Fatalf("journal record %+v, %v", rec, err)
	}
	// Every step is journaled before and after.
	begun := map[migration.Block]int{}
	for _, e := range entries {
		switch e.Phase {
		case migration.PhaseBegin:
			begun[e.Block]++
		case migration.PhaseDone:
			begun[e.Block]--
		}
	}
	for b, n := range begun {
		if n != 0 {
			t.Errorf("block %d: begin/done unbalanced by %d", b, n)
		}
	}
}

var _ = fence.ErrInvalid
var _ = routing.ErrInvalid

func tunnelKind(s string) tunnel.Kind { return tunnel.Kind(s) }

// A plaintext flow the source saw but the target has not yet (its
// endpoints were in TCP backoff during the blackout) is reset at the
// target all the same; one both saw is reset once.
func TestAuditMergesSourceAndTargetLists(t *testing.T) {
	s := migrationtest.NewSetup()
	onlyAtSource := plainConn
	onlyAtSource.Remote = netip.MustParseAddrPort("10.2.0.20:40002")
	onlyAtSource.ID = 77
	both := plainConn
	both.ID = 5
	s.Secure.Auditor.SetConns(onlyAtSource, both, tlsConn)
	s.Cloud.Auditor.SetConns(plainConn)
	rep, err := newMigrator(t, s).Run(context.Background(), s.Plan())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Audit.Reset) != 2 || len(rep.Audit.Kept) != 1 {
		t.Fatalf("audit: reset %v kept %v; want 2 reset (one per flow), the TLS one kept", rep.Audit.Reset, rep.Audit.Kept)
	}
	var remotes []string
	for _, c := range s.Cloud.Auditor.ResetConns() {
		remotes = append(remotes, c.Remote.String())
		if c.Remote == onlyAtSource.Remote && c.ID != 0 {
			t.Errorf("source entry ID %d passed to the target's auditor", c.ID)
		}
	}
	slices.Sort(remotes)
	if !slices.Equal(remotes, []string{"10.2.0.20:40000", "10.2.0.20:40002"}) {
		t.Fatalf("target reset %v", remotes)
	}
}

// A hypervisor that creates the incoming instance only as the migration
// begins (libvirt): the target is fenced in the switchover hook, before
// it can run; if that fails, the migration rolls back.
func TestLazyIncomingFencedInHook(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Hypervisor.LazyIncoming = true
	rep, err := newMigrator(t, s).Run(context.Background(), s.Plan())
	if err != nil {
		t.Fatal(err)
	}
	var calls []string
	for _, c := range s.Calls() {
		calls = append(calls, c.String())
	}
	at := func(sub string) int {
		return slices.IndexFunc(calls, func(c string) bool { return strings.Contains(c, sub) })
	}
	fenceB, migrate, resume := at("fence:b.Fence(vm1 via="+rep.Link.RemoteDevice), at("hv:a.Migrate"), at("hv:b.Resume")
	if !(migrate < fenceB && fenceB < resume) {
		t.Fatalf("want the target fenced inside the migration, before resume:\n%s", strings.Join(calls, "\n"))
	}
	if spec, ok := s.Cloud.Fencer.Fenced("vm1"); !ok || spec.Port != "tap-vm1" {
		t.Fatalf("target fence %+v, want the port named as at the source", spec)
	}

	s = migrationtest.NewSetup()
	s.Cloud.Hypervisor.LazyIncoming = true
	s.Cloud.Fencer.FailOn("Fence", 1, errBoom)
	rep, err = newMigrator(t, s).Run(context.Background(), s.Plan())
	if !errors.Is(err, migration.ErrRolledBack) || rep.Outcome != migration.RolledBack {
		t.Fatalf("target fence failing in the hook: %v (%v), want rolled back", rep.Outcome, err)
	}
	if got := s.Where("vm1"); !slices.Equal(got, []string{"a"}) || s.State("a", "vm1") != hypervisor.Running {
		t.Fatalf("VM at %v, want running at a", got)
	}
}

// A migration the hypervisor reports done, whose guest is gone from the
// target by the end (it crashed), is not "completed": the report says
// the VM was lost.
func TestVMLostAfterResumeIsReported(t *testing.T) {
	s := migrationtest.NewSetup()
	s.Cloud.Hypervisor.FailOn("Lookup", 3, hypervisor.ErrNotFound) // 1: at 310, 2: at 315, 3: at 395
	rep, err := newMigrator(t, s).Run(context.Background(), s.Plan())
	if rep == nil || rep.Outcome != migration.Abandoned || !strings.Contains(rep.Reason, "no longer found") {
		t.Fatalf("outcome %v (%v), reason %q; want abandoned, saying the VM is gone", rep.Outcome, err, rep.Reason)
	}
	if !errors.Is(err, migration.ErrVMLost) {
		t.Fatalf("err %v, want ErrVMLost", err)
	}
}
