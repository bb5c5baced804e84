package gobgp

import (
	"context"
	"log/slog"

	bgplog "github.com/osrg/gobgp/v3/pkg/log"
)

// slogAdapter lets GoBGP log through a *slog.Logger. GoBGP's Panic and
// Fatal levels are logged as errors: an embedded speaker never ends the
// program.
type slogAdapter struct {
	l *slog.Logger
}

var _ bgplog.Logger = slogAdapter{}

func (a slogAdapter) log(level slog.Level, msg string, fields bgplog.Fields) {
	if !a.l.Enabled(context.Background(), level) {
		return
	}
	attrs := make([]any, 0, 2*len(fields)+2)
	attrs = append(attrs, "component", "gobgp")
	for k, v := range fields {
		attrs = append(attrs, k, v)
	}
	a.l.Log(context.Background(), level, msg, attrs...)
}

func (a slogAdapter) Panic(msg string, f bgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a slogAdapter) Fatal(msg string, f bgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a slogAdapter) Error(msg string, f bgplog.Fields) { a.log(slog.LevelError, msg, f) }
func (a slogAdapter) Warn(msg string, f bgplog.Fields)  { a.log(slog.LevelWarn, msg, f) }
func (a slogAdapter) Info(msg string, f bgplog.Fields)  { a.log(slog.LevelInfo, msg, f) }
func (a slogAdapter) Debug(msg string, f bgplog.Fields) { a.log(slog.LevelDebug, msg, f) }

// SetLevel is ignored: the slog handler decides what is kept.
func (a slogAdapter) SetLevel(bgplog.LogLevel) {}

// GetLevel reports the most detailed level the handler keeps, so GoBGP
// skips building debug messages nobody reads.
func (a slogAdapter) GetLevel() bgplog.LogLevel {
	ctx := context.Background()
	switch {
	case a.l.Enabled(ctx, slog.LevelDebug):
		return bgplog.DebugLevel
	case a.l.Enabled(ctx, slog.LevelInfo):
		return bgplog.InfoLevel
	case a.l.Enabled(ctx, slog.LevelWarn):
		return bgplog.WarnLevel
	}
	return bgplog.ErrorLevel
}
