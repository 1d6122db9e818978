package device

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// tempDirs returns the directories to run file tests in: t.TempDir and, when
// there is one, a directory on tmpfs (which may or may not allow O_DIRECT).
func tempDirs(t *testing.T) map[string]string {
	dirs := map[string]string{"tempdir": t.TempDir()}
	var st unix.Statfs_t
	if unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC {
		if d, err := os.MkdirTemp("/dev/shm", "device-test-"); err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			dirs["tmpfs"] = d
		}
	}
	return dirs
}

func openTemp(t *testing.T, dir string, opts FileOptions) *File {
	t.Helper()
	opts.Create = true
	f, err := OpenFile(filepath.Join(dir, "dev"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestFileCreateSparse(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "cache")
	f, err := OpenFile(path, FileOptions{Create: true, Size: 64 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != 64<<20 || f.BlockDevice() || f.Path() != path {
		t.Fatalf("size %d block %v path %q", f.Size(), f.BlockDevice(), f.Path())
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks != 0 || st.Mode&0o777 != 0o600 {
		t.Fatalf("new file: %d blocks allocated, mode %o; want a sparse 0600 file", st.Blocks, st.Mode&0o777)
	}

	// Opening again with Create and another size keeps the file as it is.
	g, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Size() != 64<<20 {
		t.Fatalf("reopen: size %d", g.Size())
	}
}

func TestFileCreateGrowsEmptyFile(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "cache")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path, FileOptions{Create: true, Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Size() != 1<<20 {
		t.Fatalf("size %d, want %d", f.Size(), 1<<20)
	}
}

func TestFileOpenErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing")
	tests := []struct {
		name string
		path string
		opts FileOptions
		want error
	}{
		{"missing", missing, FileOptions{}, fs.ErrNotExist},
		{"missing direct", missing, FileOptions{Direct: true}, fs.ErrNotExist},
		{"directory", dir, FileOptions{ReadOnly: true}, nil},
		{"char device", "/dev/null", FileOptions{}, nil},
		{"negative size", filepath.Join(dir, "neg"), FileOptions{Create: true, Size: -1}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := OpenFile(tt.path, tt.opts)
			if err == nil {
				f.Close()
				t.Fatal("no error")
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("error %v, want %v", err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.path) {
				t.Fatalf("error %q does not name %s", err, tt.path)
			}
		})
	}
}

func TestFileIO(t *testing.T) {
	t.Parallel()
	for name, dir := range tempDirs(t) {
		for _, direct := range []bool{false, true} {
			t.Run(name+map[bool]string{false: "/buffered", true: "/direct"}[direct], func(t *testing.T) {
				f := openTemp(t, dir, FileOptions{Size: 1 << 20, Direct: direct})
				testDeviceIO(t, f)
				if err := f.Sync(); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// testDeviceIO checks aligned IO round trips and bounds on d.
func testDeviceIO(t *testing.T, d Device) {
	t.Helper()
	size := d.Size()
	w := AlignedBuffer(8192)
	for i := range w {
		w[i] = byte(i*7 + 1)
	}
	for _, off := range []int64{0, 4096, size - 8192} {
		if n, err := d.WriteAt(w, off); err != nil || n != len(w) {
			t.Fatalf("WriteAt(%d) = %d, %v", off, n, err)
		}
		r := AlignedBuffer(len(w))
		if n, err := d.ReadAt(r, off); err != nil || n != len(r) {
			t.Fatalf("ReadAt(%d) = %d, %v", off, n, err)
		}
		if !bytes.Equal(r, w) {
			t.Fatalf("ReadAt(%d) returned other bytes than written", off)
		}
	}
	buf := AlignedBuffer(SectorSize)
	for _, off := range []int64{-SectorSize, -1, size, size - 1, 1 << 62} {
		if _, err := d.ReadAt(buf, off); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("ReadAt(%d): %v, want ErrOutOfRange", off, err)
		}
		if _, err := d.WriteAt(buf, off); !errors.Is(err, ErrOutOfRange) {
			t.Fatalf("WriteAt(%d): %v, want ErrOutOfRange", off, err)
		}
	}
	if _, err := d.WriteAt(AlignedBuffer(2*SectorSize), size-SectorSize); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("WriteAt across the end: %v, want ErrOutOfRange", err)
	}
}

// directSupported reports whether the filesystem of dir does direct IO, by
// asking it directly.
func directSupported(t *testing.T, dir string) bool {
	path := filepath.Join(dir, "probe")
	if err := os.WriteFile(path, make([]byte, Alignment), 0o600); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(path)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	_, err = unix.Pread(fd, AlignedBuffer(Alignment), 0)
	return err == nil
}

func TestFileDirectOrFallback(t *testing.T) {
	t.Parallel()
	for name, dir := range tempDirs(t) {
		t.Run(name, func(t *testing.T) {
			f := openTemp(t, dir, FileOptions{Size: 1 << 20, Direct: true})
			if want := directSupported(t, dir); f.DirectIO() != want {
				t.Fatalf("DirectIO() = %v; the filesystem does direct IO: %v", f.DirectIO(), want)
			}
			buf := AlignedBuffer(2 * SectorSize)
			_, errOff := f.WriteAt(buf[:SectorSize], 100)
			_, errLen := f.WriteAt(buf[:100], 0)
			// Unaligned memory is fine: direct IO bounces it through an
			// aligned buffer.
			odd := make([]byte, SectorSize+1)[1:]
			for i := range odd {
				odd[i] = byte(i)
			}
			if _, err := f.WriteAt(odd, 0); err != nil {
				t.Fatalf("write from unaligned memory: %v", err)
			}
			back := make([]byte, SectorSize+1)[1:]
			if _, err := f.ReadAt(back, 0); err != nil || !bytes.Equal(back, odd) {
				t.Fatalf("read into unaligned memory: %v", err)
			}
			for _, err := range []error{errOff, errLen} {
				if f.DirectIO() && !errors.Is(err, ErrUnaligned) {
					t.Fatalf("unaligned direct write: %v, want ErrUnaligned", err)
				}
				if !f.DirectIO() && err != nil {
					t.Fatalf("unaligned buffered write: %v", err)
				}
			}
		})
	}
}

// TestFileDirectRefused plays a filesystem that refuses O_DIRECT at open.
// Not parallel: it replaces openOS.
func TestFileDirectRefused(t *testing.T) {
	defer func(orig func(string, int, fs.FileMode) (*os.File, error)) { openOS = orig }(openOS)
	openOS = func(name string, flag int, perm fs.FileMode) (*os.File, error) {
		if flag&unix.O_DIRECT != 0 {
			return nil, &fs.PathError{Op: "open", Path: name, Err: unix.EINVAL}
		}
		return os.OpenFile(name, flag, perm)
	}
	f := openTemp(t, t.TempDir(), FileOptions{Size: 1 << 20, Direct: true})
	if f.DirectIO() {
		t.Fatal("DirectIO() = true on a filesystem that refuses O_DIRECT")
	}
	if _, err := f.WriteAt([]byte("unaligned is fine"), 3); err != nil {
		t.Fatal(err)
	}
}

func TestFileReadOnly(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "dev")
	if err := os.WriteFile(path, bytes.Repeat([]byte{7}, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := OpenFile(path, FileOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 10)
	if _, err := f.ReadAt(buf, 100); err != nil || buf[0] != 7 {
		t.Fatalf("ReadAt: %v, %v", buf, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("Sync of a read-only file: %v", err)
	}
	if _, err := f.WriteAt(buf, 0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("WriteAt: %v, want ErrReadOnly", err)
	}
	if err := f.Discard(0, 4096); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Discard: %v, want ErrReadOnly", err)
	}
	if err := f.Truncate(0); !errors.Is(err, ErrReadOnly) {
		t.Fatalf("Truncate: %v, want ErrReadOnly", err)
	}
}

func TestFileDiscard(t *testing.T) {
	t.Parallel()
	for name, dir := range tempDirs(t) {
		t.Run(name, func(t *testing.T) {
			f := openTemp(t, dir, FileOptions{Size: 1 << 20})
			ones := bytes.Repeat([]byte{0xff}, 1<<20)
			if _, err := f.WriteAt(ones, 0); err != nil {
				t.Fatal(err)
			}
			before := allocated(t, f.Path())
			tests := []struct{ off, n int64 }{
				{0, 0}, {100, 1}, {4096, 256 << 10}, {(1 << 20) - 4097, 4097},
			}
			for _, tt := range tests {
				if err := f.Discard(tt.off, tt.n); err != nil {
					t.Fatalf("Discard(%d, %d): %v", tt.off, tt.n, err)
				}
			}
			got := make([]byte, 1<<20)
			if _, err := f.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			want := bytes.Clone(ones)
			for _, tt := range tests {
				clear(want[tt.off : tt.off+tt.n])
			}
			if !bytes.Equal(got, want) {
				t.Fatal("discarded ranges do not read as zeroes, or others changed")
			}
			if after := allocated(t, f.Path()); after >= before {
				t.Fatalf("Discard freed no space: %d bytes allocated before, %d after", before, after)
			}
			if err := f.Trim(8<<10, 64<<10); err != nil {
				t.Fatalf("Trim: %v", err)
			}
			if err := f.Discard(1<<20-10, 11); !errors.Is(err, ErrOutOfRange) {
				t.Fatalf("Discard past the end: %v, want ErrOutOfRange", err)
			}
		})
	}
}

func allocated(t *testing.T, path string) int64 {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileTruncate(t *testing.T) {
	t.Parallel()
	f := openTemp(t, t.TempDir(), FileOptions{Size: 1 << 20})
	if err := f.Truncate(2 << 20); err != nil {
		t.Fatal(err)
	}
	if f.Size() != 2<<20 {
		t.Fatalf("size %d after Truncate", f.Size())
	}
	if _, err := f.WriteAt([]byte{1}, 2<<20-1); err != nil {
		t.Fatalf("write in the grown part: %v", err)
	}
	if err := f.Truncate(-1); err == nil {
		t.Fatal("Truncate(-1) succeeded")
	}
}

func TestFileClosed(t *testing.T) {
	t.Parallel()
	f := openTemp(t, t.TempDir(), FileOptions{Size: 1 << 20})
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, SectorSize)
	checks := map[string]error{
		"Close":   f.Close(),
		"Sync":    f.Sync(),
		"Discard": f.Discard(0, SectorSize),
	}
	_, checks["ReadAt"] = f.ReadAt(buf, 0)
	_, checks["WriteAt"] = f.WriteAt(buf, 0)
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), f.Path()) {
			t.Errorf("%s after Close: %v, want ErrClosed naming the path", name, err)
		}
	}
}

func TestFileErrorWrapsErrno(t *testing.T) {
	t.Parallel()
	// A file shrunk behind the File's back: the read comes up short.
	f := openTemp(t, t.TempDir(), FileOptions{Size: 1 << 20})
	if err := os.Truncate(f.Path(), 4096); err != nil {
		t.Fatal(err)
	}
	_, err := f.ReadAt(make([]byte, 4096), 8192)
	if err == nil || !strings.Contains(err.Error(), f.Path()) || !strings.Contains(err.Error(), "[8192, +4096)") {
		t.Fatalf("short read: %v", err)
	}
}

func TestSizeOf(t *testing.T) {
	// Not parallel: it replaces blkGetSize64.
	defer func(orig func(uintptr) (int64, error)) { blkGetSize64 = orig }(blkGetSize64)
	blkGetSize64 = func(fd uintptr) (int64, error) {
		if fd == 99 {
			return 0, syscall.ENOTTY
		}
		return 1 << 40, nil
	}
	tests := []struct {
		name      string
		mode      fs.FileMode
		fd        uintptr
		wantSize  int64
		wantBlock bool
		wantErr   bool
	}{
		{"regular", 0o600, 3, 12345, false, false},
		{"block device", fs.ModeDevice | 0o600, 3, 1 << 40, true, false},
		{"block device ioctl fails", fs.ModeDevice | 0o600, 99, 0, true, true},
		{"char device", fs.ModeDevice | fs.ModeCharDevice, 3, 0, false, true},
		{"directory", fs.ModeDir, 3, 0, false, true},
	}
	for _, tt := range tests {
		size, block, err := sizeOf(tt.mode, 12345, tt.fd)
		if size != tt.wantSize || block != tt.wantBlock || (err != nil) != tt.wantErr {
			t.Errorf("%s: sizeOf = %d, %v, %v", tt.name, size, block, err)
		}
	}
}

// TestBlockDevice runs on the block device named by CSI_CACHE_TEST_BLOCKDEV
// (e.g. a loop device): read-only, unless CSI_CACHE_TEST_BLOCKDEV_WRITE=1, which
// lets it overwrite the device's contents.
func TestBlockDevice(t *testing.T) {
	path := os.Getenv("CSI_CACHE_TEST_BLOCKDEV")
	if path == "" {
		t.Skip("CSI_CACHE_TEST_BLOCKDEV not set")
	}
	writable := os.Getenv("CSI_CACHE_TEST_BLOCKDEV_WRITE") == "1"
	for _, direct := range []bool{false, true} {
		f, err := OpenFile(path, FileOptions{ReadOnly: !writable, Direct: direct})
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if !f.BlockDevice() || f.Size() <= 0 || f.DirectIO() != direct {
			t.Fatalf("BlockDevice() = %v, Size() = %d, DirectIO() = %v", f.BlockDevice(), f.Size(), f.DirectIO())
		}
		if _, err := f.ReadAt(AlignedBuffer(Alignment), 0); err != nil {
			t.Fatal(err)
		}
		if !writable {
			continue
		}
		testDeviceIO(t, f)
		ones := AlignedBuffer(1 << 20)
		for i := range ones {
			ones[i] = 0xff
		}
		if _, err := f.WriteAt(ones, 0); err != nil {
			t.Fatal(err)
		}
		if err := f.Discard(4096, 512<<10); err != nil {
			t.Fatal(err)
		}
		got := AlignedBuffer(1 << 20)
		if _, err := f.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		want := bytes.Clone(ones)
		clear(want[4096 : 4096+512<<10])
		if !bytes.Equal(got, want) {
			t.Fatal("discarded range does not read as zeroes, or others changed")
		}
		if err := f.Trim(0, 1<<20); err != nil && !errors.Is(err, errors.ErrUnsupported) {
			t.Fatalf("Trim: %v", err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
}

func BenchmarkFileSync(b *testing.B) {
	for name, dir := range map[string]string{"tempdir": b.TempDir()} {
		for _, direct := range []bool{false, true} {
			b.Run(name+map[bool]string{false: "/buffered", true: "/direct"}[direct], func(b *testing.B) {
				f, err := OpenFile(filepath.Join(dir, "bench"), FileOptions{Create: true, Size: 64 << 20, Direct: direct})
				if err != nil {
					b.Fatal(err)
				}
				defer f.Close()
				buf := AlignedBuffer(4096)
				b.SetBytes(int64(len(buf)))
				i := 0
				for ; b.Loop(); i++ {
					if _, err := f.WriteAt(buf, int64(i%16384)*4096); err != nil {
						b.Fatal(err)
					}
					if err := f.Sync(); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "syncs/s")
			})
		}
	}
}
