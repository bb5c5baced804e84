package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sealift/sealift/agent"
	"github.com/sealift/sealift/agent/agentpki"
	"github.com/sealift/sealift/conn/conntrack"
	"github.com/sealift/sealift/conn/sockdiag"
	"github.com/sealift/sealift/fence"
	"github.com/sealift/sealift/fence/linkstate"
	"github.com/sealift/sealift/fence/nft"
	"github.com/sealift/sealift/hypervisor/qemu"
	"github.com/sealift/sealift/internal/nsutil"
	"github.com/sealift/sealift/ipsec"
	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/routing"
	"github.com/sealift/sealift/routing/gobgp"
	"github.com/sealift/sealift/routing/netlinkroute"
	"github.com/sealift/sealift/tunnel"
	"github.com/sealift/sealift/tunnel/wireguard"
)

// recoverTimeout bounds the List calls made on start.
const recoverTimeout = 30 * time.Second

// serve runs the agent until ctx ends (then stops it gracefully and
// returns nil) or serving fails.
func serve(ctx context.Context, cfg config, log *slog.Logger) error {
	tlsConf, identity, err := loadTLS(cfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("-state-dir: %w", err)
	}
	if err := nsutil.Check(cfg.netns); err != nil {
		return fmt.Errorf("-netns %q: %w", cfg.netns, err)
	}
	b, err := newBackends(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer b.close(log)
	found, err := b.recover(ctx)
	if err != nil {
		return err
	}
	opts := append(b.opts, agent.WithLogger(log))
	var reg *prometheus.Registry
	if cfg.metricsListen != "" {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
			collectors.NewBuildInfoCollector())
		opts = append(opts, agent.WithMetrics(reg))
	}
	srv, err := agent.NewServer(tlsConf, opts...)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	attrs := []any{"version", version(), "listen", l.Addr().String(), "identity", identity,
		"netns", cfg.netns, "state_dir", cfg.stateDir,
		"hypervisor", cfg.hypervisor, "fence", cfg.fence, "conn", cfg.conn, "routing", cfg.routing, "link", cfg.link}
	// Metrics: plain HTTP, no secrets (see the usage); they stop with the
	// agent.
	mctx, stopMetrics := context.WithCancel(ctx)
	defer stopMetrics()
	var merrc chan error // nil: no metrics server (never ready)
	if reg != nil {
		merrc = make(chan error, 1)
		ml, err := net.Listen("tcp", cfg.metricsListen)
		if err != nil {
			l.Close()
			return fmt.Errorf("-metrics-listen: %w", err)
		}
		attrs = append(attrs, "metrics_listen", ml.Addr().String())
		go func() { merrc <- metrics.ServeListener(mctx, ml, reg) }()
	}
	log.Info("sealift-agent started", append(attrs, found...)...)

	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	for {
		select {
		case <-ctx.Done():
			log.Info("sealift-agent stopping")
			srv.Stop()
			<-errc
			stopMetrics()
			if merrc != nil {
				if err := <-merrc; err != nil {
					log.Warn("stopping the metrics server", "err", err)
				}
			}
			log.Info("sealift-agent stopped")
			return nil
		case err := <-errc:
			return fmt.Errorf("serve %s: %w", l.Addr(), err)
		case err := <-merrc:
			// Migrations matter more than their metrics: serve on.
			log.Error("the metrics server failed: serving on without metrics", "err", err)
			merrc = nil
		}
	}
}

// loadTLS reads the TLS files (errors name them, never their contents)
// and returns the server config and the agent's identity ("agent/NAME").
func loadTLS(cfg config) (*tls.Config, string, error) {
	caPEM, cert, err := agentpki.LoadFiles(cfg.caFile, cfg.certFile, cfg.keyFile)
	if err != nil {
		return nil, "", err
	}
	leaf := cert.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return nil, "", fmt.Errorf("-cert %q: %w", cfg.certFile, err)
		}
	}
	role, name, err := agentpki.IdentityOf(leaf)
	if err != nil {
		return nil, "", fmt.Errorf("-cert %q: %w", cfg.certFile, err)
	}
	if role != agentpki.RoleAgent {
		return nil, "", fmt.Errorf("-cert %q: certificate of %s/%s, want an agent certificate", cfg.certFile, role, name)
	}
	if now := time.Now(); now.After(leaf.NotAfter) || now.Before(leaf.NotBefore) {
		return nil, "", fmt.Errorf("-cert %q: valid from %s to %s, not now", cfg.certFile,
			leaf.NotBefore.Format(time.RFC3339), leaf.NotAfter.Format(time.RFC3339))
	}
	tlsConf, err := agentpki.ServerConfig(caPEM, cert)
	if err != nil {
		return nil, "", fmt.Errorf("-ca %q: %w", cfg.caFile, err)
	}
	return tlsConf, string(role) + "/" + name, nil
}

// backends are the backends the flags enable, as agent options.
type backends struct {
	opts    []agent.Option
	fencer  fence.Fencer         // nil: -fence none
	router  routing.RouteWatcher // nil: -routing none
	ends    tunnel.LinkEnd       // nil: -link none
	closers []func() error
}

