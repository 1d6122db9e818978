// Package drivertest holds the test doubles of the driver's interfaces: an
// in-memory cache set (MemStore), a kernel whose NBD devices outlive plugin
// processes (FakeKernel) and a mounter that records mounts (FakeMounter),
// plus Harness, which serves a driver built from them on a unix socket.
package drivertest

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/csi-cache/csi-cache/pkg/driver"
	"github.com/csi-cache/csi-cache/pkg/engine"
)

// MemStore is an in-memory driver.VolumeStore with the engine's semantics
// (names, sizes, errors); volume data lives in sparse 4 KiB pages, so
// volumes of many GiB cost only what is written.
type MemStore struct {
	mu       sync.Mutex // guards the fields below
	nextID   uint64
	vols     map[string]*MemVolume
	capacity map[engine.BackingKind]int64
	health   error
}

var _ driver.VolumeStore = (*MemStore)(nil)

// NewMemStore returns an empty store with room for fileBytes of file-backed
// and cacheBytes of cache-only volumes.
func NewMemStore(fileBytes, cacheBytes int64) *MemStore {
	return &MemStore{
		nextID: 1,
		vols:   make(map[string]*MemVolume),
		capacity: map[engine.BackingKind]int64{
			engine.BackingFile: fileBytes, engine.BackingNone: cacheBytes,
		},
	}
}

// SetHealth makes Health return err.
func (s *MemStore) SetHealth(err error) {
	s.mu.Lock()
	s.health = err
	s.mu.Unlock()
}

// Health implements driver.VolumeStore.
func (s *MemStore) Health() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.health
}

// CreateVolume implements driver.VolumeStore.
func (s *MemStore) CreateVolume(spec engine.VolumeSpec) (driver.Volume, error) {
	switch {
	case len(spec.Name) == 0 || len(spec.Name) > 253:
		return nil, fmt.Errorf("%w: volume name of %d bytes", engine.ErrInvalid, len(spec.Name))
	case spec.Size == 0 || spec.Size%512 != 0:
		return nil, fmt.Errorf("%w: volume size %d", engine.ErrInvalid, spec.Size)
	case spec.Backing == engine.BackingBlockDev && spec.BackingPath == "":
		return nil, fmt.Errorf("%w: blockdev backing without a path", engine.ErrInvalid)
	}
	// The engine's defaults and rules.
	if spec.Mode == 0 {
		spec.Mode = engine.Writethrough
	}
	if spec.Backing == 0 {
		spec.Backing = engine.BackingFile
	}
	if spec.Backing == engine.BackingNone {
		spec.Mode = engine.Writeback
	}
	if spec.SeqCutoff == 0 {
		spec.SeqCutoff = engine.DefaultSeqCutoff
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.vols[spec.Name]; ok {
		return nil, fmt.Errorf("%w: %q", engine.ErrVolumeExists, spec.Name)
	}
	if int64(spec.Size) > s.capacityLocked(spec.Backing) {
		return nil, fmt.Errorf("%w: %d bytes", engine.ErrNoSpace, spec.Size)
	}
	v := &MemVolume{
		info: engine.VolumeInfo{ID: s.nextID, Name: spec.Name, Size: spec.Size, Mode: spec.Mode,
			Backing: spec.Backing, BackingPath: spec.BackingPath, SeqCutoff: spec.SeqCutoff, Created: time.Now()},
		pages: make(map[int64][]byte),
	}
	s.nextID++
	s.vols[spec.Name] = v
	return v, nil
}

// Volume implements driver.VolumeStore.
func (s *MemStore) Volume(name string) (driver.Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vols[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", engine.ErrNoVolume, name)
	}
	return v, nil
}

// MemVolume returns the volume named name, or nil.
func (s *MemStore) MemVolume(name string) *MemVolume {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vols[name]
}

// Volumes implements driver.VolumeStore.
func (s *MemStore) Volumes() []engine.VolumeInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]engine.VolumeInfo, 0, len(s.vols))
	for _, v := range s.vols {
		out = append(out, v.Info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// DeleteVolume implements driver.VolumeStore.
func (s *MemStore) DeleteVolume(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.vols[name]
	if !ok {
		return fmt.Errorf("%w: %q", engine.ErrNoVolume, name)
	}
	delete(s.vols, name)
	v.close()
	return nil
}

// Capacity implements driver.VolumeStore: the configured room less the sizes
// of the existing volumes of that kind.
func (s *MemStore) Capacity(kind engine.BackingKind) (int64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.capacityLocked(kind), nil
}

func (s *MemStore) capacityLocked(kind engine.BackingKind) int64 {
	free := s.capacity[kind]
	for _, v := range s.vols {
		if v.info.Backing == kind {
			free -= int64(v.Info().Size)
		}
	}
	return max(free, 0)
}

const pageSize = 4096

// MemVolume is a volume of a MemStore.
type MemVolume struct {
	mu     sync.Mutex // guards the fields below
	info   engine.VolumeInfo
	pages  map[int64][]byte // page index → data; absent pages read as zeroes
	health error
	closed bool
}

var _ driver.Volume = (*MemVolume)(nil)

func (v *MemVolume) close() {
	v.mu.Lock()
	v.closed = true
	v.mu.Unlock()
}

// SetHealth makes Health return err.
func (v *MemVolume) SetHealth(err error) {
	v.mu.Lock()
	v.health = err
	v.mu.Unlock()
}

// SetIOErrors sets the IO error counters of the stats.
func (v *MemVolume) SetIOErrors(cache, backing uint64) {
	v.mu.Lock()
	v.info.Stats.CacheIOErrors, v.info.Stats.BackingIOErrors = cache, backing
	v.mu.Unlock()
}

// Info implements driver.Volume.
func (v *MemVolume) Info() engine.VolumeInfo {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.info
}

// Size implements nbd.Backend.
func (v *MemVolume) Size() int64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	return int64(v.info.Size)
}

// Health implements driver.Volume.
func (v *MemVolume) Health() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return engine.ErrVolumeClosed
	}
	return v.health
}

