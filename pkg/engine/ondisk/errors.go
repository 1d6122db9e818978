package ondisk

import (
	"errors"
	"fmt"
	"hash/crc32"
)

// castagnoli is the crc32c table; every checksum on the cache device is crc32c.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum returns the crc32c of b.
func Checksum(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// ErrCorrupt is the class of every corruption error: errors.Is(err, ErrCorrupt)
// holds for any *CorruptionError.
var ErrCorrupt = errors.New("corrupt metadata")

// CorruptionError describes on-disk metadata that failed to decode.
type CorruptionError struct {
	What   string // the structure: "superblock", "jset", "bset", ...
	Offset int64  // byte offset on the device, -1 if unknown
	Reason string // what was wrong: "bad magic", "checksum mismatch", ...
}

func (e *CorruptionError) Error() string {
	if e.Offset >= 0 {
		return fmt.Sprintf("engine: corrupt %s at offset %d: %s", e.What, e.Offset, e.Reason)
	}
	return fmt.Sprintf("engine: corrupt %s: %s", e.What, e.Reason)
}

// Is makes errors.Is(err, ErrCorrupt) true for corruption errors.
func (e *CorruptionError) Is(target error) bool { return target == ErrCorrupt }

// Corruptf returns a *CorruptionError.
func Corruptf(what string, off int64, format string, args ...any) error {
	return &CorruptionError{What: what, Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// IsCorruption reports whether err is (or wraps) a corruption error.
func IsCorruption(err error) bool { return errors.Is(err, ErrCorrupt) }
