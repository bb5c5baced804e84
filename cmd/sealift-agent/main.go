// Command sealift-agent is the stand-alone sealift agent: it serves one
// host's backends (a fencer, a connection auditor, a routing core's
// watcher, a hypervisor) to the controller over gRPC with mutual TLS
// (package agent). Run it with -help for its flags; README.md has an
// example and a systemd unit.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run is the whole program: parse, build the backends, serve until
// SIGINT or SIGTERM. It returns the exit status: 0, 1 (the agent could
// not start or stopped on an error) or 2 (bad flags).
func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseFlags(args, stderr)
	var ue usageError
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "sealift-agent: %s\n", ue)
		return 2
	case err != nil: // the flag package printed it, with the usage
		return 2
	}
	if cfg.version {
		fmt.Fprintln(stdout, "sealift-agent", version())
		return 0
	}
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		log.Error("sealift-agent failed", "err", err)
		return 1
	}
	return 0
}

// version is the main module's version from the build info, "(devel)"
// if unknown.
func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
