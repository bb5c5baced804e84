package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Path is where Handler serves the metrics.
const Path = "/metrics"

// Serving limits: a scrape is small and Prometheus scrapes one at a time.
const (
	scrapeTimeout   = 30 * time.Second
	maxScrapes      = 4
	shutdownTimeout = 5 * time.Second
)

// Handler serves g's metrics at Path (Prometheus' text format, or
// OpenMetrics when the scraper asks for it) and nothing else (404). A
// collector's error fails the scrape (HTTP 500), so it is seen.
func Handler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(Path, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		Timeout:             scrapeTimeout,
		MaxRequestsInFlight: maxScrapes,
		EnableOpenMetrics:   true,
	}))
	return mux
}

// Serve listens on addr (HOST:PORT) and serves Handler(g) over plain HTTP
// until ctx ends; it then shuts the server down (scrapes in flight get a
// few seconds) and returns nil. The metrics carry no secret (no key, no
// address of a VM), but bind addr to a management address: they describe
// the hosts and their migrations. A listen error names addr.
func Serve(ctx context.Context, addr string, g prometheus.Gatherer) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics: listen %s: %w", addr, err)
	}
	return ServeListener(ctx, l, g)
}

// ServeListener is Serve on a listener the caller made (and Serve closes).
func ServeListener(ctx context.Context, l net.Listener, g prometheus.Gatherer) error {
	srv := &http.Server{Handler: Handler(g), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(l) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: serve %s: %w", l.Addr(), err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) {
		err = errors.Join(err, serr)
	}
	if err != nil {
		return fmt.Errorf("metrics: shut down %s: %w", l.Addr(), err)
	}
	return nil
}
