package promtest

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestSeriesAndLines(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	c := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "c", Help: "c"}, []string{"b", "a"})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h", Help: "h"})
	reg.MustRegister(c, h)
	c.WithLabelValues("2", "1").Add(3)
	h.Observe(0.5)
	h.Observe(1.5)
	s, err := Series(reg, "c")
	require.NoError(t, err)
	assert.Equal(t, map[string]Sample{`a="1",b="2"`: {Value: 3}}, s)
	s, err = Series(reg, "h")
	require.NoError(t, err)
	assert.Equal(t, map[string]Sample{"": {Count: 2, Sum: 2}}, s)

	l, err := Lines([]byte("# HELP c c\nc{b=\"2\",a=\"1\"} 3\n\ng 7.5\n"))
	require.NoError(t, err)
	assert.Equal(t, map[string]float64{`c{b="2",a="1"}`: 3, "g": 7.5}, l)
	_, err = Lines([]byte("c{} x\n"))
	assert.ErrorContains(t, err, `line "c{} x"`)
}
