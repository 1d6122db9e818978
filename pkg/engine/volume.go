package engine

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// Volume is an open volume of a cache set: a block device of Size bytes whose
// data lives on its backing store with the hot part cached. Its methods are safe
// for concurrent use. Offsets and lengths are multiples of 512.
type Volume struct {
	c  *CacheSet
	id uint64

	// io is held shared by every IO and exclusive by Resize and delete, which
	// drain the IO in flight.
	io     sync.RWMutex
	closed bool // under io (exclusive to set)

	mu   sync.Mutex // guards info; mode and size are mirrored in atomics
	info VolumeInfo
	mode atomic.Uint32 // CacheMode
	size atomic.Uint64 // bytes

	backing device.Device // nil for BackingNone
	// backingDirty is set by every backing write and cleared by the sync that
	// covers it (Flush, FUA, the journal's preflush, writeback).
	backingDirty atomic.Bool
	backingSync  sync.Mutex // one backing sync at a time

	stripes stripes
	seq     seqDetector
	stats   volCounters
	dirty   atomic.Int64 // dirty sectors in the cache

	health atomic.Pointer[error] // nil while healthy

	wb *writeback
}

// volCounters are a volume's counters, updated without locks.
type volCounters struct {
	readOps, writeOps, readBytes, writeBytes atomic.Uint64
	hits, misses, bypassed                   atomic.Uint64
	writebackBytes                           atomic.Uint64
	cacheErrors, backingErrors               atomic.Uint64
}

// volumes is the cache set's volume registry.
type volumes struct {
	mu     sync.Mutex // guards the fields below; taken before any engine lock
	byName map[string]*Volume
	table  ondisk.VolTable
	copy   ondisk.Copy // the copy holding table; the next write goes to the other
	// byID maps ids to open volumes for the insert path's accounting; replaced
	// whole under mu (copy on write) and read without locks.
	byID   atomic.Pointer[map[uint64]*Volume]
	nextID atomic.Uint64
}

func (vs *volumes) lookupID(id uint64) *Volume {
	if m := vs.byID.Load(); m != nil {
		return (*m)[id]
	}
	return nil
}

// publishLocked rebuilds byID from byName.
func (vs *volumes) publishLocked() {
	m := make(map[uint64]*Volume, len(vs.byName))
	for _, v := range vs.byName {
		m[v.id] = v
	}
	vs.byID.Store(&m)
}

// loadVolumes reads the volume table at open.
func (c *CacheSet) loadVolumes(journalNextID uint64) error {
	l := c.layout
	a, b := make([]byte, l.VolTableSize), make([]byte, l.VolTableSize)
	offA, offB := l.VolTableCopyOffset(ondisk.CopyA), l.VolTableCopyOffset(ondisk.CopyB)
	if _, err := c.dev.ReadAt(a, offA); err != nil {
		return fmt.Errorf("engine: read volume table: %w", err)
	}
	if _, err := c.dev.ReadAt(b, offB); err != nil {
		return fmt.Errorf("engine: read volume table: %w", err)
	}
	t, picked, err := ondisk.PickVolTable(a, b, offA, offB, c.sb.SetMagic)
	if err != nil {
		return err
	}
	vs := &c.vols
	vs.table, vs.copy = t, picked.Copy
	vs.byName = map[string]*Volume{}
	next := max(journalNextID, 1)
	for _, r := range t.Volumes {
		next = max(next, r.ID+1)
	}
	vs.nextID.Store(next)
	for _, r := range t.Volumes {
		if r.Deleted() {
			continue
		}
		v, err := c.openVolume(r, false)
		if err != nil {
			// A volume whose backing store is missing is still listed; its IO
			// fails with the reason.
			c.logf("engine: volume %q (id %d): %v", r.Name, r.ID, err)
		}
		vs.byName[r.Name] = v
	}
	vs.publishLocked()
	return nil
}

