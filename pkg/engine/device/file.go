package device

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrUnaligned is returned by a File opened with direct IO for an offset or
// length that is not a multiple of SectorSize.
var ErrUnaligned = errors.New("device: unaligned direct io")

// FileOptions configure OpenFile.
type FileOptions struct {
	// Create creates a regular file at the path when nothing is there, as a sparse
	// file of Size bytes; the new file and its directory entry are synced. An
	// existing empty regular file is grown to Size too: it is what a crash between
	// creating and sizing the file leaves behind. Any other existing file is opened
	// as it is.
	Create bool
	Size   int64
	// Direct asks for O_DIRECT, bypassing the page cache. Filesystems that refuse it
	// (EINVAL at open or on a first aligned read, e.g. tmpfs before Linux 6.6) get
	// buffered IO instead; DirectIO reports which one the File uses. With direct
	// IO, offsets and lengths must be multiples of SectorSize (4 KiB-sector
	// devices need 4 KiB); a buffer whose memory is not aligned is copied through
	// an aligned one (AlignedBuffer and BufferPool give aligned buffers, which
	// avoids the copy).
	Direct bool
	// ReadOnly opens the device read-only: writes, discards and truncation fail
	// with ErrReadOnly.
	ReadOnly bool
}

// File is a Device on a regular file or a block device.
//
// ReadAt and WriteAt are pread and pwrite of the whole buffer; Sync is fdatasync.
// Discard deallocates with fallocate(PUNCH_HOLE|KEEP_SIZE), which on a block
// device means discard-and-zero (REQ_OP_WRITE_ZEROES with unmap), and falls back to
// fallocate(ZERO_RANGE) on block devices and then to writing zeroes. Plain
// BLKDISCARD is available as Trim: it does not promise zeroes, which the Discarder
// contract needs.
//
// Every error names the path and the range and wraps the cause (ErrOutOfRange,
// ErrClosed, ErrReadOnly, ErrUnaligned or the errno). A File is safe for
// concurrent use, Close included: IO racing with Close fails with ErrClosed.
type File struct {
	path     string
	f        *os.File
	rc       syscall.RawConn // for fdatasync, fallocate and ioctls on f's descriptor
	block    bool
	direct   bool
	readOnly bool
	size     atomic.Int64 // changes only in Truncate
	closed   atomic.Bool
}

var (
	_ Device    = (*File)(nil)
	_ Discarder = (*File)(nil)
)

// OpenFile opens the regular file or block device at path.
func OpenFile(path string, opts FileOptions) (*File, error) {
	if opts.Create {
		if err := createSparse(path, opts.Size); err != nil {
			return nil, err
		}
	}
	flag := os.O_RDWR
	if opts.ReadOnly {
		flag = os.O_RDONLY
	}
	if opts.Direct {
		d, err := openFile(path, flag|unix.O_DIRECT, opts.ReadOnly)
		if err == nil {
			d.direct = true
			ok, err := d.probeDirect()
			if ok {
				return d, nil
			}
			d.f.Close()
			if err != nil {
				return nil, err
			}
		} else if !errors.Is(err, unix.EINVAL) {
			return nil, err
		}
	}
	return openFile(path, flag, opts.ReadOnly)
}

// createSparse creates a sparse regular file of size bytes at path unless
// something exists there; an existing empty regular file is grown to size.
func createSparse(path string, size int64) error {
	if size < 0 {
		return fmt.Errorf("device: create %s: negative size %d", path, size)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		f, err = openEmpty(path, size)
		if f == nil && err == nil {
			return nil // there is something to open
		}
	}
	if err != nil {
		return fmt.Errorf("device: create %s: %w", path, unwrapPathError(err))
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(filepath.Dir(path))
	}
	if err != nil {
		return fmt.Errorf("device: create %s: %w", path, unwrapPathError(err))
	}
	return nil
}

// openEmpty opens the file at path for sizing if it is an empty regular file
// and size is not 0; otherwise it returns nil, nil.
func openEmpty(path string, size int64) (*os.File, error) {
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() || st.Size() != 0 || size == 0 {
		return nil, err
	}
	return os.OpenFile(path, os.O_RDWR, 0)
}

// syncDir makes the directory entries of dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// openFile opens path with flag and finds out what it is and its size.
func openFile(path string, flag int, readOnly bool) (*File, error) {
	f, err := openOS(path, flag, 0)
	if err != nil {
		return nil, fmt.Errorf("device: open %s: %w", path, unwrapPathError(err))
	}
	d := &File{path: path, f: f, readOnly: readOnly}
	if err := d.init(); err != nil {
		f.Close()
		return nil, fmt.Errorf("device: open %s: %w", path, err)
	}
	return d, nil
}

