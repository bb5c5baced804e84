package wireguard

import (
	"context"
	"fmt"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/sealift/sealift/internal/lab"
	"github.com/sealift/sealift/internal/nsutil"
)

// BenchmarkPrepareToFirstPacket: Prepare + Activate until the first UDP
// echo peer → VM comes back through the link; reports the median.
func BenchmarkPrepareToFirstPacket(b *testing.B) {
	w := newWorld(b)
	lk := testLinker(b, nil)
	ctx := context.Background()
	echo, err := lab.StartUDPEcho(w.vm, "10.1.0.10:7002")
	if err != nil {
		b.Fatal(err)
	}
	defer echo.Close()
	var samples, prep []time.Duration
	backend := ""
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		spec := w.spec()
		start := time.Now()
		link, err := lk.Prepare(ctx, spec)
		if err != nil {
			b.Fatal(err)
		}
		prep = append(prep, time.Since(start))
		if err := lk.Activate(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		if r, err := lab.SendUDP(w.l.Peer, "10.1.0.10:7002", []byte("first"), 1); r != 1 {
			b.Fatalf("first packet: %d replies, %v", r, err)
		}
		samples = append(samples, time.Since(start))
		backend = link.Backend
		b.StopTimer()
		if err := lk.Close(ctx, spec.ID); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	slices.Sort(samples)
	slices.Sort(prep)
	b.ReportMetric(float64(samples[len(samples)/2].Microseconds())/1000, "ms-median/first-packet")
	b.ReportMetric(float64(prep[len(prep)/2].Microseconds())/1000, "ms-median/prepare")
	b.Logf("%s: median %s (Prepare %s) over %d links", backend, samples[len(samples)/2], prep[len(prep)/2], len(samples))
}

// BenchmarkThroughputRatio: TCP bulk peer → VM through the link and over
// plain routes across the wan (the bare path, in a second lab); reports
// both rates and link/bare.
func BenchmarkThroughputRatio(b *testing.B) {
	const size = 32 << 20
	bare := newWorld(b)
	bare.plainPath(b)
	w := newWorld(b)
	lk := testLinker(b, nil)
	ctx := context.Background()
	spec := w.spec()
	link, err := lk.Prepare(ctx, spec)
	if err != nil {
		b.Fatal(err)
	}
	closeOnCleanup(b, lk, spec.ID)
	if err := lk.Activate(ctx, spec.ID); err != nil {
		b.Fatal(err)
	}
	for _, x := range []*world{bare, w} {
		stop, err := startSink(x.vm, "10.1.0.10:7100")
		if err != nil {
			b.Fatal(err)
		}
		defer stop()
	}
	var tBare, tLink time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		d, err := bulk(bare.l.Peer, "10.1.0.10:7100", size)
		if err != nil {
			b.Fatal(err)
		}
		tBare += d
		if d, err = bulk(w.l.Peer, "10.1.0.10:7100", size); err != nil {
			b.Fatal(err)
		}
		tLink += d
	}
	mb := float64(size) * float64(b.N) / 1e6
	bareRate, linkRate := mb/tBare.Seconds(), mb/tLink.Seconds()
	b.ReportMetric(bareRate, "bare-MB/s")
	b.ReportMetric(linkRate, "link-MB/s")
	b.ReportMetric(linkRate/bareRate, "link/bare")
	b.Logf("%s: link %.0f MB/s, bare %.0f MB/s", link.Backend, linkRate, bareRate)
}

// startSink accepts TCP connections on addr in ns and discards what they
// send, closing each at EOF.
func startSink(ns, addr string) (stop func(), err error) {
	var ln net.Listener
	if err := nsutil.Do(ns, func() (err error) { ln, err = net.Listen("tcp", addr); return }); err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				_, _ = io.Copy(io.Discard, c)
				c.Close()
			}()
		}
	}()
	return func() { ln.Close() }, nil
}

// bulk sends n bytes from ns to addr and returns the time until the sink
// has read them all (it closes at EOF).
func bulk(ns, addr string, n int) (time.Duration, error) {
	var c net.Conn
	if err := nsutil.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 2*time.Second); return }); err != nil {
		return 0, err
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for sent := 0; sent < n; {
		k, err := c.Write(buf[:min(len(buf), n-sent)])
		if err != nil {
			return 0, fmt.Errorf("bulk write: %w", err)
		}
		sent += k
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.Copy(io.Discard, c); err != nil {
		return 0, fmt.Errorf("bulk wait for sink: %w", err)
	}
	return time.Since(start), nil
}
