package host_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sealift/sealift/host"
)

func TestErrNotFoundWraps(t *testing.T) {
	err := fmt.Errorf("fence: %w", fmt.Errorf("%w: %q", host.ErrNotFound, "sl-gone"))
	assert.ErrorIs(t, err, host.ErrNotFound)
	assert.False(t, errors.Is(errors.New("host not found"), host.ErrNotFound), "a lookalike message is not the sentinel")
}
