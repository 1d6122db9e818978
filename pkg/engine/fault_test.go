package engine

import (
	"bytes"
	"errors"
	"syscall"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// faultEnv is a cache set whose cache device and backing stores fail on demand.
func faultEnv(t *testing.T, cfg Config) (*volEnv, *device.Fault, map[string]*device.Fault) {
	t.Helper()
	mem := device.NewMem(16 << 20)
	if err := Format(mem, cfg); err != nil {
		t.Fatal(err)
	}
	cacheFault := device.NewFault(mem.Reopen(), nil)
	backFaults := map[string]*device.Fault{}
	e := &volEnv{t: t, cfg: cfg, cache: cacheFault, backs: map[string]device.Device{}}
	e.wrapBacking = func(path string, d device.Device) device.Device {
		f := device.NewFault(d, nil)
		backFaults[path] = f
		return f
	}
	e.open()
	t.Cleanup(func() { e.c.Close() })
	return e, cacheFault, backFaults
}

// dataRange is the device range of the cache data that sectors [start, end) of v
// point to.
func dataRange(t *testing.T, v *Volume, start, end uint64) (int64, int64) {
	t.Helper()
	keys, err := v.c.lookup(v.id, start, end)
	if err != nil || len(keys) == 0 {
		t.Fatalf("lookup: %v, %d keys", err, len(keys))
	}
	lo, hi := int64(1<<62), int64(0)
	for _, k := range keys {
		off := v.c.dataOffset(k.Ptr, 0)
		lo = min(lo, off)
		hi = max(hi, off+int64(k.Len)*ondisk.SectorSize)
	}
	return lo, hi - lo
}

// A cache read error on clean data is served from the backing store.
func TestFaultCacheReadClean(t *testing.T) {
	e, cacheFault, _ := faultEnv(t, volTestConfig())
	v, err := e.c.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20, Mode: Writethrough})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("clean data "), 64<<10/11+1)[:64<<10]
	if err := v.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	off, n := dataRange(t, v, 0, 128)
	cacheFault.SetInjector(device.FailRange(device.OpRead, off, n, syscall.EIO))
	got := make([]byte, len(data))
	if err := v.ReadAt(got, 0); err != nil {
		t.Fatalf("read of clean data with a failing cache: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("wrong data")
	}
	if s := v.Stats(); s.CacheIOErrors == 0 || s.Misses == 0 {
		t.Fatalf("stats %+v: want a cache error and a miss", s)
	}
	cacheFault.SetInjector(nil)
}

// A backing write error in writeback keeps the data dirty, shows in the stats,
// and is retried; a cache read error on the dirty data is EIO, never the stale
// backing data.
func TestFaultWritebackAndDirtyRead(t *testing.T) {
	cfg := volTestConfig()
	cfg.WritebackPercent = -1 // write back at once
	e, cacheFault, backFaults := faultEnv(t, cfg)
	v, err := e.c.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20, Mode: Writeback})
	if err != nil {
		t.Fatal(err)
	}
	bf := backFaults[v.Info().BackingPath]
	bf.SetInjector(device.FailRange(device.OpWrite, 0, 1<<20, syscall.EIO))
	data := bytes.Repeat([]byte{0xD1}, 32<<10)
	if err := v.WriteAt(data, 0, false); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for v.Stats().BackingIOErrors == 0 {
		if time.Now().After(deadline) {
			t.Fatal("writeback never tried the backing store")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := v.Stats(); s.DirtyBytes != uint64(len(data)) {
		t.Fatalf("dirty bytes %d after failed writeback, want %d", s.DirtyBytes, len(data))
	}
	// The dirty copy is the only one: a cache read error is an IO error.
	off, n := dataRange(t, v, 0, 64)
	cacheFault.SetInjector(device.FailRange(device.OpRead, off, n, syscall.EIO))
	if err := v.ReadAt(make([]byte, len(data)), 0); !errors.Is(err, ErrIO) {
		t.Fatalf("read of dirty data with a failing cache: %v, want ErrIO", err)
	}
	cacheFault.SetInjector(nil)
	// The backing store recovers: writeback retries and the data becomes clean.
	bf.SetInjector(nil)
	for v.Stats().DirtyBytes != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("writeback did not recover: %+v", v.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	got := make([]byte, len(data))
	if _, err := bf.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("backing store after writeback: %v", err)
	}
}

// Isolation across a crash: a deleted volume's data never shows through a new
// volume on reused buckets, also when the crash cut the deletion short.
func TestVolumeDeleteIsolationCrash(t *testing.T) {
	for _, crashAt := range []int64{1, 2, 3, 4, 6, 8, 12, 16, 24, 32} {
		cfg := volTestConfig()
		img := device.NewMem(8 << 20)
		if err := Format(img, cfg); err != nil {
			t.Fatal(err)
		}
		cdev := device.NewCrash(img.Reopen())
		c, err := Open(cdev, cfg)
		if err != nil {
			t.Fatal(err)
		}
		a, err := c.CreateVolume(VolumeSpec{Name: "a", Size: 1 << 20, Backing: BackingNone})
		if err != nil {
			t.Fatal(err)
		}
		if err := a.WriteAt(bytes.Repeat([]byte{0xA5}, 1<<20), 0, true); err != nil {
			t.Fatal(err)
		}
		var n int64
		cdev.CrashWhen(func(uint64, device.Op, int64, int64) bool { n++; return n >= crashAt }, nil, device.KeepRandom)
		delErr := c.DeleteVolume("a")
		if delErr == nil {
			// Deleted before the crash point: create b on the freed buckets.
			if err := c.GC(); err == nil {
				if b, err := c.CreateVolume(VolumeSpec{Name: "b", Size: 1 << 20, Backing: BackingNone}); err == nil {
					_ = b.WriteAt(bytes.Repeat([]byte{0x3C}, 4096), 0, false)
				}
			}
		}
		c.Close()
		if !cdev.Crashed() {
			cdev.Crash(nil, device.KeepRandom)
		}
		c2, err := Open(cdev.Image(), afterPowerLoss(cfg))
		if err != nil {
			t.Fatalf("crash at %d: reopen: %v", crashAt, err)
		}
		if err := c2.Check(); err != nil {
			t.Fatalf("crash at %d: %v", crashAt, err)
		}
		if _, err := c2.Volume("a"); err == nil {
			c2.Close()
			continue // the deletion did not survive: a is intact, nothing to isolate
		}
		b, err := c2.Volume("b")
		if err != nil {
			b, err = c2.CreateVolume(VolumeSpec{Name: "b", Size: 1 << 20, Backing: BackingNone})
			if err != nil {
				t.Fatal(err)
			}
		}
		got := make([]byte, 1<<20)
		if err := b.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		for i := 4096; i < len(got); i++ {
			if got[i] != 0 {
				t.Fatalf("crash at %d: volume b reads %#x at byte %d: the deleted volume's data", crashAt, got[i], i)
			}
		}
		for i := 0; i < 4096; i++ {
			if got[i] != 0 && got[i] != 0x3C {
				t.Fatalf("crash at %d: volume b reads %#x at byte %d", crashAt, got[i], i)
			}
		}
		c2.Close()
	}
}
