package qemu_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/host"
	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/hypervisor/qemu"
)

// TestNewUnknownHost: a host (netns) that does not exist is refused as
// invalid input and as host.ErrNotFound, naming it (no QEMU, no root).
func TestNewUnknownHost(t *testing.T) {
	const gone = "sl-no-such-netns"
	_, err := qemu.New(qemu.WithHost(gone))
	require.Error(t, err)
	assert.ErrorIs(t, err, hypervisor.ErrInvalid)
	assert.ErrorIs(t, err, host.ErrNotFound)
	assert.ErrorContains(t, err, gone)
}
