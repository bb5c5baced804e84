// Package promtest reads Prometheus' text format as a scraper would, for
// the tests and the lab that check sealift's /metrics by value.
package promtest

import (
	"io"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Families are a scrape's metric families by name.
type Families map[string]*dto.MetricFamily

// Parse reads a scrape's body (the text format).
func Parse(r io.Reader) (Families, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	return p.TextToMetricFamilies(r)
}

// Sum adds up family name's series whose labels include want (nil: all):
// the values of counters, gauges and untyped metrics, and of histograms
// the sum of their samples (value) and their count (n).
func (f Families) Sum(name string, want map[string]string) (value float64, n uint64) {
	fam := f[name]
	if fam == nil {
		return 0, 0
	}
next:
	for _, m := range fam.GetMetric() {
		for k, wv := range want {
			found := false
			for _, lp := range m.GetLabel() {
				found = found || lp.GetName() == k && lp.GetValue() == wv
			}
			if !found {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			value += m.GetCounter().GetValue()
		case m.Gauge != nil:
			value += m.GetGauge().GetValue()
		case m.Untyped != nil:
			value += m.GetUntyped().GetValue()
		case m.Histogram != nil:
			value += m.GetHistogram().GetSampleSum()
			n += m.GetHistogram().GetSampleCount()
		}
	}
	return value, n
}
