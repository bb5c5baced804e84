package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/migtls"
	"github.com/sealift/sealift/hypervisor/qemu/qmp"
)

// migrateInfo is the part of query-migrate sealift reads.
type migrateInfo struct {
	Status        string `json:"status"`
	TotalTime     int64  `json:"total-time"`
	Downtime      int64  `json:"downtime"`
	ErrorDesc     string `json:"error-desc"`
	SocketAddress []struct {
		Type string `json:"type"`
		Host string `json:"host"`
		Port string `json:"port"`
	} `json:"socket-address"`
	RAM struct {
		Transferred    uint64 `json:"transferred"`
		Remaining      uint64 `json:"remaining"`
		Total          uint64 `json:"total"`
		DirtySyncCount int    `json:"dirty-sync-count"`
	} `json:"ram"`
}

// progressEvery is how often Migrate polls query-migrate for OnProgress.
const progressEvery = 100 * time.Millisecond

// defaultBandwidth replaces "no limit" (QEMU's own default is 32 MiB/s).
const defaultBandwidth = 100 << 30

// ParseURI checks a migration URI of the form tcp:HOST:PORT.
func ParseURI(uri string) (host string, port int, err error) {
	rest, ok := strings.CutPrefix(uri, "tcp:")
	if !ok {
		return "", 0, fmt.Errorf("%w: endpoint URI %q: want tcp:HOST:PORT", hypervisor.ErrInvalid, uri)
	}
	h, ps, err := net.SplitHostPort(rest)
	if err != nil || h == "" {
		return "", 0, fmt.Errorf("%w: endpoint URI %q: want tcp:HOST:PORT", hypervisor.ErrInvalid, uri)
	}
	port, err = strconv.Atoi(ps)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("%w: endpoint URI %q: port %q out of range", hypervisor.ErrInvalid, uri, ps)
	}
	return h, port, nil
}

