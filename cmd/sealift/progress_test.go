package main

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration"
)

// On a terminal, the hypervisor's progress rewrites one line in place
// (block, percent of the guest's memory this pass, MiB sent and left,
// pass, rate); the next event starts on a line of its own. Elsewhere
// every event is a line.
func TestProgressLine(t *testing.T) {
	evs := []migration.Event{
		migration.StepStarted{ID: "m1", Block: migration.BlockMigrate},
		migration.MigrationProgress{ID: "m1", Progress: hypervisor.Progress{Elapsed: 2 * time.Second, Transferred: 64 << 20, Remaining: 96 << 20, Total: 128 << 20, Pass: 1}},
		migration.MigrationProgress{ID: "m1", Progress: hypervisor.Progress{Elapsed: 4 * time.Second, Transferred: 160 << 20, Remaining: 32 << 20, Total: 128 << 20, Pass: 2}},
		migration.StepFinished{ID: "m1", Block: migration.BlockMigrate, Duration: 4 * time.Second},
		migration.StepFinished{ID: "m1", Block: migration.BlockRestart, Err: errors.New("boom")},
	}
	var tty bytes.Buffer
	p := &eventPrinter{w: &tty, tty: true}
	for _, e := range evs {
		p.print(e)
	}
	assert.Equal(t, "block 330 migrate ...\n"+
		"\r\033[K[block 330 migrate]  25%  64.0 MiB sent, 96.0 MiB left, pass 1, 32.0 MiB/s"+
		"\r\033[K[block 330 migrate]  75%  160.0 MiB sent, 32.0 MiB left, pass 2, 40.0 MiB/s\n"+
		"block 330 migrate done in 4s\n"+
		"block 345 restart failed after 0s: boom\n", tty.String())

	var plain bytes.Buffer
	p = newEventPrinter(&plain, &plain) // not a terminal
	for _, e := range evs {
		p.print(e)
	}
	assert.Equal(t, "block 330 migrate ...\n"+
		"migrating: 64.0 MiB sent, 96.0 MiB left (pass 1)\n"+
		"migrating: 160.0 MiB sent, 32.0 MiB left (pass 2)\n"+
		"block 330 migrate done in 4s\n"+
		"block 345 restart failed after 0s: boom\n", plain.String())
}
