// Package hosttest checks that a backend reports a missing host the one
// way every contract does: an error wrapping host.ErrNotFound and naming
// the host.
package hosttest

import (
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/host"
)

// Missing runs each call (by name, in order) against a host named gone
// that does not exist and asserts its error.
func Missing(t *testing.T, gone string, calls map[string]func(context.Context) error) {
	t.Helper()
	for _, name := range slices.Sorted(maps.Keys(calls)) {
		t.Run(name, func(t *testing.T) {
			err := calls[name](t.Context())
			require.Error(t, err)
			assert.ErrorIs(t, err, host.ErrNotFound)
			assert.ErrorContains(t, err, gone)
		})
	}
}