func setCapabilities(ctx context.Context, p *Process, caps map[string]bool) error {
	var list []map[string]any
	for c, on := range caps {
		list = append(list, map[string]any{"capability": c, "state": on})
	}
	return p.QMP().Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// SetupMigration applies sealift's migration settings to a source QEMU:
// capabilities (events; pause-before-switchover if pause), bandwidth
// (0: unlimited) and downtime limit (0: QEMU's default of 300 ms).
func SetupMigration(ctx context.Context, p *Process, pause bool, bandwidth uint64, downtime time.Duration) error {
	if err := setCapabilities(ctx, p, map[string]bool{"events": true, "pause-before-switchover": pause}); err != nil {
		return err
	}
	if bandwidth == 0 {
		bandwidth = defaultBandwidth
	}
	params := map[string]any{"max-bandwidth": bandwidth}
	if downtime > 0 {
		params["downtime-limit"] = downtime.Milliseconds()
	}
	return p.QMP().Execute(ctx, "migrate-set-parameters", params, nil)
}

// Migrate live-migrates name to the endpoint (tcp:HOST:PORT of a prepared
// target). With AtSwitchover set the source pauses before switchover
// (pause-before-switchover), the hook runs, and only then is the last
// state sent; the target stays paused until its Resume. On success the
// source QEMU is quit. On failure the VM keeps running here (if the
// monitor connection was lost, through a new one).
func (h *Hypervisor) Migrate(ctx context.Context, name string, to hypervisor.Endpoint, opts hypervisor.MigrateOptions) (hypervisor.Stats, error) {
	var stats hypervisor.Stats
	if err := hypervisor.ValidName(name); err != nil {
		return stats, err
	}
	if err := opts.Validate(); err != nil {
		return stats, err
	}
	if to.VM != "" && to.VM != name {
		return stats, fmt.Errorf("%w: endpoint is for vm %q, not %q", hypervisor.ErrInvalid, to.VM, name)
	}
	toHost, _, err := ParseURI(to.URI)
	if err != nil {
		return stats, err
	}
	if to.MigrateURI != "" && to.MigrateURI != to.URI {
		return stats, fmt.Errorf("%w: endpoint MigrateURI %q: the qemu backend sends to URI only", hypervisor.ErrInvalid, to.MigrateURI)
	}
	if h.tlsDir != "" {
		if err := migtls.CheckDir(h.tlsDir); err != nil {
			return stats, err
		}
	}
	e, err := h.entry(name)
	if err != nil {
		return stats, err
	}
	h.mu.Lock()
	switch {
	case e.incoming:
		h.mu.Unlock()
		return stats, fmt.Errorf("%w: vm %q on host %q is an incoming instance, not resumed", hypervisor.ErrState, name, h.host)
	case e.migrating:
		h.mu.Unlock()
		return stats, fmt.Errorf("%w: vm %q on host %q is already migrating", hypervisor.ErrState, name, h.host)
	}
	e.migrating, e.aborted = true, false
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		e.migrating = false
		h.mu.Unlock()
	}()
	p := e.p
	st, err := p.Status(ctx)
	if err != nil {
		return stats, fmt.Errorf("qemu: vm %q: %w", name, err)
	}
	if s := state(st); s != hypervisor.Running && s != hypervisor.Paused {
		return stats, fmt.Errorf("%w: vm %q on host %q is %q", hypervisor.ErrState, name, h.host, st)
	}

	events, unsub := p.QMP().Subscribe()
	defer unsub()
	if err := SetupMigration(ctx, p, opts.AtSwitchover != nil, opts.MaxBandwidth, opts.MaxDowntime); err != nil {
		return stats, fmt.Errorf("qemu: vm %q: %w", name, err)
	}
	if h.tlsDir != "" {
		if err := reloadClientCreds(ctx, p, h.tlsDir, h.log); err != nil {
			return stats, fmt.Errorf("qemu: vm %q: %w", name, err)
		}
		if err := setTLS(ctx, p, false, toHost); err != nil {
			return stats, fmt.Errorf("qemu: vm %q: %w", name, err)
		}
	}
	m := &migration{h: h, name: name, e: e, p: p, to: to, opts: opts, start: time.Now(), status: "setup"}
	if err := p.QMP().Execute(ctx, "migrate", map[string]any{"uri": to.URI}, nil); err != nil {
		return stats, fmt.Errorf("%w: vm %q to %s: %v", hypervisor.ErrMigration, name, to.URI, err)
	}
	h.log.Info("migration started", "vm", name, "host", h.host, "to", to.URI)
	return m.run(ctx, events)
}

// migration is one outgoing migration from its "migrate" command on: the
// status loop (run) and one handler per QEMU migration status that needs
// an action.
type migration struct {
	h     *Hypervisor
	name  string
	e     *vmEntry
	p     *Process
	to    hypervisor.Endpoint
	opts  hypervisor.MigrateOptions
	start time.Time
	stats hypervisor.Stats

	status   string // the last status QEMU reported (event or query-migrate)
	switched bool   // pre-switchover was handled (QEMU may report it again)
}

// statusHandlers act on the migration statuses that need an action; the
// others (setup, active, device, wait-unplug, ...) only wait for the
// next. A handler reports whether the migration has ended, and how.
var statusHandlers = map[string]func(*migration, context.Context) (bool, error){
	"pre-switchover": (*migration).preSwitchover,
	"completed":      (*migration).completed,
	"failed":         (*migration).failed,
	"cancelling":     (*migration).cancelled,
	"cancelled":      (*migration).cancelled,
}

