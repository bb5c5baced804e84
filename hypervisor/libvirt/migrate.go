package libvirt

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	golibvirt "libvirt.org/go/libvirt"

	"github.com/sealift/sealift/hypervisor"
)

// progressEvery is how often Migrate polls the job for OnProgress.
const progressEvery = 100 * time.Millisecond

// eventWait bounds how long Migrate waits, after libvirt reported
// success, for the source's "suspended: migrated" and "job completed"
// events (they travel separately from the call's reply).
const eventWait = 5 * time.Second

// Migrate live-migrates name peer-to-peer to the daemon at to.URI
// (data over to.MigrateURI if set), leaving it paused there.
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
	if err := checkPeerURI(to.URI); err != nil {
		return stats, err
	}
	params := &golibvirt.DomainMigrateParameters{}
	if to.MigrateURI != "" {
		if err := checkMigrateURI(to.MigrateURI); err != nil {
			return stats, err
		}
		u, _ := url.Parse(to.MigrateURI)
		params.URISet, params.URI = true, to.MigrateURI
		params.ListenAddressSet, params.ListenAddress = true, u.Hostname()
	}
	if opts.MaxBandwidth > 0 {
		params.BandwidthSet, params.Bandwidth = true, max(1, opts.MaxBandwidth>>20) // MiB/s
	}
	d, err := h.domain(ctx, name)
	if err != nil {
		return stats, err
	}
	defer d.Free()
	s, _, _, err := state(d)
	if err != nil {
		return stats, fmt.Errorf("libvirt: state of %q on host %q: %w", name, h.host, err)
	}
	if s != hypervisor.Running && s != hypervisor.Paused {
		return stats, fmt.Errorf("%w: %q on host %q is %s", hypervisor.ErrState, name, h.host, s)
	}
	h.mu.Lock()
	delete(h.aborted, name)
	h.mu.Unlock()

	// Events: the source pausing for switchover, and the job's final stats.
	suspended := make(chan time.Time, 1)
	completed := make(chan golibvirt.DomainJobInfo, 1)
	lid, err := h.conn.DomainEventLifecycleRegister(d, func(_ *golibvirt.Connect, _ *golibvirt.Domain, ev *golibvirt.DomainEventLifecycle) {
		if ev.Event == golibvirt.DOMAIN_EVENT_SUSPENDED && golibvirt.DomainEventSuspendedDetailType(ev.Detail) == golibvirt.DOMAIN_EVENT_SUSPENDED_MIGRATED {
			select {
			case suspended <- time.Now():
			default:
			}
		}
	})
	if err != nil {
		return stats, fmt.Errorf("libvirt: register lifecycle events: %w", err)
	}
	defer h.conn.DomainEventDeregister(lid)
	cid, err := h.conn.DomainEventJobCompletedRegister(d, func(_ *golibvirt.Connect, _ *golibvirt.Domain, ev *golibvirt.DomainEventJobCompleted) {
		select {
		case completed <- ev.Info:
		default:
		}
	})
	if err != nil {
		return stats, fmt.Errorf("libvirt: register job events: %w", err)
	}
	defer h.conn.DomainEventDeregister(cid)

	if opts.MaxDowntime > 0 {
		if err := d.MigrateSetMaxDowntime(uint64(opts.MaxDowntime.Milliseconds()), 0); err != nil {
			h.log.Debug("set max downtime", "vm", name, "err", err)
		}
	}

	h.log.Info("migration started", "vm", name, "host", h.host, "to", to.URI, "data", to.MigrateURI, "tls", h.tls)
	flags := golibvirt.MIGRATE_LIVE | golibvirt.MIGRATE_PEER2PEER | golibvirt.MIGRATE_PAUSED
	if h.tls {
		flags |= golibvirt.MIGRATE_TLS
	}
	return h.runJob(ctx, migrationJob{name: name, to: to, opts: opts, d: d, params: params, flags: flags,
		suspended: suspended, completed: completed})
}

