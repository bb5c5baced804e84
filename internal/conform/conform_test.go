package conform

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestRecorder(t *testing.T) {
	after := false
	r := Record(t, func(t testing.TB) {
		t.Errorf("one %d", 1)
		require.Equal(t, 1, 2, "two")
		after = true
	})
	assert.True(t, r.Failed())
	assert.False(t, after, "FailNow must end the check")
	assert.Equal(t, "one 1", r.Messages()[0])
	assert.Contains(t, r.Messages()[1], "two", "testify's message, without its trace")
	assert.NotContains(t, r.Messages()[1], "Error Trace")

	r = Record(t, func(t testing.TB) { t.Logf("fine") })
	assert.False(t, r.Failed())
	r = Record(t, func(t testing.TB) { t.Skip("no root") })
	assert.True(t, r.Skipped())
	assert.False(t, r.Failed())
}

func TestCovered(t *testing.T) {
	checks := []Check[int]{{Name: "A"}, {Name: "B"}}
	ok := []Mutant[int]{{Name: "m1", Caught: []string{"A"}}, {Name: "m2", Caught: []string{"B", "A"}}}
	assert.False(t, Record(t, func(t testing.TB) { Covered(t, checks, ok) }).Failed())
	r := Record(t, func(t testing.TB) { Covered(t, checks, ok[:1]) })
	assert.Equal(t, []string{`check "B": no broken backend shows that it can fail`}, r.Messages())
	r = Record(t, func(t testing.TB) { Covered(t, checks, append(ok, Mutant[int]{Caught: []string{"C"}})) })
	assert.Equal(t, []string{`a mutant names check "C", which does not exist`}, r.Messages())
	assert.Panics(t, func() { Find(checks, "C") })
}