// run follows the migration's status (events, and query-migrate every
// progressEvery for OnProgress and in case an event was missed) and hands
// each to its handler until one ends the migration.
func (m *migration) run(ctx context.Context, events <-chan qmp.Event) (hypervisor.Stats, error) {
	tick := time.NewTicker(progressEvery)
	defer tick.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return m.stats, m.connectionLost(ctx)
			}
			if ev.Name != "MIGRATION" {
				continue
			}
			var d struct {
				Status string `json:"status"`
			}
			_ = json.Unmarshal(ev.Data, &d)
			m.status = d.Status
		case <-tick.C:
			var mi migrateInfo
			if err := m.p.QMP().Execute(ctx, "query-migrate", nil, &mi); err != nil {
				continue // ctx, process or connection end is handled by its own case
			}
			m.status = mi.Status
			if m.opts.OnProgress != nil && mi.Status == "active" {
				m.opts.OnProgress(progress(m.start, mi))
			}
		case <-m.p.Done():
			return m.stats, fmt.Errorf("%w: vm %q: source QEMU exited during migration: %v", hypervisor.ErrMigration, m.name, m.p.Err())
		case <-ctx.Done():
			if m.status == "setup" { // never connected: a target that does not answer
				return m.stats, m.fail(ctx, fmt.Errorf("%w: vm %q to %s: no connection before %v", hypervisor.ErrUnreachable, m.name, m.to.URI, ctx.Err()))
			}
			return m.stats, m.fail(ctx, fmt.Errorf("%w: vm %q: %v", hypervisor.ErrAborted, m.name, ctx.Err()))
		}
		if handle := statusHandlers[m.status]; handle != nil {
			if done, err := handle(m, ctx); done {
				return m.stats, err
			}
		}
	}
}

// preSwitchover runs the switchover hook while the source is paused with
// its last state unsent, then lets QEMU complete (migrate-continue). A
// repeated report of pre-switchover is ignored.
func (m *migration) preSwitchover(ctx context.Context) (bool, error) {
	if m.switched {
		return false, nil // a late report of the state we already handled
	}
	m.switched = true
	m.stats.Switchover = time.Now()
	var herr error
	if m.opts.AtSwitchover != nil {
		herr = hypervisor.RunHook(ctx, m.opts.AtSwitchover)
	}
	m.stats.SwitchoverDone = time.Now()
	if herr != nil {
		return true, m.fail(ctx, fmt.Errorf("%w: vm %q: %v", hypervisor.ErrSwitchoverHook, m.name, herr))
	}
	if m.aborted() {
		return true, m.fail(ctx, fmt.Errorf("%w: vm %q on host %q", hypervisor.ErrAborted, m.name, m.h.host))
	}
	if err := m.p.QMP().Execute(ctx, "migrate-continue", map[string]any{"state": "pre-switchover"}, nil); err != nil {
		return true, m.fail(ctx, fmt.Errorf("%w: vm %q: migrate-continue: %v", hypervisor.ErrMigration, m.name, err))
	}
	m.status = "device"
	return false, nil
}

// failed ends a migration QEMU gave up on: ErrUnreachable if nothing was
// sent (and no TLS peer refused us), else ErrMigration.
func (m *migration) failed(ctx context.Context) (bool, error) {
	var mi migrateInfo
	_ = m.p.QMP().Execute(ctx, "query-migrate", nil, &mi)
	sentinel := hypervisor.ErrMigration
	if mi.RAM.Transferred == 0 && !(m.h.tlsDir != "" && tlsRefused(mi.ErrorDesc)) {
		sentinel = hypervisor.ErrUnreachable
	}
	return true, m.fail(ctx, fmt.Errorf("%w: vm %q to %s: %s", sentinel, m.name, m.to.URI, mi.ErrorDesc))
}

// cancelled ends a migration that was cancelled: by Abort (ErrAborted) or
// by QEMU itself (ErrMigration).
func (m *migration) cancelled(ctx context.Context) (bool, error) {
	if m.aborted() {
		return true, m.fail(ctx, fmt.Errorf("%w: vm %q on host %q", hypervisor.ErrAborted, m.name, m.h.host))
	}
	return true, m.fail(ctx, fmt.Errorf("%w: vm %q: migration cancelled by QEMU", hypervisor.ErrMigration, m.name))
}

// connectionLost handles the end of the monitor connection while QEMU may
// still run and migrate: fail reconnects to cancel it.
func (m *migration) connectionLost(ctx context.Context) error {
	return m.fail(ctx, fmt.Errorf("%w: vm %q: QMP connection lost: %v", hypervisor.ErrMigration, m.name, m.p.QMP().Err()))
}

