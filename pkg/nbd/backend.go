package nbd

import (
	"errors"
	"fmt"
	"syscall"
)

// Backend is the storage behind one export. The server calls it from many
// goroutines at once (up to Options.MaxInFlight per connection, from every
// connection to the export); the backend orders overlapping requests
// however it likes, as NBD clients do not rely on any order among requests
// in flight.
//
// Offsets and lengths are validated against Size and the capabilities before
// the call, so a backend sees only in-range, aligned requests of nonzero
// length.
type Backend interface {
	// ReadAt fills all of p from offset off, or returns an error. p is a
	// pooled buffer holding stale data: a short read must be an error.
	ReadAt(p []byte, off int64) error
	// WriteAt writes p at off. With fua the data is durable when it returns.
	WriteAt(p []byte, off int64, fua bool) error
	// Flush makes every write that has returned, on any connection, durable.
	Flush() error
	// Trim is a hint that the range is no longer needed; its contents are
	// undefined afterwards.
	Trim(off, length int64) error
	// WriteZeroes makes the range read back as zeroes; with fua it is durable
	// when it returns. Whether holes are punched is up to the backend
	// (NBD_CMD_FLAG_NO_HOLE is not passed on; see the package comment).
	WriteZeroes(off, length int64, fua bool) error
	// Size is the export size in bytes. It is read for every request.
	Size() int64
}

// Capabilities describes what a Backend supports. A Backend that does not
// implement CapabilityReporter gets DefaultCapabilities.
type Capabilities struct {
	// ReadOnly makes the export read-only whatever AddExport was told.
	ReadOnly bool
	// CanTrim advertises NBD_FLAG_SEND_TRIM.
	CanTrim bool
	// CanZero advertises NBD_FLAG_SEND_WRITE_ZEROES.
	CanZero bool
	// CanMultiConn advertises NBD_FLAG_CAN_MULTI_CONN: Flush and FUA cover
	// writes made through every connection.
	CanMultiConn bool
	// MinBlockSize is the alignment of offsets and lengths; a power of two
	// from 1 to 64 KiB. 0 means 512.
	MinBlockSize uint32
	// PreferredBlockSize is a power of two, at least max(MinBlockSize, 512).
	// 0 means 4096.
	PreferredBlockSize uint32
	// MaxPayload is the largest READ or WRITE, at least PreferredBlockSize
	// and at most 32 MiB. 0 means 32 MiB.
	MaxPayload uint32
	// Description is sent as NBD_INFO_DESCRIPTION when asked for.
	Description string
}

// CapabilityReporter is implemented by Backends whose capabilities differ
// from DefaultCapabilities.
type CapabilityReporter interface {
	Capabilities() Capabilities
}

// Block size defaults and limits.
const (
	DefaultMinBlockSize       = 512
	DefaultPreferredBlockSize = 4096
	DefaultMaxPayload         = 32 << 20
	maxMinBlockSize           = 64 << 10
	// maxPayloadLimit is the largest payload the server accepts or skips:
	// proto.md says payloads up to 32 MiB are never a denial of service.
	maxPayloadLimit = 32 << 20
)

// DefaultCapabilities is what a Backend without CapabilityReporter gets:
// everything supported, 512-byte blocks, 32 MiB payloads.
func DefaultCapabilities() Capabilities {
	return Capabilities{
		CanTrim:            true,
		CanZero:            true,
		CanMultiConn:       true,
		MinBlockSize:       DefaultMinBlockSize,
		PreferredBlockSize: DefaultPreferredBlockSize,
		MaxPayload:         DefaultMaxPayload,
	}
}

// ErrInvalidCapabilities is returned by AddExport for block sizes that
// proto.md does not allow or an export size that is not a multiple of the
// minimum block size.
var ErrInvalidCapabilities = errors.New("nbd: invalid export capabilities")

func capabilitiesOf(b Backend) Capabilities {
	c := DefaultCapabilities()
	if r, ok := b.(CapabilityReporter); ok {
		c = r.Capabilities()
	}
	if c.MinBlockSize == 0 {
		c.MinBlockSize = DefaultMinBlockSize
	}
	if c.PreferredBlockSize == 0 {
		c.PreferredBlockSize = max(DefaultPreferredBlockSize, c.MinBlockSize)
	}
	if c.MaxPayload == 0 {
		c.MaxPayload = DefaultMaxPayload
	}
	return c
}

func (c Capabilities) validate(size int64) error {
	pow2 := func(v uint32) bool { return v != 0 && v&(v-1) == 0 }
	switch {
	case !pow2(c.MinBlockSize) || c.MinBlockSize > maxMinBlockSize:
		return fmt.Errorf("%w: minimum block size %d", ErrInvalidCapabilities, c.MinBlockSize)
	case !pow2(c.PreferredBlockSize) || c.PreferredBlockSize < max(c.MinBlockSize, 512):
		return fmt.Errorf("%w: preferred block size %d", ErrInvalidCapabilities, c.PreferredBlockSize)
	case c.MaxPayload < c.PreferredBlockSize || c.MaxPayload > maxPayloadLimit || c.MaxPayload%c.MinBlockSize != 0:
		return fmt.Errorf("%w: maximum payload %d", ErrInvalidCapabilities, c.MaxPayload)
	case size < 0 || size%int64(c.MinBlockSize) != 0:
		return fmt.Errorf("%w: size %d is not a multiple of the minimum block size %d",
			ErrInvalidCapabilities, size, c.MinBlockSize)
	}
	return nil
}

// ErrnoOf maps a Backend error to the NBD error sent to the client. It is the
// only place where this mapping is made:
//
//	nil                              → 0
//	an Errno (possibly wrapped)      → itself
//	EPERM, EACCES, EROFS             → EPERM
//	EINVAL                           → EINVAL
//	ENOSPC, EDQUOT, EFBIG            → ENOSPC (as proto.md asks)
//	ENOMEM                           → ENOMEM
//	EOVERFLOW                        → EOVERFLOW
//	ESHUTDOWN                        → ESHUTDOWN
//	EOPNOTSUPP/ENOTSUP               → EINVAL (NBD_ENOTSUP is reserved for
//	                                   fast-zero, which is not advertised)
//	anything else                    → EIO
func ErrnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var e Errno
	if errors.As(err, &e) {
		if e == 0 {
			return EIO // an Errno of 0 as an error is a backend bug
		}
		return e
	}
	var se syscall.Errno
	if !errors.As(err, &se) {
		return EIO
	}
	switch se {
	case syscall.EPERM, syscall.EACCES, syscall.EROFS:
		return EPERM
	case syscall.EINVAL, syscall.EOPNOTSUPP:
		return EINVAL
	case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
		return ENOSPC
	case syscall.ENOMEM:
		return ENOMEM
	case syscall.EOVERFLOW:
		return EOVERFLOW
	case syscall.ESHUTDOWN:
		return ESHUTDOWN
	}
	return EIO
}
