package engine

import "errors"

// errNotYet marks the parts of the volume API still being built.
var errNotYet = errors.New("engine: volumes not implemented yet")

// Volume is an open volume of a cache set: a block device of Size bytes whose
// data lives on its backing store with the hot part cached. Its methods are safe
// for concurrent use. Offsets and lengths are multiples of 512.
type Volume struct {
	c    *CacheSet
	info VolumeInfo
}

// CreateVolume creates a volume. ErrVolumeExists if the name is taken.
func (c *CacheSet) CreateVolume(spec VolumeSpec) (*Volume, error) { return nil, errNotYet }

// Volume returns the open volume named name, or ErrNoVolume.
func (c *CacheSet) Volume(name string) (*Volume, error) { return nil, errNotYet }

// Volumes lists the volumes in increasing id order.
func (c *CacheSet) Volumes() []VolumeInfo { return nil }

// DeleteVolume deletes a volume: its cached data is invalidated, its backing
// file (BackingFile) removed, and its id is never reused. ErrNoVolume if absent.
func (c *CacheSet) DeleteVolume(name string) error { return errNotYet }

// Stats describes the cache set.
func (c *CacheSet) Stats() SetStats { return SetStats{} }

// ID is the volume's id, unique for the life of the cache set.
func (v *Volume) ID() uint64 { return v.info.ID }

// Name is the volume's name.
func (v *Volume) Name() string { return v.info.Name }

// Info describes the volume, with current stats.
func (v *Volume) Info() VolumeInfo { return v.info }

// Size is the volume size in bytes.
func (v *Volume) Size() int64 { return int64(v.info.Size) }

// ReadAt fills p from offset off.
func (v *Volume) ReadAt(p []byte, off int64) error { return errNotYet }

// WriteAt writes p at off; with fua it is durable when WriteAt returns.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error { return errNotYet }

// Flush makes every write that returned before the call durable.
func (v *Volume) Flush() error { return errNotYet }

// Trim discards a range: it reads back as zeroes.
func (v *Volume) Trim(off, length int64) error { return errNotYet }

// WriteZeroes makes a range read back as zeroes; with fua durably.
func (v *Volume) WriteZeroes(off, length int64, fua bool) error { return errNotYet }

// Resize grows (or shrinks) the volume to size bytes.
func (v *Volume) Resize(size uint64) error { return errNotYet }

// SetCacheMode switches the cache mode; leaving Writeback first writes the dirty
// data back.
func (v *Volume) SetCacheMode(m CacheMode) error { return errNotYet }

// Stats returns the volume's counters.
func (v *Volume) Stats() VolumeStats { return VolumeStats{} }

// Health is nil while the volume can serve IO, else the error that stops it.
func (v *Volume) Health() error { return errNotYet }
