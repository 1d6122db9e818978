// Package device is the block-device abstraction under the cache engine: the cache
// device (an NVMe namespace, a file on one, or the sparse file of the embedded
// default) and the backing stores are all a Device.
//
// Durability model: a write is durable only after a Sync that started after the
// write completed. Until then it may be lost, or torn at sector (512 B) granularity,
// by a crash. The crash-simulating Device in this package implements exactly this
// model so that tests can check every claim the engine makes about durability.
package device

import "errors"

// SectorSize is the unit of atomicity assumed of every device: a sector is either
// entirely old or entirely new after a crash.
const SectorSize = 512

// Device is a random-access block device.
//
// ReadAt and WriteAt follow io.ReaderAt / io.WriterAt and are safe for concurrent
// use on disjoint or overlapping ranges (overlapping writes race as on real
// hardware). Offsets and lengths need not be aligned unless the implementation
// says so (direct-IO devices require SectorSize alignment).
type Device interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Sync makes every write that completed before the call durable.
	Sync() error
	// Size is the usable size in bytes.
	Size() int64
	Close() error
}

// Discarder is implemented by devices that can deallocate a range (TRIM, or
// punching a hole in a file). After Discard the range reads as zeroes.
type Discarder interface {
	Discard(off, length int64) error
}

// Errors returned by devices.
var (
	// ErrOutOfRange is returned for IO beyond Size.
	ErrOutOfRange = errors.New("device: io out of range")
	// ErrClosed is returned for IO on a closed device.
	ErrClosed = errors.New("device: closed")
	// ErrCrashed is returned by a crash-simulating device after Crash, until reopened.
	ErrCrashed = errors.New("device: crashed")
)