// jobDomain is what the job loop calls on the source domain:
// *golibvirt.Domain has it, and tests play it without a daemon.
type jobDomain interface {
	MigrateToURI3(dconnuri string, params *golibvirt.DomainMigrateParameters, flags golibvirt.DomainMigrateFlags) error
	GetJobInfo() (*golibvirt.DomainJobInfo, error)
	AbortJob() error
	GetState() (golibvirt.DomainState, int, error)
	Resume() error
}

var _ jobDomain = (*golibvirt.Domain)(nil)

// migrationJob is one outgoing migration: the source domain, the
// arguments of the call that runs the job, and the events the job loop
// waits for.
type migrationJob struct {
	name   string
	to     hypervisor.Endpoint
	opts   hypervisor.MigrateOptions
	d      jobDomain
	params *golibvirt.DomainMigrateParameters
	flags  golibvirt.DomainMigrateFlags
	// suspended receives the source's lifecycle event "suspended:
	// migrated", completed the job-completed event's statistics.
	suspended <-chan time.Time
	completed <-chan golibvirt.DomainJobInfo
}

// runJob runs the migration job j (MigrateToURI3 blocks until it ends):
// the switchover hook on the first "suspended: migrated", progress
// reports, an AbortJob when ctx ends; once the job has ended, the error
// with its sentinel (the VM resumed at the source) or the stats.
func (h *Hypervisor) runJob(ctx context.Context, j migrationJob) (hypervisor.Stats, error) {
	var stats hypervisor.Stats
	name, to, opts, d, suspended, completed := j.name, j.to, j.opts, j.d, j.suspended, j.completed
	start := time.Now()
	done := make(chan struct{})
	var wg sync.WaitGroup
	// The switchover hook, on "suspended: migrated".
	var hookErr error
	hookRan := make(chan struct{})
	runHookOnce := sync.OnceFunc(func() {
		defer close(hookRan)
		stats.Switchover = time.Now()
		if opts.AtSwitchover != nil {
			hookErr = hypervisor.RunHook(ctx, opts.AtSwitchover)
		}
		stats.SwitchoverDone = time.Now()
		if hookErr != nil {
			// Still copying? Then cancel: libvirt resumes the source.
			_ = d.AbortJob()
		}
	})
	wg.Add(2)
	go func() {
		defer wg.Done()
		select {
		case <-suspended:
			runHookOnce()
		case <-done:
		}
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				_ = d.AbortJob()
				return
			case <-t.C:
				ji, err := d.GetJobInfo()
				if err != nil || ji.Type == golibvirt.DOMAIN_JOB_NONE || opts.OnProgress == nil {
					continue
				}
				opts.OnProgress(hypervisor.Progress{Elapsed: time.Since(start), Transferred: ji.DataProcessed,
					Remaining: ji.DataRemaining, Total: ji.MemTotal})
			}
		}
	}()

	merr := d.MigrateToURI3(to.URI, j.params, j.flags)
	if merr == nil {
		// The source is gone: make sure the hook has run.
		select {
		case <-suspended:
			runHookOnce()
		case <-hookRan:
		case <-time.After(eventWait):
			h.log.Warn("no suspended event after migration; running the hook now", "vm", name)
			runHookOnce()
		}
	}
	close(done)
	wg.Wait()
	stats.Total = time.Since(start)

	h.mu.Lock()
	aborted := h.aborted[name]
	delete(h.aborted, name)
	h.mu.Unlock()
	hookDone := false
	select {
	case <-hookRan:
		hookDone = true
	default:
	}
	switch {
	case hookDone && hookErr != nil:
		err := fmt.Errorf("%w: vm %q: %v", hypervisor.ErrSwitchoverHook, name, hookErr)
		if merr == nil {
			err = fmt.Errorf("%w (the stream had completed: the VM is paused at the target)", err)
		}
		h.ensureRunning(d)
		return stats, err
	case merr != nil:
		h.ensureRunning(d)
		sentinel := hypervisor.ErrMigration
		switch {
		case aborted || ctx.Err() != nil || isCode(merr, golibvirt.ERR_OPERATION_ABORTED):
			sentinel = hypervisor.ErrAborted
		case unreachable(merr):
			sentinel = hypervisor.ErrUnreachable
		case exists(merr):
			sentinel = hypervisor.ErrExists
		}
		return stats, fmt.Errorf("%w: vm %q to %s: %v", sentinel, name, to.URI, merr)
	}
	select {
	case ji := <-completed:
		stats.Downtime = time.Duration(ji.Downtime) * time.Millisecond
		stats.Bytes = ji.DataProcessed
		if opts.OnProgress != nil {
			opts.OnProgress(hypervisor.Progress{Elapsed: stats.Total, Transferred: ji.DataProcessed, Total: ji.MemTotal})
		}
	case <-time.After(eventWait):
		h.log.Warn("no job-completed event after migration", "vm", name)
	}
	h.log.Info("migration completed", "vm", name, "host", h.host, "total", stats.Total, "downtime", stats.Downtime, "bytes", stats.Bytes)
	return stats, nil
}

