package engine

import (
	"errors"
	"fmt"
	"time"
	"unsafe"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// The data path of a volume.
//
// Read: look the range up in the btree. A key is a hit: read the cache device,
// then check the pointer's generation again; if the bucket was invalidated under
// the read, the data may be someone else's and the lookup is retried (a clean
// key then counts as a miss). A gap is a miss: read the backing store (zeroes for
// a cache-only volume) and, if the mode caches reads and the policy promotes it,
// hand a copy to a filler goroutine, which writes it to the cache and inserts it
// by compare-and-swap under the stripe check (see stripes). A dirty key is never
// bypassed: a cache read error on dirty data is an IO error, on clean data the
// backing store serves it.
//
// Write, under the stripe locks of the range:
//   - writeback: append to the dirty write point, journal and insert dirty keys;
//   - writethrough: write the backing store, then the cache, journal and insert
//     clean keys;
//   - writearound, none, and any write over the sequential cutoff or when the
//     cache is full: write the backing store and journal a whiteout over cached
//     keys of the range, if any.
//
// Durability: a write is durable after Flush (journal committed, cache device and
// backing store synced) or, with FUA, when it returns. Every write returns only
// once its journal entry is written (not synced): a crash of the process, unlike
// power loss, loses no acknowledged write.

const sectorSize = ondisk.SectorSize

// checkIO validates an IO of n bytes at off against the volume size.
func (v *Volume) checkIO(off, n int64) error {
	if off < 0 || n < 0 || off%sectorSize != 0 || n%sectorSize != 0 {
		return fmt.Errorf("%w: io at %d+%d is not 512-byte aligned", ErrInvalid, off, n)
	}
	if uint64(off)+uint64(n) > v.size.Load() {
		return fmt.Errorf("%w: io at %d+%d beyond the volume size %d", ErrInvalid, off, n, v.size.Load())
	}
	return nil
}

// begin takes the volume's IO lock; the caller ends with v.io.RUnlock.
func (v *Volume) begin() error {
	v.io.RLock()
	if v.closed {
		v.io.RUnlock()
		return ErrVolumeClosed
	}
	if p := v.health.Load(); p != nil && v.backing == nil && v.info.Backing != BackingNone {
		err := *p
		v.io.RUnlock()
		return err
	}
	if err := v.c.err(); err != nil {
		v.io.RUnlock()
		return err
	}
	return nil
}

const fillMax = 1 << 20

func isAligned(p []byte) bool {
	return len(p) == 0 || uintptr(unsafe.Pointer(unsafe.SliceData(p)))%sectorSize == 0
}

// devRead reads p from the cache device at off, through an aligned buffer if p
// is not aligned.
func (c *CacheSet) devRead(p []byte, off int64) error {
	if isAligned(p) {
		_, err := c.dev.ReadAt(p, off)
		return err
	}
	return withAligned(len(p), func(b []byte) error {
		if _, err := c.dev.ReadAt(b, off); err != nil {
			return err
		}
		copy(p, b)
		return nil
	})
}

func (c *CacheSet) devWrite(p []byte, off int64) error {
	if isAligned(p) {
		_, err := c.dev.WriteAt(p, off)
		return err
	}
	return withAligned(len(p), func(b []byte) error {
		copy(b, p)
		_, err := c.dev.WriteAt(b, off)
		return err
	})
}

func withAligned(n int, fn func(b []byte) error) error {
	if n <= fillMax {
		b := getAligned(n)
		defer putAligned(b)
		return fn(b)
	}
	return fn(device.AlignedBuffer(n))
}

// ReadAt fills p from offset off.
func (v *Volume) ReadAt(p []byte, off int64) error {
	if err := v.checkIO(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.begin(); err != nil {
		return err
	}
	defer v.io.RUnlock()
	if len(p) == 0 {
		return nil
	}
	v.stats.readOps.Add(1)
	v.stats.readBytes.Add(uint64(len(p)))
	start := uint64(off) / sectorSize
	end := start + uint64(len(p))/sectorSize
	mode := CacheMode(v.mode.Load())
	bypass := v.overCutoff(start, end) || mode == NoCache
	// Even with the cache off, the lookup is needed: leaving writeback mode
	// leaves dirty data in the cache until writeback drained it.
	return v.readCached(p, start, end, bypass)
}

// overCutoff feeds sectors [start, end) to the sequential cutoff and reports
// whether they continue a stream longer than it. A volume without a cutoff
// skips the detector (and its lock).
func (v *Volume) overCutoff(start, end uint64) bool {
	cutoff := v.info.SeqCutoff // fixed at creation
	if cutoff == NoSeqCutoff {
		return false
	}
	return v.seq.observe(start, end-start) > cutoff
}

// gap is a range of sectors [start, end) not in the cache.
type gap struct{ start, end uint64 }

func (v *Volume) readCached(p []byte, start, end uint64, bypass bool) error {
	c := v.c
	for attempt := 0; ; attempt++ {
		// The fill check: sequence numbers before the lookup and the backing read.
		seq := v.stripes.seqSum(start, end)
		keys, err := c.lookup(v.id, start, end)
		if err != nil {
			return fmt.Errorf("%w: volume %q: btree lookup: %v", ErrIO, v.info.Name, err)
		}
		var gapBuf [4]gap // most reads have few gaps: no allocation
		gaps := gapBuf[:0]
		var hits uint64
		pos, retry := start, false
		for _, k := range keys {
			k = clipKey(k, start, end)
			if k.Start > pos {
				gaps = append(gaps, gap{pos, k.Start})
			}
			pos = k.End()
			buf := p[(k.Start-start)*sectorSize : (k.End()-start)*sectorSize]
			// A stale pointer is dead, dirty or not: a bucket with dirty data is
			// never invalidated, so the data was overwritten (a new lookup finds
			// the newer key) or written back and cleaned (the journal may still
			// replay the dirty key after a crash; the backing store has it).
			if c.alloc.IsStale(k.Ptr.Bucket, k.Ptr.Gen) {
				if k.Dirty() && attempt == 0 {
					retry = true
					continue
				}
				gaps = append(gaps, gap{k.Start, k.End()})
				continue
			}
			if err := c.devRead(buf, c.dataOffset(k.Ptr, 0)); err != nil {
				v.stats.cacheErrors.Add(1)
				if k.Dirty() || v.backing == nil {
					return fmt.Errorf("%w: volume %q: cache read of dirty data at sector %d: %v", ErrIO, v.info.Name, k.Start, err)
				}
				c.logf("engine: volume %q: cache read error at sector %d, reading the backing store: %v", v.info.Name, k.Start, err)
				gaps = append(gaps, gap{k.Start, k.End()})
				continue
			}
			// The bucket may have been invalidated and rewritten under the read.
			if c.alloc.IsStale(k.Ptr.Bucket, k.Ptr.Gen) {
				if k.Dirty() && attempt == 0 {
					retry = true
					continue
				}
				gaps = append(gaps, gap{k.Start, k.End()})
				continue
			}
			hits += uint64(k.Len)
			c.alloc.Touch(k.Ptr.Bucket)
		}
		if pos < end {
			gaps = append(gaps, gap{pos, end})
		}
		if retry {
			continue
		}
		v.stats.hits.Add(hits)
		for _, g := range mergeGaps(gaps) {
			buf := p[(g.start-start)*sectorSize : (g.end-start)*sectorSize]
			if err := v.readBacking(buf, g.start); err != nil {
				return err
			}
			v.stats.misses.Add(g.end - g.start)
			if bypass || v.backing == nil {
				if bypass {
					v.stats.bypassed.Add(g.end - g.start)
				}
				continue
			}
			v.fill(buf, g.start, start, end, seq)
		}
		return nil
	}
}

// mergeGaps sorts nothing (gaps come in order) and joins adjacent gaps.
func mergeGaps(gs []gap) []gap {
	if len(gs) < 2 {
		return gs
	}
	out := gs[:1]
	for _, g := range gs[1:] {
		if last := &out[len(out)-1]; last.end == g.start {
			last.end = g.end
		} else {
			out = append(out, g)
		}
	}
	return out
}

// readBacking reads sectors from the backing store (zeroes for a cache-only
// volume: sectors it never wrote).
func (v *Volume) readBacking(p []byte, start uint64) error {
	if v.backing == nil {
		if v.info.Backing != BackingNone {
			return v.Health()
		}
		clear(p)
		return nil
	}
	if _, err := v.backing.ReadAt(p, int64(start*sectorSize)); err != nil {
		v.stats.backingErrors.Add(1)
		return fmt.Errorf("%w: volume %q: backing read at sector %d: %v", ErrIO, v.info.Name, start, err)
	}
	return nil
}

// writeBacking writes sectors to the backing store.
func (v *Volume) writeBacking(p []byte, start uint64) error {
	if v.backing == nil {
		return v.Health()
	}
	v.backingDirty.Store(true)
	if _, err := v.backing.WriteAt(p, int64(start*sectorSize)); err != nil {
		v.stats.backingErrors.Add(1)
		return fmt.Errorf("%w: volume %q: backing write at sector %d: %v", ErrIO, v.info.Name, start, err)
	}
	return nil
}

// syncBacking makes the backing store's writes durable.
func (v *Volume) syncBacking() error {
	if v.backing == nil || !v.backingDirty.Load() {
		return nil
	}
	v.backingSync.Lock()
	defer v.backingSync.Unlock()
	if !v.backingDirty.Swap(false) {
		return nil
	}
	if err := v.backing.Sync(); err != nil {
		v.backingDirty.Store(true)
		v.stats.backingErrors.Add(1)
		return fmt.Errorf("%w: volume %q: sync backing store: %v", ErrIO, v.info.Name, err)
	}
	return nil
}

// WriteAt writes p at off; with fua it is durable when WriteAt returns.
func (v *Volume) WriteAt(p []byte, off int64, fua bool) error {
	if err := v.checkIO(off, int64(len(p))); err != nil {
		return err
	}
	if err := v.begin(); err != nil {
		return err
	}
	defer v.io.RUnlock()
	if len(p) == 0 {
		return nil
	}
	v.stats.writeOps.Add(1)
	v.stats.writeBytes.Add(uint64(len(p)))
	start := uint64(off) / sectorSize
	end := start + uint64(len(p))/sectorSize
	mode := CacheMode(v.mode.Load())
	bypass := v.overCutoff(start, end)

	locked := v.stripes.lock(start, end)
	defer v.stripes.unlock(locked)

	var seq uint64
	var err error
	wroteBacking := false
	switch {
	case v.info.Backing == BackingNone:
		seq, err = v.writeCache(p, start, true)
		if errors.Is(err, errCacheFull) {
			return fmt.Errorf("%w: cache-only volume %q: the cache is full", ErrNoSpace, v.info.Name)
		}
	case mode == Writeback && !bypass && !v.c.dirtyFull():
		seq, err = v.writeCache(p, start, true)
		if errors.Is(err, errCacheFull) {
			v.stats.bypassed.Add(end - start)
			seq, err = v.writeAround(p, start, end)
			wroteBacking = true
		}
	case mode == Writethrough && !bypass:
		if err = v.writeBacking(p, start); err != nil {
			return err
		}
		wroteBacking = true
		// A clean key over dirty data (left by writeback mode) has the same
		// ordering need as a whiteout: see invalidateCached.
		if err = v.syncIfHidesDirty(start, end); err != nil {
			return err
		}
		seq, err = v.writeCache(p, start, false)
		if errors.Is(err, errCacheFull) {
			v.stats.bypassed.Add(end - start)
			seq, err = v.invalidateCached(start, end)
		}
	default:
		v.stats.bypassed.Add(end - start)
		seq, err = v.writeAround(p, start, end)
		wroteBacking = true
	}
	if err != nil {
		return err
	}
	if fua {
		return v.makeDurable(seq, wroteBacking)
	}
	return v.c.ackWritten(seq)
}

// ackWritten waits until journal entry seq (0: none) is written to the cache
// device, unsynced: an acknowledged write then survives a crash of the process
// (the kernel keeps a mounted NBD device across a plugin restart, and the
// filesystem on it counts on every acknowledged write), while power loss still
// needs FLUSH or FUA.
func (c *CacheSet) ackWritten(seq uint64) error {
	if seq == 0 {
		return nil
	}
	if err := c.jnl.WaitWritten(seq); err != nil {
		return fmt.Errorf("%w: journal write: %v", ErrIO, err)
	}
	return nil
}

// makeDurable syncs the backing store (if written) and commits journal entry seq
// (if any).
func (v *Volume) makeDurable(seq uint64, backing bool) error {
	if backing {
		if err := v.syncBacking(); err != nil {
			return err
		}
	}
	if seq != 0 {
		if err := v.c.jnl.Commit(seq); err != nil {
			return fmt.Errorf("%w: journal commit: %v", ErrIO, err)
		}
	}
	return v.c.err()
}

// writeAround writes the backing store and drops cached keys of the range.
func (v *Volume) writeAround(p []byte, start, end uint64) (uint64, error) {
	if err := v.writeBacking(p, start); err != nil {
		return 0, err
	}
	return v.invalidateCached(start, end)
}

// invalidateCached journals a whiteout over [start, end) if anything of it is
// cached, and returns its journal entry (0 if none was needed).
//
// The caller has just written the range's new content to the backing store.
// If the whiteout hides dirty data, the backing store is synced first: a
// whiteout that reached the cache device before the backing write reached the
// backing store would, after a power loss, uncover whatever the backing store
// held before the dirty data was written, content that was never durable or
// was overwritten since.
func (v *Volume) invalidateCached(start, end uint64) (uint64, error) {
	keys, err := v.c.lookup(v.id, start, end)
	if err != nil {
		return 0, fmt.Errorf("%w: btree lookup: %v", ErrIO, err)
	}
	if len(keys) == 0 {
		return 0, nil
	}
	if err := v.syncBeforeHiding(keys); err != nil {
		return 0, err
	}
	seq, err := v.c.insertKeys([]bkey.Key{{Vol: v.id, Start: start, Len: uint32(end - start), Flags: bkey.FlagWhiteout}})
	if err != nil {
		return 0, fmt.Errorf("%w: invalidate cached data: %v", ErrIO, err)
	}
	return seq, nil
}

// syncBeforeHiding syncs the backing store if any of keys, which a new key is
// about to hide, holds dirty data.
func (v *Volume) syncBeforeHiding(keys []bkey.Key) error {
	if v.c.skipHiddenDirtySync() {
		return nil
	}
	for _, k := range keys {
		if k.Dirty() {
			return v.syncBacking()
		}
	}
	return nil
}

// syncIfHidesDirty syncs the backing store if [start, end) holds dirty cached
// data. The volume's dirty count makes it free when there is none.
func (v *Volume) syncIfHidesDirty(start, end uint64) error {
	if v.dirty.Load() <= 0 {
		return nil
	}
	keys, err := v.c.lookup(v.id, start, end)
	if err != nil {
		return fmt.Errorf("%w: btree lookup: %v", ErrIO, err)
	}
	return v.syncBeforeHiding(keys)
}

// writeCache appends p to a write point and journals and inserts its keys.
// errCacheFull if no bucket is free (nothing was written).
func (v *Volume) writeCache(p []byte, start uint64, dirty bool) (uint64, error) {
	c := v.c
	wp := &c.wpClean
	if dirty {
		wp = &c.wpDirty
	}
	exts, err := c.reserve(wp, uint64(len(p))/sectorSize)
	if err != nil {
		return 0, err
	}
	defer c.releaseExtents(exts)
	keys := make([]bkey.Key, 0, len(exts))
	pos := start
	for _, e := range exts {
		buf := p[(pos-start)*sectorSize : (pos-start+uint64(e.n))*sectorSize]
		if err := c.devWrite(buf, c.dataOffset(e.ptr, 0)); err != nil {
			v.stats.cacheErrors.Add(1)
			c.setErr(err)
			return 0, fmt.Errorf("%w: cache write: %v", ErrIO, err)
		}
		if err := c.alloc.MarkData(e.ptr.Bucket, int(e.n), dirty); err != nil {
			return 0, fmt.Errorf("%w: %v", ErrIO, err)
		}
		k := bkey.Key{Vol: v.id, Start: pos, Len: e.n, Ptr: e.ptr}
		if dirty {
			k.Flags = bkey.FlagDirty
		}
		keys = append(keys, k)
		pos += uint64(e.n)
	}
	var seq uint64
	for len(keys) > 0 {
		n := min(len(keys), 64)
		if seq, err = c.insertKeys(keys[:n]); err != nil {
			return 0, fmt.Errorf("%w: %v", ErrIO, err)
		}
		if dirty {
			for _, k := range keys[:n] {
				v.dirty.Add(int64(k.Len))
			}
		}
		keys = keys[n:]
	}
	return seq, nil
}

// Flush makes every write that returned before the call durable.
func (v *Volume) Flush() error {
	if err := v.begin(); err != nil {
		return err
	}
	defer v.io.RUnlock()
	if err := v.syncBacking(); err != nil {
		return err
	}
	if err := v.c.Commit(); err != nil {
		return fmt.Errorf("%w: %v", ErrIO, err)
	}
	return nil
}

// Trim discards a range: it reads back as zeroes.
func (v *Volume) Trim(off, length int64) error { return v.zero(off, length, false, true) }

// WriteZeroes makes a range read back as zeroes; with fua durably.
func (v *Volume) WriteZeroes(off, length int64, fua bool) error {
	return v.zero(off, length, fua, false)
}

func (v *Volume) zero(off, length int64, fua, trim bool) error {
	if err := v.checkIO(off, length); err != nil {
		return err
	}
	if err := v.begin(); err != nil {
		return err
	}
	defer v.io.RUnlock()
	if length == 0 {
		return nil
	}
	v.stats.writeOps.Add(1)
	start := uint64(off) / sectorSize
	end := start + uint64(length)/sectorSize
	locked := v.stripes.lock(start, end)
	defer v.stripes.unlock(locked)
	if v.backing != nil {
		v.backingDirty.Store(true)
		if err := zeroDevice(v.backing, off, length); err != nil {
			v.stats.backingErrors.Add(1)
			return fmt.Errorf("%w: volume %q: zero backing store: %v", ErrIO, v.info.Name, err)
		}
	} else if v.info.Backing != BackingNone {
		return v.Health()
	}
	seq, err := v.invalidateCached(start, end)
	if err != nil {
		return err
	}
	if fua {
		return v.makeDurable(seq, v.backing != nil)
	}
	return v.c.ackWritten(seq)
}

// zeroDevice makes [off, off+n) of dev read as zeroes: a discard (punched hole)
// if the device can, else written zeroes (zeroRange, as Format does).
func zeroDevice(dev device.Device, off, n int64) error {
	if d, ok := dev.(device.Discarder); ok {
		if err := d.Discard(off, n); err == nil {
			return nil
		}
	}
	return zeroRange(dev, off, n)
}

// dirtyFull reports whether dirty data fills so much of the cache that new
// writes must bypass it, leaving room for clean data, btree nodes and the
// writeback of what is dirty (whose btree updates need nodes too).
//
// Every writeback-mode write asks, so the answer is the allocator's count of
// dirty buckets as it was at most dirtyFullRecheck ago: one allocator lock per
// interval rather than per write. Writes in the meantime can overshoot the
// limit by what they write in that time, a fraction of a bucket at any rate
// this path reaches; a write that finds no bucket at all bypasses anyway.
func (c *CacheSet) dirtyFull() bool {
	wp := &c.wpDirty
	now := monotonicNow()
	if at := wp.fullAt.Load(); at != 0 && now-at < int64(dirtyFullRecheck) {
		return wp.full.Load()
	}
	st := c.alloc.Stats()
	full := st.Dirty+st.Btree+st.Meta >= st.Buckets*dirtyMaxPercent/100
	wp.full.Store(full)
	wp.fullAt.Store(now)
	return full
}

const (
	// dirtyMaxPercent caps the buckets holding dirty data and metadata, which
	// cannot be evicted.
	dirtyMaxPercent = 75
	// dirtyFullRecheck is how long dirtyFull trusts its last answer.
	dirtyFullRecheck = time.Millisecond
)

// monotonicStart anchors monotonicNow.
var monotonicStart = time.Now()

// monotonicNow is nanoseconds on the monotonic clock since the package was
// initialized (never 0 in practice).
func monotonicNow() int64 { return int64(time.Since(monotonicStart)) + 1 }
