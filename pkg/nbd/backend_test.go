package nbd

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestErrnoOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Errno
	}{
		{nil, 0},
		{syscall.EPERM, EPERM},
		{syscall.EACCES, EPERM},
		{fmt.Errorf("wrapped: %w", syscall.EROFS), EPERM},
		{syscall.EINVAL, EINVAL},
		{syscall.EOPNOTSUPP, EINVAL},
		{syscall.ENOSPC, ENOSPC},
		{syscall.EDQUOT, ENOSPC},
		{syscall.EFBIG, ENOSPC},
		{syscall.ENOMEM, ENOMEM},
		{syscall.EOVERFLOW, EOVERFLOW},
		{syscall.ESHUTDOWN, ESHUTDOWN},
		{&os.PathError{Op: "write", Path: "x", Err: syscall.ENOSPC}, ENOSPC},
		{syscall.EIO, EIO},
		{syscall.EBADF, EIO},
		{errors.New("engine: corrupt bucket"), EIO},
		{fmt.Errorf("x: %w", ENOTSUP), ENOTSUP},
		{Errno(0), EIO},
		{errors.Join(errors.New("a"), syscall.ENOSPC), ENOSPC},
	} {
		if got := ErrnoOf(tc.err); got != tc.want {
			t.Errorf("ErrnoOf(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestCapabilitiesValidate(t *testing.T) {
	def := DefaultCapabilities()
	for _, tc := range []struct {
		name string
		mod  func(*Capabilities)
		size int64
		ok   bool
	}{
		{"defaults", func(*Capabilities) {}, 1 << 20, true},
		{"empty export", func(*Capabilities) {}, 0, true},
		{"unaligned size", func(*Capabilities) {}, 1000, false},
		{"min 1 unaligned size", func(c *Capabilities) { c.MinBlockSize = 1 }, 1000, true},
		{"min 4096", func(c *Capabilities) { c.MinBlockSize = 4096 }, 1 << 20, true},
		{"min not power of two", func(c *Capabilities) { c.MinBlockSize = 1000 }, 1 << 20, false},
		{"min too big", func(c *Capabilities) { c.MinBlockSize = 1 << 17 }, 1 << 20, false},
		{"preferred below 512", func(c *Capabilities) { c.MinBlockSize = 1; c.PreferredBlockSize = 256 }, 1 << 20, false},
		{"preferred below min", func(c *Capabilities) { c.MinBlockSize = 8192 }, 1 << 20, false},
		{"payload below preferred", func(c *Capabilities) { c.MaxPayload = 1024 }, 1 << 20, false},
		{"payload above 32 MiB", func(c *Capabilities) { c.MaxPayload = 64 << 20 }, 1 << 20, false},
		{"payload not a block multiple", func(c *Capabilities) { c.MaxPayload = 1<<20 + 1 }, 1 << 20, false},
	} {
		c := def
		tc.mod(&c)
		if err := c.validate(tc.size); (err == nil) != tc.ok {
			t.Errorf("%s: validate = %v", tc.name, err)
		}
	}
}

func TestCheckRequestDefaults(t *testing.T) {
	// capabilitiesOf fills zero fields.
	mb := NewMemoryBackend(4096)
	mb.SetCapabilities(Capabilities{CanTrim: true})
	c := capabilitiesOf(mb)
	if c.MinBlockSize != 512 || c.PreferredBlockSize != 4096 || c.MaxPayload != 32<<20 {
		t.Fatalf("filled capabilities %+v", c)
	}
}

func TestFileBackend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, bytes.Repeat([]byte{0xaa}, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	fb, err := OpenFileBackend(path, false)
	if err != nil {
		t.Fatal(err)
	}
	defer fb.Close()
	if fb.Size() != 1<<20 {
		t.Fatal(fb.Size())
	}
	if err := fb.WriteAt([]byte("hello"), 4096, true); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 5)
	if err := fb.ReadAt(p, 4096); err != nil || string(p) != "hello" {
		t.Fatalf("%q %v", p, err)
	}
	if err := fb.WriteZeroes(8192, 8192, true); err != nil {
		t.Fatal(err)
	}
	if err := fb.Trim(65536, 65536); err != nil {
		t.Fatal(err)
	}
	if err := fb.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := fb.ReadAt(make([]byte, 10), 1<<20-5); err == nil {
		t.Fatal("short read past the end succeeded")
	}
	data, _ := os.ReadFile(path)
	if !bytes.Equal(data[8192:16384], make([]byte, 8192)) || data[8191] != 0xaa || data[16384] != 0xaa {
		t.Fatal("WriteZeroes zeroed the wrong range")
	}
	if !bytes.Equal(data[65536:131072], make([]byte, 65536)) && !bytes.Equal(data[65536:131072], bytes.Repeat([]byte{0xaa}, 65536)) {
		t.Fatal("Trim left a partial state")
	}
	if err := fb.writeZeroes(0, 3<<20/2); err != nil { // the fallback path
		t.Fatal(err)
	}

	ro, err := OpenFileBackend(path, true)
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if !ro.Capabilities().ReadOnly {
		t.Fatal("read-only file backend not reported read-only")
	}
	if err := ro.WriteAt([]byte("x"), 0, false); ErrnoOf(err) == 0 {
		t.Fatal("write to a read-only file succeeded")
	}
	if _, err := OpenFileBackend(filepath.Join(t.TempDir(), "missing"), false); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
}

// TestFileBackendServed serves a file through the server.
func TestFileBackendServed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	fb, err := OpenFileBackend(path, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fb.Close() }) // after the server's cleanup
	s := NewServer(Options{})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	if err := s.AddExport("f", fb, false); err != nil {
		t.Fatal(err)
	}
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "f")
	c.write(t, 512, bytes.Repeat([]byte("z"), 512), CmdFlagFUA)
	c.expect(t, 0, CmdWriteZeroes, 0, 512, 512, nil)
	c.expect(t, 0, CmdFlush, 0, 0, 0, nil)
	if got := c.read(t, 0, 1024); !bytes.Equal(got, make([]byte, 1024)) {
		t.Fatal("file content wrong")
	}
}

func TestBufPool(t *testing.T) {
	for _, n := range []int{1, 512, 4096, 4097, 1 << 20, 32 << 20} {
		b := getBuf(n)
		if len(*b) != n || cap(*b) < n || cap(*b)&(cap(*b)-1) != 0 {
			t.Fatalf("getBuf(%d): len %d cap %d", n, len(*b), cap(*b))
		}
		putBuf(b)
	}
	putBuf(nil)
	odd := make([]byte, 5000)
	putBuf(&odd) // not a pool size: dropped
}

func TestCommandString(t *testing.T) {
	if CmdWriteZeroes.String() != "write_zeroes" || CmdUnknown.String() != "unknown" || Command(99).String() != "cmd_99" {
		t.Fatal("command names")
	}
	if EIO.Error() != "nbd: EIO" || Errno(7).Error() != "nbd: errno 7" {
		t.Fatal("errno strings")
	}
}