func (d *File) init() error {
	st, err := d.f.Stat()
	if err != nil {
		return unwrapPathError(err)
	}
	if d.rc, err = d.f.SyscallConn(); err != nil {
		return err
	}
	var size int64
	err = d.control(func(fd uintptr) error {
		var err error
		size, d.block, err = sizeOf(st.Mode(), st.Size(), fd)
		return err
	})
	if err != nil {
		return err
	}
	d.size.Store(size)
	return nil
}

// sizeOf returns the size of a regular file (statSize) or of a block device (by
// the BLKGETSIZE64 ioctl on fd) and whether it is a block device.
func sizeOf(mode fs.FileMode, statSize int64, fd uintptr) (size int64, block bool, err error) {
	switch {
	case mode.IsRegular():
		return statSize, false, nil
	case mode&fs.ModeDevice != 0 && mode&fs.ModeCharDevice == 0:
		size, err := blkGetSize64(fd)
		if err != nil {
			return 0, true, fmt.Errorf("BLKGETSIZE64: %w", err)
		}
		return size, true, nil
	default:
		return 0, false, fmt.Errorf("not a regular file or block device (mode %v)", mode)
	}
}

// openOS is os.OpenFile; tests replace it to play a filesystem without O_DIRECT.
var openOS = os.OpenFile

// blkGetSize64 returns the size in bytes of the block device open at fd. It is a
// variable so that tests can exercise the block-device path without one.
var blkGetSize64 = func(fd uintptr) (int64, error) {
	var size uint64
	_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&size)))
	if e != 0 {
		return 0, e
	}
	if size > 1<<63-1 {
		return 0, unix.EOVERFLOW
	}
	return int64(size), nil
}

// probeDirect reads the first Alignment bytes with direct IO and reports whether
// the filesystem allows it: some accept O_DIRECT at open and refuse the IO.
func (d *File) probeDirect() (bool, error) {
	if d.size.Load() < Alignment {
		return true, nil
	}
	_, err := d.f.ReadAt(AlignedBuffer(Alignment), 0)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, unix.EINVAL):
		return false, nil
	default:
		return false, d.errorf(OpRead, 0, Alignment, err)
	}
}

// Path returns the path the File was opened with.
func (d *File) Path() string { return d.path }

// DirectIO reports whether the File uses O_DIRECT.
func (d *File) DirectIO() bool { return d.direct }

// BlockDevice reports whether the File is a block device.
func (d *File) BlockDevice() bool { return d.block }

// Size returns the size in bytes: of the file, or of the block device, at open or
// at the last Truncate.
func (d *File) Size() int64 { return d.size.Load() }

// ReadAt reads len(p) bytes at off; a short read is an error.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if err := d.checkIO(OpRead, p, off); err != nil {
		return 0, err
	}
	if d.direct && !sectorAligned(p) {
		b := AlignedBuffer(len(p))
		n, err := d.f.ReadAt(b, off)
		copy(p, b[:n])
		if err != nil {
			return n, d.errorf(OpRead, off, int64(len(p)), err)
		}
		return n, nil
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil {
		return n, d.errorf(OpRead, off, int64(len(p)), err)
	}
	return n, nil
}

// sectorAligned reports whether p's memory is aligned for direct IO.
func sectorAligned(p []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(p)))%SectorSize == 0
}

// WriteAt writes p at off.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := d.checkIO(OpWrite, p, off); err != nil {
		return 0, err
	}
	if d.direct && !sectorAligned(p) {
		b := AlignedBuffer(len(p))
		copy(b, p)
		p = b
	}
	n, err := d.f.WriteAt(p, off)
	if err != nil {
		return n, d.errorf(OpWrite, off, int64(len(p)), err)
	}
	return n, nil
}

func (d *File) checkIO(op Op, p []byte, off int64) error {
	n := int64(len(p))
	if d.closed.Load() {
		return d.errorf(op, off, n, ErrClosed)
	}
	if op != OpRead && d.readOnly {
		return d.errorf(op, off, n, ErrReadOnly)
	}
	if err := checkRange(off, n, d.size.Load()); err != nil {
		return d.errorf(op, off, n, err)
	}
	if d.direct && (off%SectorSize != 0 || n%SectorSize != 0) {
		return d.errorf(op, off, n, ErrUnaligned)
	}
	return nil
}

// Sync makes the written data durable with fdatasync (metadata other than the
// size is not synced; a File never changes its size but by Truncate, which syncs).
func (d *File) Sync() error {
	err := d.control(func(fd uintptr) error {
		return ignoringEINTR(func() error { return unix.Fdatasync(int(fd)) })
	})
	if err != nil {
		return d.errorf(OpSync, 0, 0, err)
	}
	return nil
}

