package nbd

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// FileBackend is a Backend on a regular file or a block device, opened
// without O_DIRECT (so any alignment works; it reports MinBlockSize 512 to
// match the kernel). Flush and FUA use fdatasync. Trim punches holes where the
// filesystem can and is otherwise a no-op; WriteZeroes uses
// FALLOC_FL_ZERO_RANGE, then hole punching, then writes zeroes.
type FileBackend struct {
	f    *os.File
	size int64
	ro   bool
}

// OpenFileBackend opens path. The size is taken once, at open.
func OpenFileBackend(path string, readOnly bool) (*FileBackend, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("nbd: open file backend: %w", err)
	}
	size, err := f.Seek(0, io.SeekEnd) // works for block devices too
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("nbd: size of %s: %w", path, err)
	}
	return &FileBackend{f: f, size: size, ro: readOnly}, nil
}

// Close closes the file.
func (b *FileBackend) Close() error { return b.f.Close() }

// Size implements Backend.
func (b *FileBackend) Size() int64 { return b.size }

// Capabilities implements CapabilityReporter.
func (b *FileBackend) Capabilities() Capabilities {
	c := DefaultCapabilities()
	c.ReadOnly = b.ro
	c.Description = b.f.Name()
	return c
}

// ReadAt implements Backend.
func (b *FileBackend) ReadAt(p []byte, off int64) error {
	n, err := b.f.ReadAt(p, off)
	if n == len(p) {
		return nil
	}
	if err == nil || errors.Is(err, io.EOF) {
		err = fmt.Errorf("nbd: short read at %d: %d of %d bytes", off, n, len(p))
	}
	return err
}

// WriteAt implements Backend.
func (b *FileBackend) WriteAt(p []byte, off int64, fua bool) error {
	if _, err := b.f.WriteAt(p, off); err != nil {
		return err
	}
	if fua {
		return b.Flush()
	}
	return nil
}

// Flush implements Backend.
func (b *FileBackend) Flush() error { return fdatasync(b.f) }

// Trim implements Backend.
func (b *FileBackend) Trim(off, length int64) error {
	if err := punchHole(b.f, off, length); err != nil && !errors.Is(err, errNotSupported) {
		return err
	}
	return nil // a trim is a hint
}

// WriteZeroes implements Backend.
func (b *FileBackend) WriteZeroes(off, length int64, fua bool) error {
	err := zeroRange(b.f, off, length)
	if errors.Is(err, errNotSupported) {
		err = punchHole(b.f, off, length)
	}
	if errors.Is(err, errNotSupported) {
		err = b.writeZeroes(off, length)
	}
	if err != nil {
		return err
	}
	if fua {
		return b.Flush()
	}
	return nil
}

func (b *FileBackend) writeZeroes(off, length int64) error {
	zero := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zero)))
		if _, err := b.f.WriteAt(zero[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// errNotSupported is returned by the platform helpers when the filesystem
// or OS cannot do the operation.
var errNotSupported = errors.New("nbd: not supported")