// Resize implements driver.Volume.
func (v *MemVolume) Resize(size uint64) error {
	if size == 0 || size%512 != 0 {
		return fmt.Errorf("%w: volume size %d", engine.ErrInvalid, size)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return engine.ErrVolumeClosed
	}
	for p := range v.pages {
		if p*pageSize >= int64(size) {
			delete(v.pages, p)
		}
	}
	v.info.Size = size
	return nil
}

// checkLocked validates an IO request like the engine does.
func (v *MemVolume) checkLocked(off, n int64) error {
	switch {
	case v.closed:
		return engine.ErrVolumeClosed
	case v.health != nil:
		return v.health
	case off < 0 || n < 0 || off%512 != 0 || n%512 != 0 || off+n > int64(v.info.Size):
		return fmt.Errorf("%w: io [%d, +%d) on a volume of %d bytes", engine.ErrInvalid, off, n, v.info.Size)
	}
	return nil
}

// ReadAt implements nbd.Backend.
func (v *MemVolume) ReadAt(p []byte, off int64) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	v.info.Stats.ReadOps++
	v.info.Stats.ReadBytes += uint64(len(p))
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, in := pos/pageSize, pos%pageSize
		n := min(len(p)-done, int(pageSize-in))
		if data, ok := v.pages[pg]; ok {
			copy(p[done:done+n], data[in:])
		} else {
			clear(p[done : done+n])
		}
		done += n
	}
	return nil
}

// WriteAt implements nbd.Backend.
func (v *MemVolume) WriteAt(p []byte, off int64, _ bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.checkLocked(off, int64(len(p))); err != nil {
		return err
	}
	v.info.Stats.WriteOps++
	v.info.Stats.WriteBytes += uint64(len(p))
	for done := 0; done < len(p); {
		pos := off + int64(done)
		pg, in := pos/pageSize, pos%pageSize
		n := min(len(p)-done, int(pageSize-in))
		data, ok := v.pages[pg]
		if !ok {
			data = make([]byte, pageSize)
			v.pages[pg] = data
		}
		copy(data[in:], p[done:done+n])
		done += n
	}
	return nil
}

// Flush implements nbd.Backend.
func (v *MemVolume) Flush() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed {
		return engine.ErrVolumeClosed
	}
	return v.health
}

// Trim implements nbd.Backend: the range reads back as zeroes.
func (v *MemVolume) Trim(off, length int64) error { return v.WriteZeroes(off, length, false) }

// WriteZeroes implements nbd.Backend.
func (v *MemVolume) WriteZeroes(off, length int64, _ bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.checkLocked(off, length); err != nil {
		return err
	}
	for pos := off; pos < off+length; {
		pg, in := pos/pageSize, pos%pageSize
		n := min(off+length-pos, pageSize-in)
		if data, ok := v.pages[pg]; ok {
			if n == pageSize {
				delete(v.pages, pg)
			} else {
				clear(data[in : in+n])
			}
		}
		pos += n
	}
	return nil
}
