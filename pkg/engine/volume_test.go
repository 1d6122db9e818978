package engine

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// volEnv is a cache set on an in-memory device with in-memory backing stores,
// reopenable.
type volEnv struct {
	t     testing.TB
	cfg   Config
	cache device.Device
	mu    sync.Mutex
	backs map[string]device.Device // by backing path
	// wrapBacking, if set, wraps a backing store as it is opened.
	wrapBacking func(path string, d device.Device) device.Device
	c           *CacheSet
}

func volTestConfig() Config {
	cfg := testConfig()
	cfg.NodeMaxKeys = 64
	cfg.NodeCacheNodes = 64
	cfg.GCInterval = time.Hour
	return cfg
}

func newVolEnv(t testing.TB, cacheSize int64, cfg Config) *volEnv {
	t.Helper()
	e := &volEnv{t: t, cfg: cfg, backs: map[string]device.Device{}}
	mem := device.NewMem(cacheSize)
	if err := Format(mem, cfg); err != nil {
		t.Fatalf("Format: %v", err)
	}
	e.cache = mem
	e.open()
	t.Cleanup(func() {
		if e.c != nil {
			if err := e.c.Check(); err != nil {
				t.Errorf("Check: %v", err)
			}
			e.c.Close()
		}
	})
	return e
}

func (e *volEnv) open() {
	e.t.Helper()
	cfg := e.cfg
	cfg.BackingDir = "/backing"
	cfg.OpenBacking = func(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		d, ok := e.backs[path]
		if create || !ok {
			if !create {
				return nil, errors.New("no such backing store")
			}
			d = device.NewMem(size)
			e.backs[path] = d
		}
		if m, ok := d.(*device.Mem); ok {
			d = m.Reopen()
		}
		if e.wrapBacking != nil {
			d = e.wrapBacking(path, d)
		}
		return d, nil
	}
	cache := e.cache
	if m, ok := cache.(*device.Mem); ok {
		cache = m.Reopen()
	}
	c, err := Open(cache, cfg)
	if err != nil {
		e.t.Fatalf("Open: %v", err)
	}
	e.c = c
}

func (e *volEnv) reopen() {
	e.t.Helper()
	if err := e.c.Check(); err != nil {
		e.t.Fatalf("Check before close: %v", err)
	}
	if err := e.c.Close(); err != nil {
		e.t.Fatalf("Close: %v", err)
	}
	e.open()
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

func TestVolumeModesRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		mode    CacheMode
		backing BackingKind
	}{
		{Writethrough, BackingFile}, {Writeback, BackingFile}, {Writearound, BackingFile},
		{NoCache, BackingFile}, {Writeback, BackingNone},
	} {
		t.Run(tc.mode.String()+"-"+tc.backing.String(), func(t *testing.T) {
			e := newVolEnv(t, 16<<20, volTestConfig())
			v, err := e.c.CreateVolume(VolumeSpec{Name: "pv", Size: 4 << 20, Mode: tc.mode, Backing: tc.backing})
			if err != nil {
				t.Fatal(err)
			}
			rng := rand.New(rand.NewPCG(1, 2))
			want := make([]byte, 4<<20)
			for i := 0; i < 200; i++ {
				off := rng.IntN(8192-64) * 512
				n := (1 + rng.IntN(64)) * 512
				p := randBytes(rng, n)
				if err := v.WriteAt(p, int64(off), rng.IntN(10) == 0); err != nil {
					t.Fatal(err)
				}
				copy(want[off:], p)
			}
			got := make([]byte, len(want))
			for pass := 0; pass < 2; pass++ { // the second pass hits what the first filled
				if err := v.ReadAt(got, 0); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("pass %d: data differs", pass)
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := v.Flush(); err != nil {
				t.Fatal(err)
			}
			e.reopen()
			v, err = e.c.Volume("pv")
			if err != nil {
				t.Fatal(err)
			}
			clear(got)
			if err := v.ReadAt(got, 0); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("data differs after reopen")
			}
			s := v.Stats()
			t.Logf("stats %+v", s)
		})
	}
}

func TestVolumeDeleteIsolation(t *testing.T) {
	e := newVolEnv(t, 8<<20, volTestConfig())
	a, err := e.c.CreateVolume(VolumeSpec{Name: "a", Size: 2 << 20, Mode: Writeback, Backing: BackingNone})
	if err != nil {
		t.Fatal(err)
	}
	pat := bytes.Repeat([]byte{0xA5}, 2<<20)
	if err := a.WriteAt(pat, 0, true); err != nil {
		t.Fatal(err)
	}
	if err := e.c.DeleteVolume("a"); err != nil {
		t.Fatal(err)
	}
	if err := a.ReadAt(make([]byte, 512), 0); !errors.Is(err, ErrVolumeClosed) {
		t.Fatalf("read of a deleted volume: %v", err)
	}
	if err := e.c.GC(); err != nil {
		t.Fatal(err)
	}
	b, err := e.c.CreateVolume(VolumeSpec{Name: "b", Size: 2 << 20, Mode: Writeback, Backing: BackingNone})
	if err != nil {
		t.Fatal(err)
	}
	if b.ID() == a.ID() {
		t.Fatal("volume id reused")
	}
	// b writes half; the other half must read zeroes, now and after a reopen.
	half := bytes.Repeat([]byte{0x3C}, 1<<20)
	if err := b.WriteAt(half, 0, true); err != nil {
		t.Fatal(err)
	}
	check := func() {
		got := make([]byte, 2<<20)
		if err := b.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got[:1<<20], half) || !bytes.Equal(got[1<<20:], make([]byte, 1<<20)) {
			t.Fatal("volume b sees data it did not write")
		}
	}
	check()
	e.reopen()
	if b, err = e.c.Volume("b"); err != nil {
		t.Fatal(err)
	}
	check()
	if _, err := e.c.Volume("a"); !errors.Is(err, ErrNoVolume) {
		t.Fatalf("deleted volume after reopen: %v", err)
	}
}

func TestVolumeAPIErrors(t *testing.T) {
	e := newVolEnv(t, 8<<20, volTestConfig())
	for _, spec := range []VolumeSpec{
		{Name: "", Size: 1 << 20},
		{Name: "x", Size: 0},
		{Name: "x", Size: 1000},
		{Name: "x", Size: 1 << 20, Mode: 9},
		{Name: "x", Size: 1 << 20, Backing: BackingBlockDev},
	} {
		if _, err := e.c.CreateVolume(spec); !errors.Is(err, ErrInvalid) {
			t.Errorf("CreateVolume(%+v) = %v, want ErrInvalid", spec, err)
		}
	}
	v, err := e.c.CreateVolume(VolumeSpec{Name: "x", Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.CreateVolume(VolumeSpec{Name: "x", Size: 1 << 20}); !errors.Is(err, ErrVolumeExists) {
		t.Fatal(err)
	}
	if err := v.ReadAt(make([]byte, 512), 1<<20); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if err := v.WriteAt(make([]byte, 100), 0, false); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
	if err := e.c.DeleteVolume("nope"); !errors.Is(err, ErrNoVolume) {
		t.Fatal(err)
	}
	if _, err := ParseCacheMode("fast"); !errors.Is(err, ErrInvalid) {
		t.Fatal(err)
	}
}
