package migrationtest_test

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sealift/sealift/hypervisor"
	"github.com/sealift/sealift/migration/migrationtest"
)

var errBoom = errors.New("boom")

// A method name the fake does not have is refused, whatever the kind of
// fault: a typo must not silently inject nothing.
func TestFaultsRefuseUnknownMethods(t *testing.T) {
	s := migrationtest.NewSetup()
	faults := map[string]*migrationtest.Faults{
		"hv": &s.Secure.Hypervisor.Faults, "fence": &s.Secure.Fencer.Faults, "audit": &s.Cloud.Auditor.Faults,
		"link": &s.Linker.Faults, "routing": &s.Router.Faults,
	}
	for name, f := range faults {
		assert.Panics(t, func() { f.FailOn("Lokup", 1, errBoom) }, name)
		assert.Panics(t, func() { f.CrashOn("lookup", 1) }, name)
		assert.Panics(t, func() { f.OnCall("", 1, func() {}) }, name)
	}
	assert.PanicsWithValue(t, `migrationtest: hv:a has no method "Lokup" (it has [Abort Lookup Migrate PrepareIncoming Resume])`,
		func() { s.Secure.Hypervisor.FailOn("Lokup", 1, errBoom) })
	// A method of another contract is not one of this fake's.
	assert.Panics(t, func() { s.Secure.Fencer.FailOn("Activate", 1, errBoom) })
	assert.Panics(t, func() { s.Linker.FailOn("Fence", 1, errBoom) })
	// FailAfter only where the fake supports it; nth is never negative.
	assert.Panics(t, func() { s.Secure.Fencer.FailAfter("Fence", 1, errBoom) })
	assert.Panics(t, func() { s.Secure.Hypervisor.FailOn("Migrate", -1, errBoom) })
	assert.NotPanics(t, func() {
		s.Secure.Hypervisor.FailAfter("Migrate", 1, errBoom)
		s.Secure.Fencer.FailOn("Lift", 0, errBoom)
		s.Linker.CrashOn("Verify", 2)
		s.Router.OnCall("Wait", 1, func() {})
	})
}

func TestFaultsInjectAndCount(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	hv := s.Secure.Hypervisor
	hv.FailOn("Lookup", 2, errBoom)
	_, err := hv.Lookup(ctx, "vm1")
	require.NoError(t, err)
	assert.Zero(t, hv.Injected())
	_, err = hv.Lookup(ctx, "vm1")
	assert.ErrorIs(t, err, errBoom)
	assert.Equal(t, 1, hv.Injected())
	_, err = hv.Lookup(ctx, "vm1")
	assert.NoError(t, err, "only the 2nd call fails")

	// OnCall runs before the call looks at its context.
	cctx, cancel := context.WithCancel(ctx)
	s.Cloud.Fencer.OnCall("List", 1, cancel)
	_, err = s.Cloud.Fencer.List(cctx)
	assert.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, s.Cloud.Fencer.Injected(), "OnCall is not an injected failure")

	hv.ClearFaults()
	_, err = hv.Lookup(ctx, "vm1")
	assert.NoError(t, err)
	assert.Equal(t, "hv:a.Lookup(vm1)", s.Calls()[0].String())
}

// FailAfter on Migrate: the VM moves, the caller hears a failure.
func TestFailAfterMigrate(t *testing.T) {
	ctx := context.Background()
	s := migrationtest.NewSetup()
	vm, err := s.Secure.Hypervisor.Lookup(ctx, "vm1")
	require.NoError(t, err)
	ep, err := s.Cloud.Hypervisor.PrepareIncoming(ctx, vm)
	require.NoError(t, err)
	s.Secure.Hypervisor.FailAfter("Migrate", 1, errBoom)
	_, err = s.Secure.Hypervisor.Migrate(ctx, "vm1", ep, hypervisor.MigrateOptions{})
	assert.ErrorIs(t, err, errBoom)
	assert.Equal(t, []string{"b"}, s.Where("vm1"))
	assert.Equal(t, hypervisor.Paused, s.State("b", "vm1"))
	assert.Equal(t, 1, s.Secure.Hypervisor.Injected())
	assert.Empty(t, s.Violations())
}