// newBackends builds the enabled backends. They act in cfg.netns and log
// to log with a "backend" attribute. Nothing is touched yet.
func newBackends(ctx context.Context, cfg config, log *slog.Logger) (*backends, error) {
	b := &backends{}
	with := func(name string) *slog.Logger { return log.With("backend", name) }
	switch cfg.fence {
	case "nft":
		b.fencer = nft.New(nft.WithHost(cfg.netns), nft.WithLogger(with("nft")))
	case "linkstate":
		b.fencer = linkstate.New(linkstate.WithHost(cfg.netns), linkstate.WithLogger(with("linkstate")))
	}
	if b.fencer != nil {
		b.opts = append(b.opts, agent.WithFencer(b.fencer))
	}
	switch cfg.conn {
	case "conntrack":
		b.opts = append(b.opts, agent.WithConnAuditor(conntrack.New(conntrack.WithHost(cfg.netns), conntrack.WithLogger(with("conntrack")))))
	case "sockdiag":
		b.opts = append(b.opts, agent.WithConnAuditor(sockdiag.New(sockdiag.WithHost(cfg.netns), sockdiag.WithLogger(with("sockdiag")))))
	}
	ends := tunnel.Kinds{}
	for _, kind := range splitList(cfg.link) {
		switch kind {
		case "wireguard":
			ends[tunnel.WireGuard] = wireguard.NewEnd(cfg.netns, wireguard.WithLogger(with("wireguard")),
				wireguard.WithStateDir(filepath.Join(cfg.stateDir, "wireguard")))
		case "ipsec":
			// X25519 per end; SA keys derived on this host (HKDF), never sent.
			ends[tunnel.IPsec] = ipsec.NewEnd(cfg.netns, ipsec.WithEndLogger(with("ipsec")),
				ipsec.WithEndStateDir(filepath.Join(cfg.stateDir, "ipsec")))
		}
	}
	switch len(ends) {
	case 1:
		for _, e := range ends {
			b.ends = e
		}
	case 2:
		b.ends = ends
	}
	if b.ends != nil {
		b.opts = append(b.opts, agent.WithLinkEnd(b.ends))
	}
	switch cfg.routing {
	case "netlinkroute":
		b.router = netlinkroute.New(netlinkroute.WithHost(cfg.netns), netlinkroute.WithLogger(with("netlinkroute")))
		b.opts = append(b.opts, agent.WithRouteWatcher(b.router))
	case "gobgp":
		sp, err := cfg.bgp.speaker() // checked by parseFlags
		if err != nil {
			return nil, err
		}
		// In this process: a speaker started inside its namespace (-netns
		// "") dials its neighbors from there.
		w, err := gobgp.New(ctx, gobgp.WithHost(cfg.netns), gobgp.WithSpeaker(sp), gobgp.WithLogger(with("gobgp")))
		if err != nil {
			b.close(log)
			return nil, fmt.Errorf("-routing gobgp: %w", err)
		}
		b.closers = append(b.closers, func() error { return w.Close(context.Background()) })
		if cfg.bgp.fibMetric > 0 {
			stop, err := w.SyncFIB(ctx, cfg.bgp.fibMetric)
			if err != nil {
				b.close(log)
				return nil, fmt.Errorf("-bgp-fib-metric: %w", err)
			}
			b.closers = append(b.closers, func() error { stop(); return nil })
		}
		b.router = w
		b.opts = append(b.opts, agent.WithRouteWatcher(w))
	}
	switch cfg.hypervisor {
	case "qemu":
		dir := cfg.qemuDir
		if dir == "" {
			dir = filepath.Join(cfg.stateDir, "qemu")
		}
		opts := []qemu.Option{qemu.WithHost(cfg.netns), qemu.WithStateDir(dir), qemu.WithLogger(with("qemu"))}
		if cfg.qemuTLS != "" {
			opts = append(opts, qemu.WithTLS(cfg.qemuTLS))
		}
		if cfg.qemuMigAddr != "" {
			opts = append(opts, qemu.WithMigrationAddr(netip.MustParseAddr(cfg.qemuMigAddr))) // checked by parseFlags
		}
		h, err := qemu.New(opts...)
		if err != nil {
			return nil, fmt.Errorf("-hypervisor qemu: %w", err)
		}
		// No Close: it would kill the VMs this agent started; they
		// outlive the agent.
		b.opts = append(b.opts, agent.WithHypervisor(h))
	case "libvirt":
		h, closeFn, err := newLibvirt(cfg.libvirtURI, with("libvirt"))
		if err != nil {
			return nil, fmt.Errorf("-hypervisor libvirt: %w", err)
		}
		b.closers = append(b.closers, closeFn)
		b.opts = append(b.opts, agent.WithHypervisor(h))
	}
	return b, nil
}

// recover lists what a previous run left in the kernel (the agent serves
// it as it is) and returns it as log attributes.
func (b *backends) recover(ctx context.Context) ([]any, error) {
	ctx, cancel := context.WithTimeout(ctx, recoverTimeout)
	defer cancel()
	var attrs []any
	if b.fencer != nil {
		fs, err := b.fencer.List(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the fences found: %w", err)
		}
		vms := make([]string, len(fs))
		for i, f := range fs {
			vms[i] = f.VM
		}
		attrs = append(attrs, "fences", len(fs), "fenced_vms", vms)
	}
	if b.ends != nil {
		es, err := b.ends.List(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the link ends found: %w", err)
		}
		ids := make([]string, len(es))
		for i, e := range es {
			ids[i] = e.Spec.ID
		}
		attrs = append(attrs, "link_ends", len(es), "links", ids)
	}
	if b.router != nil {
		rs, err := b.router.Redirects(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing the redirects found: %w", err)
		}
		attrs = append(attrs, "redirects", len(rs))
	}
	return attrs, nil
}

func (b *backends) close(log *slog.Logger) {
	for i := len(b.closers) - 1; i >= 0; i-- { // the last opened first
		if err := b.closers[i](); err != nil {
			log.Warn("closing a backend", "err", err)
		}
	}
}
