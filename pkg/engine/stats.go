package engine

import (
	"errors"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// displaced is called by the insert path, under the leaf's lock, for each part
// of an existing key an insert overwrites: the bucket loses those sectors and the
// volume its dirty data.
func (c *CacheSet) displaced(k bkey.Key) {
	if k.Whiteout() {
		return
	}
	if k.Ptr.Bucket < c.layout.NBuckets {
		d := 0
		if k.Dirty() {
			d = int(k.Len)
		}
		if err := c.alloc.AddSectorsGen(k.Ptr.Bucket, k.Ptr.Gen, -int(k.Len), -d); err != nil &&
			!errors.Is(err, alloc.ErrStale) && !errors.Is(err, alloc.ErrBadBucket) {
			c.setErr(err)
		}
	}
	if k.Dirty() {
		if v := c.vols.lookupID(k.Vol); v != nil {
			v.dirty.Add(-int64(k.Len))
		}
	}
}

// Stats describes the cache set.
func (c *CacheSet) Stats() SetStats {
	a := c.alloc.Stats()
	used, total := c.jnl.Fill()
	bs := uint64(c.sb.BucketSize)
	s := SetStats{
		CacheBytes:    uint64(a.Buckets) * bs,
		FreeBytes:     uint64(a.Free+a.Data-a.Dirty) * bs,
		DirtyBytes:    uint64(a.DirtySectors) * sectorSize,
		MetadataBytes: uint64(a.Btree+a.Meta) * bs,
		BucketSize:    c.sb.BucketSize,
		Buckets:       uint64(a.Buckets),
		BtreeNodes:    uint64(a.Btree),

		FlushWriteRuns:  c.stats.flushWriteRuns.Load(),
		FlushWriteNodes: c.stats.flushWriteNodes.Load(),
		GCRuns:          c.stats.gcRuns.Load(),
		GCBucketsFreed:  c.stats.gcFreed.Load(),
		WritebackBytes:  c.stats.writebackBytes.Load(),
		Splits:          c.stats.splits.Load(),
		Compactions:     c.stats.compactions.Load(),
		RootChanges:     c.stats.rootChanges.Load(),
	}
	if total > 0 {
		s.JournalFill = float64(used) / float64(total)
	}
	c.nc.mu.Lock()
	s.NodeCacheNodes = c.nc.live.n + c.nc.freeable.n
	s.NodeCachePeak = c.nc.peak
	s.ReaperSkips = c.nc.stats.ReapSkipFlush
	s.NodeFreeWaits = c.nc.stats.NodeFreeWaits
	c.nc.mu.Unlock()
	s.NodeCacheBytes = uint64(s.NodeCacheNodes) * bs
	if r := c.rootPtr.Load(); r != nil {
		s.BtreeDepth = int(r.level) + 1
	}
	m := c.vols.byID.Load()
	if m != nil {
		for _, v := range *m {
			vs := v.Stats()
			s.Volumes++
			s.Hits += vs.Hits
			s.Misses += vs.Misses
			s.Bypassed += vs.Bypassed
			s.CacheIOErrors += vs.CacheIOErrors
			s.BackingIOErrors += vs.BackingIOErrors
		}
	}
	return s
}
