package engine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// errCacheFull: no data bucket is free right now. The data path bypasses the
// cache (or, for a cache-only volume, fails with ErrNoSpace).
var errCacheFull = errors.New("engine: cache full")

// writePoint is an open data bucket that writes are appended to (bcache's
// open_bucket). Data is never written in place: every write, fill and writeback
// lands in the current bucket of a write point. Dirty and clean data go to
// different write points, so that clean buckets stay evictable.
type writePoint struct {
	mu   sync.Mutex // guards the fields up to used
	open bool
	b    uint32
	gen  uint32
	used uint32 // sectors handed out

	// The dirty write point's limit check (see dirtyFull): whether dirty data
	// filled the cache when the allocator was last asked, and when (on
	// monotonicNow's clock; 0: never). Atomics, read without mu.
	full   atomic.Bool
	fullAt atomic.Int64
}

// extent is a reserved piece of a write point's bucket.
type extent struct {
	ptr bkey.Ptr
	n   uint32 // sectors
}

// reserveAlign keeps every reservation 4 KiB aligned on the device.
const reserveAlign = 8

// reserve hands out n sectors of cache space as one or more extents, each
// pinning its bucket open until release. errCacheFull when the allocator has no
// bucket (nothing is reserved then).
func (c *CacheSet) reserve(wp *writePoint, n uint64) ([]extent, error) {
	bucketSectors := c.sb.BucketSize / ondisk.SectorSize
	var out []extent
	wp.mu.Lock()
	defer wp.mu.Unlock()
	for n > 0 {
		if !wp.open || wp.used >= bucketSectors {
			if wp.open {
				c.releaseData(wp.b)
				wp.open = false
			}
			b, gen, err := c.allocData()
			if err != nil {
				c.releaseExtents(out)
				if errors.Is(err, alloc.ErrNoBuckets) {
					c.stats.cacheFull.Add(1)
					c.kickGC()
					return nil, errCacheFull
				}
				return nil, fmt.Errorf("engine: allocate data bucket: %w", err)
			}
			wp.open, wp.b, wp.gen, wp.used = true, b, gen, 0
		}
		take := uint32(min(n, uint64(bucketSectors-wp.used)))
		if err := c.alloc.Open(wp.b); err != nil {
			c.releaseExtents(out)
			return nil, fmt.Errorf("engine: open data bucket: %w", err)
		}
		out = append(out, extent{ptr: bkey.Ptr{Bucket: wp.b, Offset: wp.used, Gen: wp.gen}, n: take})
		wp.used += (take + reserveAlign - 1) / reserveAlign * reserveAlign
		n -= uint64(take)
	}
	return out, nil
}

// closeWritePoint releases a write point's bucket (cache set close).
func (c *CacheSet) closeWritePoint(wp *writePoint) {
	wp.mu.Lock()
	defer wp.mu.Unlock()
	if wp.open {
		c.releaseData(wp.b)
		wp.open = false
	}
}

// releaseExtents drops the pins reserve took.
func (c *CacheSet) releaseExtents(exts []extent) {
	for _, e := range exts {
		c.releaseData(e.ptr.Bucket)
	}
}

// releaseData drops one open pin of a data bucket. While GC runs the release
// waits for it: GC must see every bucket that took new keys during its walk as
// open (see gc).
func (c *CacheSet) releaseData(b uint32) {
	c.gcMu.Lock()
	if c.gcRunning {
		c.gcDeferred = append(c.gcDeferred, b)
		c.gcMu.Unlock()
		return
	}
	c.gcMu.Unlock()
	if err := c.alloc.Release(b); err != nil {
		c.setErr(err)
	}
}

// dataOffset is the device offset of sector off of pointer p.
func (c *CacheSet) dataOffset(p bkey.Ptr, sectors uint64) int64 {
	return c.layout.BucketOffset(p.Bucket) + int64(uint64(p.Offset)+sectors)*ondisk.SectorSize
}

// allocWait bounds how long a data allocation waits for the allocator goroutine
// to refill the free lists when it can (dead or clean buckets to invalidate).
const allocWait = 200 * time.Millisecond

// allocData allocates a data bucket. It waits a little while the allocator can
// still refill (it is invalidating, or clean buckets are left to evict); when
// every bucket holds dirty data or metadata it fails at once with
// alloc.ErrNoBuckets: the caller bypasses the cache rather than waits.
func (c *CacheSet) allocData() (uint32, uint32, error) {
	deadline := time.Now().Add(allocWait)
	for {
		b, gen, err := c.alloc.Alloc(alloc.ReserveNone, alloc.KindData, false)
		if !errors.Is(err, alloc.ErrNoBuckets) || time.Now().After(deadline) {
			return b, gen, err
		}
		st := c.alloc.Stats()
		if st.Pending == 0 && st.Data-st.Dirty-st.Open <= 0 {
			return b, gen, err
		}
		time.Sleep(200 * time.Microsecond)
	}
}
