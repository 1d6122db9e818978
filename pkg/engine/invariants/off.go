//go:build !invariants

// Package invariants reports whether expensive consistency checks are compiled in.
// `make test` builds with `-tags invariants`; production builds do not.
package invariants

// Enabled is true when the binary was built with the invariants tag.
const Enabled = false
