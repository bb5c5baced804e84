package promtest

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSum(t *testing.T) {
	fams, err := Parse(strings.NewReader(`# TYPE c counter
c{outcome="completed",link="wireguard"} 2
c{outcome="rolled-back",link="wireguard"} 1
# TYPE g gauge
g 7
# TYPE h histogram
h_bucket{block="330",le="+Inf"} 3
h_sum{block="330"} 1.5
h_count{block="330"} 3
h_bucket{block="345",le="+Inf"} 1
h_sum{block="345"} 0.25
h_count{block="345"} 1
`))
	require.NoError(t, err)
	v, _ := fams.Sum("c", nil)
	assert.Equal(t, 3.0, v)
	v, _ = fams.Sum("c", map[string]string{"outcome": "completed"})
	assert.Equal(t, 2.0, v)
	v, _ = fams.Sum("c", map[string]string{"outcome": "completed", "link": "ipsec"})
	assert.Zero(t, v)
	v, _ = fams.Sum("g", nil)
	assert.Equal(t, 7.0, v)
	v, n := fams.Sum("h", map[string]string{"block": "330"})
	assert.Equal(t, 1.5, v)
	assert.Equal(t, uint64(3), n)
	_, n = fams.Sum("h", nil)
	assert.Equal(t, uint64(4), n)
	v, n = fams.Sum("missing", nil)
	assert.Zero(t, v)
	assert.Zero(t, n)
}
