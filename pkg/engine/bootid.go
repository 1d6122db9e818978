package engine

import (
	"encoding/hex"
	"fmt"
	"os"
	"strings"
)

// bootIDPath is where Linux publishes the random id of the running boot.
const bootIDPath = "/proc/sys/kernel/random/boot_id"

// CurrentBootID returns the id of the running kernel's boot, which changes on
// every reboot: the journal trusts entries written without a flush only on the
// boot that wrote them (see Config.BootID).
func CurrentBootID() ([16]byte, error) {
	b, err := os.ReadFile(bootIDPath)
	if err != nil {
		return [16]byte{}, fmt.Errorf("engine: boot id: %w", err)
	}
	return parseBootID(string(b))
}

// parseBootID parses a UUID in its text form (36 characters with dashes).
func parseBootID(s string) ([16]byte, error) {
	var id [16]byte
	t := strings.ReplaceAll(strings.TrimSpace(s), "-", "")
	if len(t) != 32 {
		return id, fmt.Errorf("engine: boot id %q: not a UUID", s)
	}
	if _, err := hex.Decode(id[:], []byte(t)); err != nil {
		return id, fmt.Errorf("engine: boot id %q: %w", s, err)
	}
	if id == ([16]byte{}) {
		return id, fmt.Errorf("engine: boot id %q: zero", s)
	}
	return id, nil
}