// fail cancels the migration (if still running), makes sure the VM runs
// here (through a new monitor connection if the old one was lost), and
// returns cause (joined with what went wrong doing so).
func (m *migration) fail(ctx context.Context, cause error) error {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if err := cancelAndContinue(cctx, m.p); err != nil {
		cause = errors.Join(cause, fmt.Errorf("resume at source: %w", err))
	}
	m.h.log.Warn("migration failed", "vm", m.name, "host", m.h.host, "err", cause)
	return cause
}

// aborted reports whether Abort was called during this migration.
func (m *migration) aborted() bool {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	return m.e.aborted
}

func progress(start time.Time, mi migrateInfo) hypervisor.Progress {
	return hypervisor.Progress{Elapsed: time.Since(start), Transferred: mi.RAM.Transferred,
		Remaining: mi.RAM.Remaining, Total: mi.RAM.Total, Pass: mi.RAM.DirtySyncCount}
}

// completed collects the stats of a completed migration and quits the
// source. The last progress report (Remaining 0) is sent from here.
func (m *migration) completed(ctx context.Context) (bool, error) {
	h, name, e := m.h, m.name, m.e
	m.stats.Total = time.Since(m.start)
	var mi migrateInfo
	// QEMU announces "completed" a moment before it fills in the times:
	// poll briefly (the guest waits, paused at the target, meanwhile).
	for i := 0; i < 500; i++ {
		if err := e.p.QMP().Execute(ctx, "query-migrate", nil, &mi); err != nil || mi.TotalTime > 0 && mi.Downtime > 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if mi.Status == "completed" {
		m.stats.Downtime = time.Duration(mi.Downtime) * time.Millisecond
		m.stats.Bytes = mi.RAM.Transferred
		if m.opts.OnProgress != nil {
			m.opts.OnProgress(progress(m.start, mi))
		}
	}
	// The source is inert now (QEMU's postmigrate: it never runs the guest
	// again without an explicit cont) and gone from this Hypervisor at
	// once. It quits in the background: its exit and its tap's teardown
	// (which holds the kernel's RTNL lock for milliseconds) must not delay
	// the target's resume. Close waits for it.
	h.release(name, e)
	h.quitting.Add(1)
	gone := make(chan struct{})
	h.mu.Lock()
	h.exiting[name] = gone
	h.mu.Unlock()
	go func() {
		defer h.quitting.Done()
		qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = e.p.Quit(qctx)
		h.mu.Lock()
		if h.exiting[name] == gone {
			delete(h.exiting, name)
		}
		h.mu.Unlock()
		close(gone)
	}()
	h.log.Info("migration completed", "vm", name, "host", h.host, "total", m.stats.Total, "downtime", m.stats.Downtime, "bytes", m.stats.Bytes)
	return true, nil
}

// cancelAndContinue cancels a migration in flight, waits for it to settle
// and makes sure the VM runs at this (source) host. With no migration in
// flight it changes nothing. A lost monitor connection is replaced first:
// QEMU migrates on without one.
func cancelAndContinue(ctx context.Context, p *Process) error {
	if _, err := p.Reconnect(ctx); err != nil {
		return err
	}
	var mi migrateInfo
	if err := p.QMP().Execute(ctx, "query-migrate", nil, &mi); err != nil {
		return err
	}
	switch mi.Status {
	case "", "none", "completed":
		return nil
	case "failed", "cancelled":
	default:
		if err := p.QMP().Execute(ctx, "migrate_cancel", nil, nil); err != nil {
			return err
		}
		events, unsub := p.QMP().Subscribe()
		defer unsub()
		for settled := false; !settled; {
			if err := p.QMP().Execute(ctx, "query-migrate", nil, &mi); err != nil {
				return err
			}
			switch mi.Status {
			case "cancelled", "failed", "completed":
				settled = true
				continue
			}
			select {
			case <-events:
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if mi.Status == "completed" {
			return nil // too late: the guest is complete at the target
		}
	}
	st, err := p.Status(ctx)
	if err != nil {
		return err
	}
	switch st {
	case "running":
		return nil
	case "finish-migrate", "paused", "postmigrate":
		return p.QMP().Execute(ctx, "cont", nil, nil)
	}
	return nil
}
