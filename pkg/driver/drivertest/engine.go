package drivertest

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// EngineVolumesWork reports why the engine cannot serve volumes yet, or ""
// when it can: it creates a volume on a small in-memory cache set.
func EngineVolumesWork() string {
	dev := device.NewMem(64 << 20)
	if err := engine.Format(dev, engine.Config{}); err != nil {
		return "engine.Format: " + err.Error()
	}
	c, err := engine.Open(dev.Reopen(), engine.Config{BackingDir: "/nonexistent"})
	if err != nil {
		return "engine.Open: " + err.Error()
	}
	defer c.Close()
	if _, err := c.CreateVolume(engine.VolumeSpec{Name: "probe", Size: 1 << 20, Mode: engine.Writethrough, Backing: engine.BackingNone}); err != nil {
		return "engine CreateVolume: " + err.Error()
	}
	return ""
}

// SkipUnlessEngineVolumes skips t while the engine's volume API is a stub.
func SkipUnlessEngineVolumes(t testing.TB) {
	t.Helper()
	if why := EngineVolumesWork(); why != "" {
		if strings.Contains(why, "not implemented") {
			t.Skip("engine volumes not implemented yet (" + why + ")")
		}
		t.Fatalf("the engine cannot create a volume: %s", why)
	}
}

// Engine is a cache set on a sparse file, with its backing directory.
type Engine struct {
	Path, BackingDir string
	Size             int64
	Set              *engine.CacheSet
	Store            *driver.EngineStore
}

// OpenEngine creates (or, for a dir already used, re-opens) a cache set of
// size bytes in dir through driver.OpenCacheDevice; the test's cleanup
// closes it.
func OpenEngine(t testing.TB, dir string, size int64) *Engine {
	t.Helper()
	e := &Engine{Path: filepath.Join(dir, "cache.img"), BackingDir: filepath.Join(dir, "backing"), Size: size}
	e.open(t)
	return e
}

func (e *Engine) open(t testing.TB) {
	t.Helper()
	c, err := driver.OpenCacheDevice(driver.CacheDeviceOptions{
		Path: e.Path, Size: e.Size, Config: engine.Config{BackingDir: e.BackingDir},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	e.Set, e.Store = c, driver.NewEngineStore(c, e.BackingDir)
}

// Reopen closes the cache set and opens it again, as a new plugin process
// does.
func (e *Engine) Reopen(t testing.TB) *driver.EngineStore {
	t.Helper()
	if err := e.Set.Close(); err != nil {
		t.Fatal(err)
	}
	e.open(t)
	return e.Store
}
