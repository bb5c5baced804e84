package metrics_test

import (
	"context"
	"log"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sealift/sealift/metrics"
	"github.com/sealift/sealift/migration"
)

// A controller program: its Migrator's events become metrics, served at
// http://127.0.0.1:9464/metrics while ctx lasts.
func Example() {
	ctx := context.Background()
	var cfg migration.Config // the program's Environments, Linkers, Journal
	m, err := migration.New(cfg)
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	c, err := metrics.New(reg)
	if err != nil {
		log.Fatal(err)
	}
	c.Watch(ctx, m) // subscribed now: the runs below are seen from their start
	go func() {
		if err := metrics.Serve(ctx, "127.0.0.1:9464", reg); err != nil {
			log.Print(err)
		}
	}()
	// ... m.Run(ctx, plan), m.Recover(ctx), m.Standby(ctx, ...)
}