// purgeDeleted finishes deletions a crash interrupted (at open, after replay).
func (c *CacheSet) purgeDeleted() error {
	c.vols.mu.Lock()
	defer c.vols.mu.Unlock()
	for _, r := range slices.Clone(c.vols.table.Volumes) {
		if r.Deleted() {
			if err := c.purgeLocked(r); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *CacheSet) logf(format string, args ...any) {
	if c.cfg.Logf != nil {
		c.cfg.Logf(format, args...)
	}
}

// writeVolTableLocked writes t to the copy not holding the current table and
// syncs; t becomes the current table.
func (c *CacheSet) writeVolTableLocked(t ondisk.VolTable) error {
	vs := &c.vols
	t.Seq = vs.table.Seq + 1
	buf, err := ondisk.EncodeVolTable(t, c.sb.SetMagic, c.layout.VolTableSize)
	switch {
	case errors.Is(err, ondisk.ErrVolTableFull):
		return fmt.Errorf("%w: %v", ErrNoSpace, err)
	case err != nil:
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	dst := vs.copy.Other()
	if _, err := c.dev.WriteAt(buf, c.layout.VolTableCopyOffset(dst)); err != nil {
		c.setErr(err)
		return fmt.Errorf("engine: write volume table: %w", err)
	}
	if err := c.syncDev(); err != nil {
		return err
	}
	vs.table, vs.copy = t, dst
	return nil
}

// checkSpec validates spec and fills in defaults.
func (c *CacheSet) checkSpec(spec *VolumeSpec) error {
	switch {
	case len(spec.Name) == 0 || len(spec.Name) > ondisk.MaxVolumeNameLen:
		return fmt.Errorf("%w: volume name length %d not in [1, %d]", ErrInvalid, len(spec.Name), ondisk.MaxVolumeNameLen)
	case spec.Size == 0 || spec.Size%ondisk.SectorSize != 0:
		return fmt.Errorf("%w: volume size %d is not a positive multiple of 512", ErrInvalid, spec.Size)
	case spec.Size > maxVolumeSize:
		return fmt.Errorf("%w: volume size %d larger than %d", ErrInvalid, spec.Size, uint64(maxVolumeSize))
	}
	if spec.Mode == 0 {
		spec.Mode = Writethrough
	}
	if _, ok := cacheModeNames[spec.Mode]; !ok {
		return fmt.Errorf("%w: cache mode %d", ErrInvalid, spec.Mode)
	}
	if spec.Backing == 0 {
		spec.Backing = BackingFile
	}
	switch spec.Backing {
	case BackingFile:
		if c.cfg.BackingDir == "" && c.cfg.OpenBacking == nil {
			return fmt.Errorf("%w: file-backed volume, but the cache set has no backing directory", ErrInvalid)
		}
		spec.BackingPath = ""
	case BackingBlockDev:
		if spec.BackingPath == "" || len(spec.BackingPath) > ondisk.MaxBackingPathLen {
			return fmt.Errorf("%w: a block-device backed volume needs a device path", ErrInvalid)
		}
	case BackingNone:
		spec.BackingPath = ""
		if spec.Mode != Writeback {
			// A cache-only volume keeps everything in the cache; the mode is
			// recorded as writeback (its data is dirty for good).
			spec.Mode = Writeback
		}
	default:
		return fmt.Errorf("%w: backing %d", ErrInvalid, spec.Backing)
	}
	if spec.SeqCutoff == 0 {
		spec.SeqCutoff = DefaultSeqCutoff
	}
	return nil
}

// maxVolumeSize bounds volumes to 2^62 bytes, far beyond any device, so that
// sector arithmetic never overflows.
const maxVolumeSize = 1 << 62

// CreateVolume creates a volume. ErrVolumeExists if the name is taken.
func (c *CacheSet) CreateVolume(spec VolumeSpec) (*Volume, error) {
	if err := c.checkSpec(&spec); err != nil {
		return nil, err
	}
	if err := c.err(); err != nil {
		return nil, err
	}
	vs := &c.vols
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if c.isClosed() {
		return nil, ErrClosed
	}
	if _, ok := vs.byName[spec.Name]; ok {
		return nil, fmt.Errorf("%w: %q", ErrVolumeExists, spec.Name)
	}
	id := vs.nextID.Load()
	r := ondisk.VolumeRecord{
		ID: id, Name: spec.Name, SizeBytes: spec.Size, CacheMode: uint8(spec.Mode),
		Backing: uint8(spec.Backing), BackingPath: spec.BackingPath, SeqCutoff: spec.SeqCutoff,
		CreatedUnix: time.Now().Unix(),
	}
	if r.Backing == ondisk.BackingFile {
		r.BackingPath = c.backingFilePath(id)
	}
	// The id is taken before anything names it, so that it is never reused.
	vs.nextID.Store(id + 1)
	v, err := c.openVolume(r, true)
	if err != nil {
		return nil, err
	}
	t := vs.table
	t.Volumes = append(slices.Clone(t.Volumes), r)
	if err := c.writeVolTableLocked(t); err != nil {
		v.stop()
		c.removeBacking(r)
		return nil, err
	}
	vs.byName[r.Name] = v
	vs.publishLocked()
	v.start()
	return v, nil
}

// backingFilePath names the backing file of volume id.
func (c *CacheSet) backingFilePath(id uint64) string {
	return filepath.Join(c.cfg.BackingDir, fmt.Sprintf("vol-%016x.img", id))
}

// openVolume builds the Volume for record r, opening (or creating) its backing
// store. On a backing error the Volume is returned anyway, unhealthy.
func (c *CacheSet) openVolume(r ondisk.VolumeRecord, create bool) (*Volume, error) {
	v := &Volume{c: c, id: r.ID}
	v.info = VolumeInfo{
		ID: r.ID, Name: r.Name, Size: r.SizeBytes, Mode: CacheMode(r.CacheMode),
		Backing: BackingKind(r.Backing), BackingPath: r.BackingPath, SeqCutoff: r.SeqCutoff,
		Created: time.Unix(r.CreatedUnix, 0),
	}
	v.mode.Store(uint32(r.CacheMode))
	v.size.Store(r.SizeBytes)
	v.wb = newWriteback(v)
	if BackingKind(r.Backing) == BackingNone {
		return v, nil
	}
	// A new volume fails; an existing one is listed anyway, unhealthy.
	fail := func(err error) (*Volume, error) {
		if create {
			return nil, err
		}
		v.setUnhealthy(err)
		return v, err
	}
	dev, err := c.openBacking(BackingKind(r.Backing), r.BackingPath, int64(r.SizeBytes), create)
	if err != nil {
		return fail(fmt.Errorf("%w: open backing store of volume %q: %v", ErrIO, r.Name, err))
	}
	if dev.Size() < int64(r.SizeBytes) {
		dev.Close()
		return fail(fmt.Errorf("%w: backing store %s of volume %q has %d bytes, volume is %d",
			ErrNoSpace, r.BackingPath, r.Name, dev.Size(), r.SizeBytes))
	}
	v.backing = dev
	// A process that crashed may have left writes in the page cache or the
	// device's cache that it acknowledged and never synced: the first Flush
	// syncs the backing store whatever this process wrote.
	v.backingDirty.Store(true)
	return v, nil
}

// openBacking opens a backing store.
func (c *CacheSet) openBacking(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
	if c.cfg.OpenBacking != nil {
		return c.cfg.OpenBacking(kind, path, size, create)
	}
	return OpenBackingFile(kind, path, size, create)
}

// OpenBackingFile opens a backing store as the engine does by default: the file
// or block device at path with buffered IO; a new BackingFile volume's file is
// created sparse with size bytes (its directory too). Config.OpenBacking
// replacements can wrap it.
func OpenBackingFile(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
	opts := device.FileOptions{Direct: false}
	if kind == BackingFile && create {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		opts.Create, opts.Size = true, size
	}
	return device.OpenFile(path, opts)
}

// removeBacking removes a file-backed volume's backing file.
func (c *CacheSet) removeBacking(r ondisk.VolumeRecord) {
	if r.Backing != ondisk.BackingFile || c.cfg.OpenBacking != nil {
		return
	}
	if err := os.Remove(r.BackingPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.logf("engine: remove backing file of volume %d: %v", r.ID, err)
	}
}

// Volume returns the open volume named name, or ErrNoVolume.
func (c *CacheSet) Volume(name string) (*Volume, error) {
	c.vols.mu.Lock()
	defer c.vols.mu.Unlock()
	v, ok := c.vols.byName[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrNoVolume, name)
	}
	return v, nil
}

// Volumes lists the volumes in increasing id order.
func (c *CacheSet) Volumes() []VolumeInfo {
	c.vols.mu.Lock()
	vols := make([]*Volume, 0, len(c.vols.byName))
	for _, v := range c.vols.byName {
		vols = append(vols, v)
	}
	c.vols.mu.Unlock()
	out := make([]VolumeInfo, 0, len(vols))
	for _, v := range vols {
		out = append(out, v.Info())
	}
	slices.SortFunc(out, func(a, b VolumeInfo) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return out
}

// DeleteVolume deletes a volume: its cached data is invalidated, its backing
// file (BackingFile) removed, and its id is never reused. ErrNoVolume if absent.
// IO in flight on the volume finishes first; later IO fails with ErrVolumeClosed.
func (c *CacheSet) DeleteVolume(name string) error {
	vs := &c.vols
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v, ok := vs.byName[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNoVolume, name)
	}
	v.stop()
	// 1. The deletion is durable before anything is removed.
	t := vs.table
	t.Volumes = slices.Clone(t.Volumes)
	var rec ondisk.VolumeRecord
	for i := range t.Volumes {
		if t.Volumes[i].ID == v.id {
			t.Volumes[i].Flags |= ondisk.VolumeDeleted
			rec = t.Volumes[i]
		}
	}
	if err := c.writeVolTableLocked(t); err != nil {
		v.restart()
		return err
	}
	delete(vs.byName, name)
	vs.publishLocked()
	// 2. Invalidate its keys, remove its backing file, drop the record.
	return c.purgeLocked(rec)
}

// purgeLocked removes every key of a deleted volume, its backing file and finally
// its record. Caller holds vols.mu.
func (c *CacheSet) purgeLocked(r ondisk.VolumeRecord) error {
	if err := c.invalidateRange(r.ID, 0, r.SizeBytes/ondisk.SectorSize); err != nil {
		return fmt.Errorf("engine: delete volume %q: %w", r.Name, err)
	}
	// The whiteouts and the next volume id must be durable before the record
	// that holds the id back from reuse goes.
	if err := c.jnl.Commit(c.jnl.Seq()); err != nil {
		return fmt.Errorf("engine: delete volume %q: %w", r.Name, err)
	}
	c.removeBacking(r)
	t := c.vols.table
	t.Volumes = slices.DeleteFunc(slices.Clone(t.Volumes), func(x ondisk.VolumeRecord) bool { return x.ID == r.ID })
	return c.writeVolTableLocked(t)
}

// invalidateRange journals whiteouts over sectors [start, end) of volume vol and
// inserts them. It returns the journal entry of the last one.
func (c *CacheSet) invalidateRange(vol, start, end uint64) error {
	var keys []bkey.Key
	for s := start; s < end; {
		n := min(end-s, maxKeySectors)
		keys = append(keys, bkey.Key{Vol: vol, Start: s, Len: uint32(n), Flags: bkey.FlagWhiteout})
		s += n
	}
	for len(keys) > 0 {
		n := min(len(keys), 64)
		if _, err := c.insertKeys(keys[:n]); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}

// maxKeySectors is the longest extent one key describes.
const maxKeySectors = 1<<31 - 1

// updateRecord rewrites volume v's record with fn applied.
func (c *CacheSet) updateRecord(v *Volume, fn func(r *ondisk.VolumeRecord)) error {
	vs := &c.vols
	vs.mu.Lock()
	defer vs.mu.Unlock()
	t := vs.table
	t.Volumes = slices.Clone(t.Volumes)
	for i := range t.Volumes {
		if t.Volumes[i].ID == v.id {
			fn(&t.Volumes[i])
			return c.writeVolTableLocked(t)
		}
	}
	return fmt.Errorf("%w: id %d", ErrNoVolume, v.id)
}

// ID is the volume's id, unique for the life of the cache set.
func (v *Volume) ID() uint64 { return v.id }

// Name is the volume's name.
func (v *Volume) Name() string { return v.info.Name }

// Info describes the volume, with current stats.
func (v *Volume) Info() VolumeInfo {
	v.mu.Lock()
	info := v.info
	v.mu.Unlock()
	info.Mode = CacheMode(v.mode.Load())
	info.Size = v.size.Load()
	info.Stats = v.Stats()
	return info
}

// Size is the volume size in bytes.
func (v *Volume) Size() int64 { return int64(v.size.Load()) }

// Stats returns the volume's counters.
func (v *Volume) Stats() VolumeStats {
	s := &v.stats
	return VolumeStats{
		ReadOps: s.readOps.Load(), WriteOps: s.writeOps.Load(),
		ReadBytes: s.readBytes.Load(), WriteBytes: s.writeBytes.Load(),
		Hits: s.hits.Load(), Misses: s.misses.Load(), Bypassed: s.bypassed.Load(),
		DirtyBytes:     uint64(max(v.dirty.Load(), 0)) * ondisk.SectorSize,
		WritebackBytes: s.writebackBytes.Load(),
		WritebackRate:  v.wb.rate(),
		CacheIOErrors:  s.cacheErrors.Load(), BackingIOErrors: s.backingErrors.Load(),
	}
}

// Health is nil while the volume can serve IO, else the error that stops it.
func (v *Volume) Health() error {
	if err := v.c.err(); err != nil {
		return err
	}
	if p := v.health.Load(); p != nil {
		return *p
	}
	return nil
}

func (v *Volume) setUnhealthy(err error) {
	v.health.CompareAndSwap(nil, &err)
}

// Resize grows or shrinks the volume to size bytes. Shrinking drops the data
// past the new end. IO in flight finishes first.
func (v *Volume) Resize(size uint64) error {
	if size == 0 || size%ondisk.SectorSize != 0 || size > maxVolumeSize {
		return fmt.Errorf("%w: volume size %d is not a positive multiple of 512", ErrInvalid, size)
	}
	v.io.Lock()
	defer v.io.Unlock()
	if v.closed {
		return ErrVolumeClosed
	}
	old := v.size.Load()
	if size == old {
		return nil
	}
	if v.backing != nil && int64(size) > v.backing.Size() {
		t, ok := v.backing.(interface{ Truncate(int64) error })
		if !ok || v.info.Backing != BackingFile {
			return fmt.Errorf("%w: backing store %s has %d bytes, cannot grow to %d",
				ErrNoSpace, v.info.BackingPath, v.backing.Size(), size)
		}
		if err := t.Truncate(int64(size)); err != nil {
			return fmt.Errorf("%w: grow backing file: %v", ErrNoSpace, err)
		}
	}
	if size < old {
		// A fill queued before the shrink must not land in the cut range:
		// moving the stripes' sequence numbers makes it give up.
		v.stripes.unlock(v.stripes.lock(size/ondisk.SectorSize, old/ondisk.SectorSize))
		// The cut range reads zeroes if the volume grows again, whatever the
		// backing store (a block device is not truncated).
		if v.backing != nil {
			v.backingDirty.Store(true)
			if err := zeroDevice(v.backing, int64(size), int64(old-size)); err != nil {
				return fmt.Errorf("%w: volume %q: zero the cut range of the backing store: %v", ErrIO, v.info.Name, err)
			}
			if err := v.syncBacking(); err != nil {
				return err
			}
		}
		if err := v.c.invalidateRange(v.id, size/ondisk.SectorSize, old/ondisk.SectorSize); err != nil {
			return err
		}
		if err := v.c.Commit(); err != nil {
			return err
		}
	}
	if err := v.c.updateRecord(v, func(r *ondisk.VolumeRecord) { r.SizeBytes = size }); err != nil {
		return err
	}
	v.size.Store(size)
	v.mu.Lock()
	v.info.Size = size
	v.mu.Unlock()
	if size < old && v.backing != nil && v.info.Backing == BackingFile {
		if t, ok := v.backing.(interface{ Truncate(int64) error }); ok {
			if err := t.Truncate(int64(size)); err != nil {
				v.c.logf("engine: shrink backing file of volume %d: %v", v.id, err)
			}
		}
	}
	return nil
}

// SetCacheMode switches the cache mode. Leaving Writeback first writes the dirty
// data back (it waits for that). Cache-only volumes stay in Writeback.
func (v *Volume) SetCacheMode(m CacheMode) error {
	if _, ok := cacheModeNames[m]; !ok {
		return fmt.Errorf("%w: cache mode %d", ErrInvalid, m)
	}
	if v.info.Backing == BackingNone {
		if m != Writeback {
			return fmt.Errorf("%w: a cache-only volume has no backing store to write to", ErrInvalid)
		}
		return nil
	}
	v.io.RLock()
	closed := v.closed
	v.io.RUnlock()
	if closed {
		return ErrVolumeClosed
	}
	old := CacheMode(v.mode.Swap(uint32(m)))
	if old == m {
		return nil
	}
	if err := v.c.updateRecord(v, func(r *ondisk.VolumeRecord) { r.CacheMode = uint8(m) }); err != nil {
		v.mode.Store(uint32(old))
		return err
	}
	v.mu.Lock()
	v.info.Mode = m
	v.mu.Unlock()
	if old == Writeback {
		return v.wb.drain()
	}
	return nil
}

// start starts the volume's background work.
func (v *Volume) start() { v.wb.start() }

// stop fails new IO, waits for IO in flight and stops the background work.
func (v *Volume) stop() {
	v.io.Lock()
	v.closed = true
	v.io.Unlock()
	v.wb.stop()
}

// restart undoes stop (a delete that failed).
func (v *Volume) restart() {
	v.io.Lock()
	v.closed = false
	v.io.Unlock()
	v.wb = newWriteback(v)
	v.wb.start()
}

// close stops the volume and closes its backing store (cache set close).
func (v *Volume) close() error {
	v.stop()
	if v.backing == nil {
		return nil
	}
	err := v.syncBacking()
	if cerr := v.backing.Close(); err == nil {
		err = cerr
	}
	return err
}
