package main

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The run's picture: a decodable PNG with a row per block and the
// switchover's rows; no file when no migration ran.
func TestTimelinePNG(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "none.png")
	require.NoError(t, writeTimelinePNG(&Result{}, empty))
	assert.NoFileExists(t, empty)

	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	f := func(v float64) *float64 { return &v }
	m := MigrationResult{VM: "vm1", ID: "m1", Outcome: "completed",
		Steps: []Step{{Block: 310, Name: "select", Start: t0, MS: 5}, {Block: 330, Name: "migrate", Start: t0.Add(10 * time.Millisecond), MS: 900},
			{Block: 345, Name: "restart", Start: t0.Add(920 * time.Millisecond), MS: 60, Err: "boom"}},
		Timeline: Timeline{SourcePaused: t0.Add(850 * time.Millisecond), HookEndMS: f(15), TargetResumedMS: f(60),
			FirstReplyMS: map[string]*float64{"peer": f(130)}},
		Blackout: Blackout{MS: 120, From: t0.Add(855 * time.Millisecond)}}
	path := filepath.Join(dir, "lab.png")
	require.NoError(t, writeTimelinePNG(&Result{Migrations: []MigrationResult{m}}, path))
	fh, err := os.Open(path)
	require.NoError(t, err)
	defer fh.Close()
	img, err := png.Decode(fh)
	require.NoError(t, err)
	assert.Equal(t, pngW, img.Bounds().Dx())
	assert.Greater(t, img.Bounds().Dy(), pngHeader+3*pngRow+pngHeader+4*pngRow)
}
