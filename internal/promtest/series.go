package promtest

import (
	"bufio"
	"bytes"
	"fmt"
	"strconv"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
)

// Sample is one series of a family: a counter's, gauge's or untyped
// value, or a histogram's count and sum.
type Sample struct {
	Value float64
	Count uint64
	Sum   float64
}

// Series returns family name's samples as g gathers them, by their
// labels (`k="v",...` in the registry's order, sorted by name; "" for
// none).
func Series(g prometheus.Gatherer, name string) (map[string]Sample, error) {
	mfs, err := g.Gather()
	if err != nil {
		return nil, err
	}
	out := map[string]Sample{}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, lp := range m.GetLabel() {
				ls = append(ls, lp.GetName()+"="+strconv.Quote(lp.GetValue()))
			}
			var s Sample
			switch {
			case m.GetCounter() != nil:
				s.Value = m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				s.Value = m.GetGauge().GetValue()
			case m.GetUntyped() != nil:
				s.Value = m.GetUntyped().GetValue()
			case m.GetHistogram() != nil:
				s.Count, s.Sum = m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			}
			out[strings.Join(ls, ",")] = s
		}
	}
	return out, nil
}

// Lines returns an exposition text's samples by "name{labels}" exactly as
// written (comments and blank lines skipped).
func Lines(text []byte) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			return nil, fmt.Errorf("line %q: no value", line)
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return nil, fmt.Errorf("line %q: %w", line, err)
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}
