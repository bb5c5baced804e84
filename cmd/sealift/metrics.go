package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/migration"
)

// serveMetrics serves m's metrics (and the process') at addr until the
// returned function is called; that function waits linger first (for a
// last scrape), cut short by ctx.
func serveMetrics(ctx context.Context, m *migration.Migrator, addr string, linger time.Duration, stderr io.Writer) (func(), error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mc, err := metrics.New(reg)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("-metrics-listen %q: %w", addr, err)
	}
	wctx, stopWatch := context.WithCancel(context.WithoutCancel(ctx))
	watched := mc.Watch(wctx, m)
	sctx, stopServe := context.WithCancel(context.WithoutCancel(ctx))
	served := make(chan error, 1)
	go func() { served <- metrics.ServeListener(sctx, l, reg) }()
	fmt.Fprintf(stderr, "metrics: http://%s%s\n", l.Addr(), metrics.Path)
	return func() {
		stopWatch()
		<-watched // every event observed
		if linger > 0 {
			fmt.Fprintf(stderr, "metrics: serving %v more\n", linger)
			select {
			case <-time.After(linger):
			case <-ctx.Done():
			}
		}
		stopServe()
		if err := <-served; err != nil {
			fmt.Fprintf(stderr, "sealift: %v\n", err)
		}
	}, nil
}