// Discard deallocates [off, off+length) so that it reads as zeroes.
func (d *File) Discard(off, length int64) error {
	if err := d.checkRange(OpDiscard, off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	err := d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err == nil || !fallocateUnsupported(err) {
		return d.discardError(off, length, err)
	}
	if d.block {
		// The device cannot zero by unmapping; let the kernel write the zeroes.
		err = d.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil || !fallocateUnsupported(err) {
			return d.discardError(off, length, err)
		}
	}
	return writeZeroes(d, off, length)
}

// Trim tells the device that [off, off+length) is unused: BLKDISCARD on a block
// device, a punched hole in a file. Unlike Discard it does not promise what the
// range reads as afterwards, and it fails (wrapping errors.ErrUnsupported) rather
// than writing when the device cannot.
func (d *File) Trim(off, length int64) error {
	if err := d.checkRange(OpDiscard, off, length); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if !d.block {
		return d.discardError(off, length, d.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length))
	}
	r := [2]uint64{uint64(off), uint64(length)}
	err := d.control(func(fd uintptr) error {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, unix.BLKDISCARD, uintptr(unsafe.Pointer(&r)))
		if e != 0 {
			return e
		}
		return nil
	})
	return d.discardError(off, length, err)
}

func (d *File) checkRange(op Op, off, length int64) error {
	if d.closed.Load() {
		return d.errorf(op, off, length, ErrClosed)
	}
	if d.readOnly {
		return d.errorf(op, off, length, ErrReadOnly)
	}
	if err := checkRange(off, length, d.size.Load()); err != nil {
		return d.errorf(op, off, length, err)
	}
	if d.direct && (off%SectorSize != 0 || length%SectorSize != 0) {
		return d.errorf(op, off, length, ErrUnaligned)
	}
	return nil
}

func (d *File) fallocate(mode uint32, off, length int64) error {
	return d.control(func(fd uintptr) error {
		return ignoringEINTR(func() error { return unix.Fallocate(int(fd), mode, off, length) })
	})
}

// fallocateUnsupported reports whether a fallocate error means "not on this
// file or device" rather than a failure. Block devices say EINVAL for ranges
// not aligned to their logical block size.
func fallocateUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL)
}

func (d *File) discardError(off, length int64, err error) error {
	if err == nil {
		return nil
	}
	return d.errorf(OpDiscard, off, length, err)
}

// Truncate changes the size of a regular file (growing it sparsely) and syncs
// the new size. IO beyond a shrunk size must have finished before the call.
func (d *File) Truncate(size int64) error {
	switch {
	case d.readOnly:
		return d.errorf(OpWrite, size, 0, ErrReadOnly)
	case d.block:
		return fmt.Errorf("device: truncate %s: %w: block device", d.path, errors.ErrUnsupported)
	case size < 0:
		return fmt.Errorf("device: truncate %s: negative size %d", d.path, size)
	}
	err := d.f.Truncate(size)
	if err == nil {
		err = d.f.Sync()
	}
	if err != nil {
		return fmt.Errorf("device: truncate %s to %d: %w", d.path, size, d.closedOr(unwrapPathError(err)))
	}
	d.size.Store(size)
	return nil
}

// Close closes the file. Writes not yet synced stay in the page cache (or the
// device's cache) and are not made durable by Close.
func (d *File) Close() error {
	if d.closed.Swap(true) {
		return fmt.Errorf("device: close %s: %w", d.path, ErrClosed)
	}
	if err := d.f.Close(); err != nil {
		return fmt.Errorf("device: close %s: %w", d.path, unwrapPathError(err))
	}
	return nil
}

// control runs fn on the file descriptor, which stays open until fn returns.
func (d *File) control(fn func(fd uintptr) error) error {
	var err error
	if cerr := d.rc.Control(func(fd uintptr) { err = fn(fd) }); cerr != nil {
		return cerr
	}
	return err
}

// errorf wraps err, the failure of op on [off, off+n), with the path.
func (d *File) errorf(op Op, off, n int64, err error) error {
	return fmt.Errorf("device: %s %s [%d, +%d): %w", op, d.path, off, n, d.closedOr(unwrapPathError(err)))
}

// closedOr returns ErrClosed for an error of IO that raced with Close (the os
// package and the poller have their own closed-file errors), err otherwise.
func (d *File) closedOr(err error) error {
	if errors.Is(err, os.ErrClosed) || d.closed.Load() {
		return ErrClosed
	}
	return err
}

// unwrapPathError drops the *fs.PathError around err, whose path and operation
// the device's own errors give.
func unwrapPathError(err error) error {
	if pe, ok := err.(*fs.PathError); ok {
		return pe.Err
	}
	return err
}

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); err != unix.EINTR {
			return err
		}
	}
}
