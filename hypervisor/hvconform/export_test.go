package hvconform

import "github.com/sealift/sealift/internal/conform"

// Checks exposes the suite's checks to its external test package (which
// needs internal/nshv, which imports this package).
func Checks() []conform.Check[Harness] { return checks }
