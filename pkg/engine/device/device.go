// Package device is the block-device abstraction under the cache engine: the cache
// device (an NVMe namespace, a file on one, or the sparse file of the embedded
// default) and the backing stores are all a Device.
//
// Durability model: a write is durable only after a Sync that started after the
// write completed. Until then it may be lost, or torn at sector (512 B) granularity,
// by a crash. The crash-simulating Device in this package implements exactly this
// model so that tests can check every claim the engine makes about durability.
//
// Implementations:
//
//	File      a regular file or a block device (pread/pwrite, fdatasync, O_DIRECT)
//	Mem       sparse in-memory device for tests; also the durable image under Crash
//
// Wrappers, each a Device and a Discarder over any Device:
//
//	Counting  counts writes and syncs; tells whether anything was written since a Sync
//	Crash     volatile write overlay over a durable image; simulates power loss
//	Fault     injects errors chosen by an Injector (in the spirit of pebble's errorfs)
//	Delay     adds a fixed latency per IO (slow backing storage in benchmarks)
package device

import (
	"errors"
	"fmt"
)

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
	// ErrReadOnly is returned for a write or discard on a device opened read-only.
	ErrReadOnly = errors.New("device: read-only")
)

// Op names a kind of device operation, for fault injection and crash points.
type Op uint8

// Operations. OpAny matches every operation where an Op is used as a filter.
const (
	OpRead Op = iota
	OpWrite
	OpSync
	OpDiscard
	OpAny Op = 0xff
)

var opNames = [...]string{OpRead: "read", OpWrite: "write", OpSync: "sync", OpDiscard: "discard"}

func (o Op) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	if o == OpAny {
		return "any"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// matches reports whether the filter o selects op.
func (o Op) matches(op Op) bool { return o == OpAny || o == op }

// Discard deallocates [off, off+length) of d so that it reads as zeroes: with d's
// own Discard when d is a Discarder, otherwise by writing zeroes. The wrappers in
// this package use it, so each of them is a Discarder whatever it wraps.
func Discard(d Device, off, length int64) error {
	if dd, ok := d.(Discarder); ok {
		return dd.Discard(off, length)
	}
	if err := checkRange(off, length, d.Size()); err != nil {
		return err
	}
	return writeZeroes(d, off, length)
}

// zeroChunk bounds the buffer writeZeroes allocates.
const zeroChunk = 1 << 20

// writeZeroes writes zeroes over [off, off+length) with d.WriteAt, in chunks of at
// most zeroChunk bytes from an aligned buffer (so that it also works on a File
// opened with O_DIRECT when off and length are aligned).
func writeZeroes(d Device, off, length int64) error {
	if length <= 0 {
		return nil
	}
	buf := AlignedBuffer(int(min(length, zeroChunk)))
	for length > 0 {
		n := min(length, int64(len(buf)))
		if _, err := d.WriteAt(buf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// checkRange returns an error wrapping ErrOutOfRange unless [off, off+n) lies
// within [0, size). It does not overflow for any off and n.
func checkRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return fmt.Errorf("%w: [%d, +%d) on a device of %d bytes", ErrOutOfRange, off, n, size)
	}
	return nil
}