// ensureRunning resumes the source after a failed migration if libvirt
// left it paused for the migration.
func (h *Hypervisor) ensureRunning(d jobDomain) {
	st, reason, err := d.GetState()
	if err == nil && st == golibvirt.DOMAIN_PAUSED && golibvirt.DomainPausedReason(reason) == golibvirt.DOMAIN_PAUSED_MIGRATION {
		if err := d.Resume(); err != nil {
			h.log.Warn("resume source after failed migration", "err", err)
		}
	}
}

func unreachable(err error) bool {
	var le golibvirt.Error
	if !errors.As(err, &le) {
		return false
	}
	m := strings.ToLower(le.Message)
	return le.Domain == golibvirt.FROM_RPC || le.Code == golibvirt.ERR_NO_CONNECT ||
		strings.Contains(m, "unable to connect") || strings.Contains(m, "connection refused") ||
		strings.Contains(m, "no route to host") || strings.Contains(m, "failed to connect")
}

func exists(err error) bool {
	var le golibvirt.Error
	if !errors.As(err, &le) {
		return false
	}
	return le.Code == golibvirt.ERR_DOM_EXIST || strings.Contains(le.Message, "already active") || strings.Contains(le.Message, "already exists")
}

// Abort cancels a migration of name. At a source it aborts the job
// (libvirt resumes the VM there); at a target it destroys a domain that
// was prepared here and never resumed. Nothing to abort: no-op.
func (h *Hypervisor) Abort(ctx context.Context, name string) error {
	if err := hypervisor.ValidName(name); err != nil {
		return err
	}
	h.mu.Lock()
	prepared := h.prepared[name]
	h.mu.Unlock()
	d, err := h.domain(ctx, name)
	if errors.Is(err, hypervisor.ErrNotFound) {
		h.mu.Lock()
		delete(h.prepared, name)
		h.mu.Unlock()
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Free()
	if prepared {
		if st, _, err := d.GetState(); err == nil && st != golibvirt.DOMAIN_RUNNING {
			if err := d.Destroy(); err != nil && !isCode(err, golibvirt.ERR_NO_DOMAIN) && !isCode(err, golibvirt.ERR_OPERATION_INVALID) {
				return fmt.Errorf("libvirt: discard incoming %q on host %q: %w", name, h.host, err)
			}
			h.log.Info("incoming discarded", "vm", name, "host", h.host)
		}
		h.mu.Lock()
		delete(h.prepared, name)
		h.mu.Unlock()
		return nil
	}
	ji, err := d.GetJobInfo()
	if err != nil || ji.Type == golibvirt.DOMAIN_JOB_NONE {
		return nil
	}
	h.mu.Lock()
	h.aborted[name] = true
	h.mu.Unlock()
	if err := d.AbortJob(); err != nil && !isCode(err, golibvirt.ERR_OPERATION_INVALID) {
		return fmt.Errorf("libvirt: abort job of %q on host %q: %w", name, h.host, err)
	}
	// Wait for the job to end, then make sure the VM runs here.
	for {
		ji, err := d.GetJobInfo()
		if err != nil || ji.Type == golibvirt.DOMAIN_JOB_NONE {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	h.ensureRunning(d)
	return nil
}
