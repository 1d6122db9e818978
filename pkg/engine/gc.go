package engine

import (
	"errors"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// Garbage collection (bcache's btree_gc, minus moving GC): walk the btree and
// recompute every data bucket's live and dirty sectors from the keys that still
// point into it; a closed data bucket no key references is freed. The insert
// path keeps the counts close (an overwrite subtracts what it displaced), so GC
// mostly frees buckets emptied by overwrites, trims and deletes, and corrects the
// overcounts a crash leaves (open counts the journal's keys as well as the
// tree's).
//
// Buckets that take new keys during the walk are open (only write points' buckets
// get new keys), and no data bucket is released while GC runs (releaseData
// defers), so GC skips every bucket open at its end and never frees a bucket a
// key it did not see points into. Pointers whose generation changed during the
// walk are skipped too.

// GC runs one garbage collection pass now.
func (c *CacheSet) GC() error { return c.gc(false) }

func (c *CacheSet) gc(initial bool) error {
	c.gcPass.Lock()
	defer c.gcPass.Unlock()
	if err := c.err(); err != nil {
		return err
	}
	nb := c.layout.NBuckets
	gens := make([]uint32, nb)
	for b := range nb {
		gens[b] = c.alloc.Gen(b)
	}
	c.gcMu.Lock()
	c.gcRunning = true
	c.gcMu.Unlock()
	defer func() {
		c.gcMu.Lock()
		c.gcRunning = false
		deferred := c.gcDeferred
		c.gcDeferred = nil
		c.gcMu.Unlock()
		for _, b := range deferred {
			if err := c.alloc.Release(b); err != nil {
				c.setErr(err)
			}
		}
	}()

	type usage struct{ live, dirty int }
	use := make(map[uint32]*usage)
	volDirty := map[uint64]int64{}
	orphans := map[uint64]bool{}
	err := c.walk(func(n *node) error {
		if !n.isLeaf() {
			return nil
		}
		for i := 0; i < n.keys.Len(); i++ {
			k := n.keys.At(i)
			if initial && c.vols.lookupID(k.Vol) == nil {
				orphans[k.Vol] = true
			}
			if k.Ptr.Bucket >= nb || c.alloc.Gen(k.Ptr.Bucket) != k.Ptr.Gen {
				continue
			}
			u := use[k.Ptr.Bucket]
			if u == nil {
				u = &usage{}
				use[k.Ptr.Bucket] = u
			}
			u.live += int(k.Len)
			if k.Dirty() {
				u.dirty += int(k.Len)
				volDirty[k.Vol] += int64(k.Len)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// A bucket no key points into now may still be named by a key that a power
	// loss would bring back: one overwritten by a key whose journal entry is not
	// durable yet. Commit what the walk saw before freeing anything.
	if err := c.jnl.Flush(); err != nil {
		return err
	}
	maxSectors := int(c.sb.BucketSize / sectorSize)
	freed := 0
	for b := range nb {
		u := c.alloc.Usage(b)
		if !u.InUse || u.Kind != alloc.KindData || u.Open || c.alloc.Gen(b) != gens[b] {
			continue
		}
		x := use[b]
		var err error
		if x == nil || x.live == 0 {
			if err = c.alloc.FreeGen(b, gens[b]); err == nil {
				freed++
			}
		} else {
			err = c.alloc.SetUsageGen(b, gens[b], min(x.live, maxSectors), min(x.dirty, maxSectors))
		}
		if err != nil && !errors.Is(err, alloc.ErrStale) {
			return err
		}
	}
	if initial {
		for id, n := range volDirty {
			if v := c.vols.lookupID(id); v != nil {
				v.dirty.Store(n)
			}
		}
		// Keys of a volume the table does not know are left alone (a delete
		// purges its keys before it drops the record), but reported.
		for id := range orphans {
			c.logf("engine: the btree holds keys of volume %d, which the volume table does not list", id)
		}
	}
	c.stats.gcRuns.Add(1)
	c.stats.gcFreed.Add(uint64(freed))
	c.alloc.Kick()
	return nil
}

// kickGC asks the GC goroutine for a pass soon (the data path found the cache
// full).
func (c *CacheSet) kickGC() {
	select {
	case c.gcKick <- struct{}{}:
	default:
	}
}

// gcLoop runs GC every GCInterval and when kicked, at most once a second.
func (c *CacheSet) gcLoop() {
	defer c.bgDone.Done()
	t := time.NewTicker(c.cfg.GCInterval)
	defer t.Stop()
	last := time.Time{}
	for {
		select {
		case <-c.closed:
			return
		case <-t.C:
		case <-c.gcKick:
			if time.Since(last) < time.Second {
				if !sleepOrStop(c.closed, time.Second-time.Since(last)) {
					return
				}
			}
		}
		last = time.Now()
		if err := c.gc(false); err != nil && !errors.Is(err, ErrClosed) {
			c.logf("engine: gc: %v", err)
		}
	}
}

// scanDirty returns up to max dirty keys of volume vol from sector from on, in
// order, and the sector to continue from.
func (c *CacheSet) scanDirty(vol, from uint64, max int) ([]bkey.Key, uint64, error) {
	var out []bkey.Key
	c.treeMu.RLock()
	defer c.treeMu.RUnlock()
	pos := bkey.Pos{Vol: vol, LBA: from}
	next := from
	for {
		leaf, err := c.findLeaf(pos, false)
		if err != nil {
			return nil, 0, err
		}
		full := false
		leaf.keys.Lookup(vol, pos.LBA, ^uint64(0)>>1, func(k bkey.Key) bool {
			if k.Dirty() {
				out = append(out, k)
				next = k.End()
				if len(out) >= max {
					full = true
					return false
				}
			}
			return true
		})
		lmax := leaf.max
		leaf.lock.RUnlock()
		if full {
			return out, next, nil
		}
		if lmax.Vol != vol {
			return out, 0, nil
		}
		pos, next = lmax, lmax.LBA
	}
}
