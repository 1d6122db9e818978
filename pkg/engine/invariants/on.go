//go:build invariants

package invariants

// Enabled is true when the binary was built with the invariants tag: expensive
// consistency checks run after every structural change and test hooks are live.
const Enabled = true
