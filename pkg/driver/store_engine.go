package driver

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/pkg/engine"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// EngineStore is the VolumeStore of a cache set.
type EngineStore struct {
	c          *engine.CacheSet
	backingDir string
}

var _ VolumeStore = (*EngineStore)(nil)

// NewEngineStore serves the volumes of c; backingDir is c's Config.BackingDir
// (its free space is what file-backed volumes can use).
func NewEngineStore(c *engine.CacheSet, backingDir string) *EngineStore {
	return &EngineStore{c: c, backingDir: backingDir}
}

// CacheSet returns the cache set.
func (s *EngineStore) CacheSet() *engine.CacheSet { return s.c }

// CreateVolume implements VolumeStore.
func (s *EngineStore) CreateVolume(spec engine.VolumeSpec) (Volume, error) {
	v, err := s.c.CreateVolume(spec)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Volume implements VolumeStore.
func (s *EngineStore) Volume(name string) (Volume, error) {
	v, err := s.c.Volume(name)
	if err != nil {
		return nil, err
	}
	return v, nil
}

// Volumes implements VolumeStore.
func (s *EngineStore) Volumes() []engine.VolumeInfo { return s.c.Volumes() }

// DeleteVolume implements VolumeStore.
func (s *EngineStore) DeleteVolume(name string) error { return s.c.DeleteVolume(name) }

// Health implements VolumeStore.
func (s *EngineStore) Health() error { return s.c.Err() }

// Capacity implements VolumeStore. Provisioning is thick, though the files are
// sparse: a new volume gets only space no existing volume may still claim.
//
//	file: free space of the backing directory's filesystem
//	      − Σ (size − allocated) over the existing file-backed volumes
//	none: cache bytes − metadata bytes − Σ size of the cache-only volumes
func (s *EngineStore) Capacity(kind engine.BackingKind) (int64, error) {
	var claimed uint64
	for _, v := range s.c.Volumes() {
		if v.Backing == kind {
			claimed += v.Size
		}
	}
	switch kind {
	case engine.BackingFile:
		var st unix.Statfs_t
		if err := unix.Statfs(s.backingDir, &st); err != nil {
			return 0, fmt.Errorf("statfs %s: %w", s.backingDir, err)
		}
		free := st.Bavail * uint64(st.Bsize)
		used, err := allocatedBytes(s.backingDir)
		if err != nil {
			return 0, err
		}
		return clampSub(free+used, claimed), nil
	case engine.BackingNone:
		st := s.c.Stats()
		return clampSub(st.CacheBytes, st.MetadataBytes+claimed), nil
	}
	return 0, nil
}

func clampSub(a, b uint64) int64 {
	if b >= a {
		return 0
	}
	return int64(min(a-b, 1<<62))
}

// allocatedBytes sums the blocks allocated to the regular files in dir.
func allocatedBytes(dir string) (uint64, error) {
	var total uint64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil // deleted under us
			}
			return err
		}
		total += uint64(st.Blocks) * 512
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("measuring %s: %w", dir, err)
	}
	return total, nil
}

// CacheDeviceOptions say how to open the cache device.
type CacheDeviceOptions struct {
	// Path of a block device or a regular file.
	Path string
	// Size of the sparse file created when Path does not exist.
	Size int64
	// Config of the cache set (BackingDir must be set).
	Config engine.Config
}

// OpenCacheDevice opens the cache set on a block device or file, creating and
// formatting it first when needed:
//
//   - a missing path is created as a sparse file of Size bytes (except
//     under /dev/, where a missing path is a mistyped device);
//   - a device or file whose superblock area is all zeroes (new, or wiped
//     with blkdiscard) is formatted;
//   - anything else is opened, so a device holding other data is refused
//     (Open finds no superblock) rather than overwritten.
func OpenCacheDevice(o CacheDeviceOptions) (*engine.CacheSet, error) {
	if o.Config.BackingDir == "" {
		return nil, errors.New("cache set: no backing directory")
	}
	if err := os.MkdirAll(o.Config.BackingDir, 0o700); err != nil {
		return nil, fmt.Errorf("cache set: %w", err)
	}
	_, statErr := os.Stat(o.Path)
	create := errors.Is(statErr, fs.ErrNotExist)
	if create {
		if strings.HasPrefix(filepath.Clean(o.Path), "/dev/") {
			return nil, fmt.Errorf("cache set: block device %s does not exist", o.Path)
		}
		if o.Size <= 0 {
			return nil, fmt.Errorf("cache set: %s does not exist and no size to create it with", o.Path)
		}
		if err := os.MkdirAll(filepath.Dir(o.Path), 0o700); err != nil {
			return nil, fmt.Errorf("cache set: %w", err)
		}
	}
	dev, err := device.OpenFile(o.Path, device.FileOptions{Create: create, Size: o.Size, Direct: true})
	if err != nil {
		return nil, fmt.Errorf("cache set: %w", err)
	}
	if !dev.DirectIO() {
		klog.InfoS("The cache device's filesystem refuses O_DIRECT; using buffered IO (the page cache holds a second copy of cached data)", "path", o.Path)
	}
	blank, err := superblockAreaBlank(dev)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("cache set: %w", err)
	}
	if blank {
		klog.InfoS("Formatting the cache device", "path", o.Path, "size", dev.Size())
		if err := engine.Format(dev, o.Config); err != nil {
			dev.Close()
			return nil, fmt.Errorf("cache set: format %s: %w", o.Path, err)
		}
	}
	c, err := engine.Open(dev, o.Config)
	if err != nil {
		// Open closes dev on failure.
		if engine.IsCorruption(err) {
			return nil, fmt.Errorf("cache set: %s holds no valid csi-cache superblock and is not blank; refusing to format it (wipe it, e.g. with blkdiscard, to let csi-cache format it): %w", o.Path, err)
		}
		return nil, fmt.Errorf("cache set: open %s: %w", o.Path, err)
	}
	return c, nil
}

// superblockAreaBlank reports whether the first blocks of dev, which hold the
// superblock copies, are all zeroes.
func superblockAreaBlank(dev device.Device) (bool, error) {
	n := ondisk.SuperblockOffset(ondisk.CopyB) + ondisk.BlockSize
	if dev.Size() < n {
		return false, fmt.Errorf("device of %d bytes is too small for a cache set", dev.Size())
	}
	buf := make([]byte, n)
	if _, err := dev.ReadAt(buf, 0); err != nil {
		return false, err
	}
	for _, b := range buf {
		if b != 0 {
			return false, nil
		}
	}
	return true, nil
}
