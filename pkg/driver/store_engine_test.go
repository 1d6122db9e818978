package driver

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/csi-cache/csi-cache/pkg/engine"
)

func TestOpenCacheDevice(t *testing.T) {
	dir := t.TempDir()
	cfg := engine.Config{BackingDir: filepath.Join(dir, "backing")}

	if _, err := OpenCacheDevice(CacheDeviceOptions{Path: "/dev/csi-cache-no-such-device", Size: 64 << 20, Config: cfg}); err == nil ||
		!strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("missing device under /dev: %v", err)
	}
	if _, err := os.Stat("/dev/csi-cache-no-such-device"); !os.IsNotExist(err) {
		t.Fatal("a file was created under /dev")
	}
	if _, err := OpenCacheDevice(CacheDeviceOptions{Path: filepath.Join(dir, "nosize.img"), Config: cfg}); err == nil {
		t.Fatal("created a cache file without a size")
	}
	if _, err := OpenCacheDevice(CacheDeviceOptions{Path: filepath.Join(dir, "c.img"), Size: 64 << 20}); err == nil {
		t.Fatal("opened without a backing directory")
	}

	// A blank existing file (a crash between sizing and formatting) is
	// formatted; the second open finds the cache set.
	blank := filepath.Join(dir, "blank.img")
	if err := os.WriteFile(blank, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blank, 64<<20); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		c, err := OpenCacheDevice(CacheDeviceOptions{Path: blank, Config: cfg})
		if err != nil {
			t.Fatalf("open %d: %v", i, err)
		}
		s := NewEngineStore(c, cfg.BackingDir)
		if err := s.Health(); err != nil {
			t.Fatal(err)
		}
		free, err := s.Capacity(engine.BackingFile)
		var st unix.Statfs_t
		if err := unix.Statfs(cfg.BackingDir, &st); err != nil {
			t.Fatal(err)
		}
		if err != nil || free <= 0 || free > int64(st.Blocks)*st.Bsize {
			t.Fatalf("file capacity %d, %v", free, err)
		}
		if blk, _ := s.Capacity(engine.BackingBlockDev); blk != 0 {
			t.Fatalf("blockdev capacity %d", blk)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := superblockAreaBlankFile(blank); err != nil || b {
		t.Fatalf("superblock area after format: blank=%v, %v", b, err)
	}
}

func superblockAreaBlankFile(path string) (bool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return false, err
	}
	for _, c := range b[:3*4096] {
		if c != 0 {
			return false, nil
		}
	}
	return true, nil
}

func TestClampSub(t *testing.T) {
	for _, tt := range []struct {
		a, b uint64
		want int64
	}{{10, 3, 7}, {3, 10, 0}, {5, 5, 0}, {^uint64(0), 0, 1 << 62}} {
		if got := clampSub(tt.a, tt.b); got != tt.want {
			t.Errorf("clampSub(%d, %d) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}
