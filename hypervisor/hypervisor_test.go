package hypervisor_test

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"

	"github.com/sealift/sealift/hypervisor"
)

func TestValidName(t *testing.T) {
	for _, tc := range []struct {
		name string
		want string // "" = valid; else a part of the error
	}{
		{"vm1", ""},
		{"a", ""},
		{"web-01_eu.west", ""},
		{strings.Repeat("x", 64), ""},
		{"", "empty"},
		{strings.Repeat("x", 65), `"` + strings.Repeat("x", 65) + `"`},
		{".hidden", `".hidden"`},
		{"bad/name", `'/'`},
		{"a b", `' '`},
		{"vm,2", `','`},
		{"vmé", `'é'`},
	} {
		err := hypervisor.ValidName(tc.name)
		if tc.want == "" {
			assert.NoError(t, err, "ValidName(%q)", tc.name)
			continue
		}
		assert.ErrorIs(t, err, hypervisor.ErrInvalid, "ValidName(%q)", tc.name)
		assert.ErrorContains(t, err, tc.want, "ValidName(%q)", tc.name)
	}
}

func TestMigrateOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		opts hypervisor.MigrateOptions
		want string // "" = valid; else a part of the error
	}{
		{hypervisor.MigrateOptions{}, ""},
		{hypervisor.MigrateOptions{MaxDowntime: time.Millisecond, MaxBandwidth: 1}, ""},
		{hypervisor.MigrateOptions{MaxDowntime: 300 * time.Millisecond}, ""},
		{hypervisor.MigrateOptions{MaxDowntime: hypervisor.MaxDowntimeLimit}, ""},
		{hypervisor.MigrateOptions{MaxDowntime: -time.Millisecond}, "MaxDowntime -1ms is negative"},
		{hypervisor.MigrateOptions{MaxDowntime: 500 * time.Microsecond}, "MaxDowntime 500µs is below 1ms"},
		{hypervisor.MigrateOptions{MaxDowntime: hypervisor.MaxDowntimeLimit + time.Millisecond}, "MaxDowntime 33m20.001s exceeds"},
	} {
		err := tc.opts.Validate()
		if tc.want == "" {
			assert.NoError(t, err, "%+v", tc.opts)
			continue
		}
		assert.ErrorIs(t, err, hypervisor.ErrInvalid, "%+v", tc.opts)
		assert.ErrorContains(t, err, tc.want, "%+v", tc.opts)
	}
}
