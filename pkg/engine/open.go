package engine

import (
	"fmt"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/journal"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// Open opens the cache set on dev: it reads the better superblock, the bucket
// generations, replays the journal onto the btree, recomputes bucket usage from the
// btree and starts the background goroutines. The cache set owns dev afterwards
// (Close closes it).
func Open(dev device.Device, cfg Config) (*CacheSet, error) {
	cfg.withDefaults(dev.Size())
	c := &CacheSet{
		cfg:    cfg,
		dev:    device.NewCounting(dev),
		knobs:  cfg.knobs,
		nc:     newNodeCache(cfg.NodeCacheNodes),
		closed: make(chan struct{}),
		wake:   make(chan struct{}, 1),
		fills:  make(chan fillReq, fillQueueLen),
		gcKick: make(chan struct{}, 1),
	}
	if err := c.open(); err != nil {
		c.shutdown()
		return nil, err
	}
	c.bgDone.Add(4)
	go c.background()
	go c.gcLoop()
	go c.filler()
	go c.filler()
	c.vols.mu.Lock()
	for _, v := range c.vols.byName {
		v.start()
	}
	c.vols.mu.Unlock()
	return c, nil
}

// isClosed reports whether Close has begun.
func (c *CacheSet) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
	}
	return c.closing.Load()
}

func (c *CacheSet) open() error {
	// A process that crashed on this boot may have left writes the device has
	// not made durable: nodes and data that what we read next builds on. Sync
	// them before this process writes anything that depends on them (its
	// device counter starts at "nothing written since the last sync").
	if err := c.dev.Sync(); err != nil {
		return fmt.Errorf("engine: sync the cache device: %w", err)
	}
	a, b := make([]byte, ondisk.BlockSize), make([]byte, ondisk.BlockSize)
	if _, err := c.dev.ReadAt(a, ondisk.SuperblockOffset(ondisk.CopyA)); err != nil {
		return fmt.Errorf("engine: read superblock: %w", err)
	}
	if _, err := c.dev.ReadAt(b, ondisk.SuperblockOffset(ondisk.CopyB)); err != nil {
		return fmt.Errorf("engine: read superblock: %w", err)
	}
	sb, picked, err := ondisk.PickSuperblock(a, b)
	if err != nil {
		return err
	}
	if picked.OtherErr != nil && c.cfg.Logf != nil {
		c.cfg.Logf("engine: superblock copy %s is bad (%v); using copy %s", picked.Copy.Other(), picked.OtherErr, picked.Copy)
	}
	if sb.DeviceSize > c.dev.Size() {
		return ondisk.Corruptf("superblock", ondisk.SuperblockOffset(picked.Copy),
			"formatted for %d bytes, device has %d", sb.DeviceSize, c.dev.Size())
	}
	c.sb = sb
	if c.layout, err = sb.Layout(); err != nil {
		return err
	}
	if c.gens, err = loadGens(c.dev, c.layout, sb.SetMagic); err != nil {
		return err
	}
	var policy alloc.Policy
	switch c.cfg.Policy {
	case "", "lru":
	case "slru":
		if policy, err = alloc.NewSLRU(c.layout.NBuckets, alloc.SLRUConfig{PromoteHits: 2}); err != nil {
			return fmt.Errorf("engine: %w", err)
		}
	default:
		return fmt.Errorf("%w: unknown replacement policy %q (want lru or slru)", ErrInvalid, c.cfg.Policy)
	}
	if c.noEviction() {
		policy = noEvictionPolicy{alloc.NewLRU(c.layout.NBuckets)}
	}
	c.alloc, err = alloc.New(alloc.Config{
		Policy:        policy,
		NBuckets:      c.layout.NBuckets,
		BucketSectors: int(sb.BucketSize / ondisk.SectorSize),
		Gens:          c.gens.snapshot(),
		Store:         c.gens,
		ReserveBtree:  8,
		Logf:          c.cfg.Logf,
	})
	if err != nil {
		return fmt.Errorf("engine: %w", err)
	}
	j, replay, err := journal.Open(journal.Config{
		Device:       c.dev,
		Offset:       c.layout.JournalOffset,
		Size:         c.layout.JournalSize,
		SetMagic:     sb.SetMagic,
		Flush:        func(uint64) { c.flushWrite() },
		Root:         c.journalRoot,
		NeedPreflush: c.dev.WritesSinceSync,
		NextVolumeID: c.vols.nextID.Load,
		Delay:        c.cfg.JournalDelay,
		BootID:       journal.BootID(c.cfg.BootID),
	})
	if err != nil {
		return err
	}
	if replay.Dropped > 0 {
		c.logf("engine: journal: dropped %d entries written without a flush before the machine rebooted (writes never flushed, lost with the power)", replay.Dropped)
	}
	c.jnl = j
	if replay.Root == (journal.Root{}) && len(replay.Entries) == 0 && replay.NextVolumeID == 0 {
		// A journal with no entry at all: Format always writes one.
		return ondisk.Corruptf("journal", c.layout.JournalOffset, "no journal entry names a btree root")
	}
	rootPtr := bkey.Ptr{Bucket: replay.Root.Bucket, Gen: replay.Root.Gen}
	if rootPtr.Bucket >= c.layout.NBuckets {
		return ondisk.Corruptf("journal", c.layout.JournalOffset, "root in bucket %d of %d", rootPtr.Bucket, c.layout.NBuckets)
	}
	if err := c.loadRoot(rootPtr, replay.Root.Level); err != nil {
		return err
	}
	if err := c.markBuckets(replay); err != nil {
		return err
	}
	c.alloc.Start()
	c.jnl.Start()
	if err := c.replay(replay); err != nil {
		return err
	}
	if err := c.loadVolumes(replay.NextVolumeID); err != nil {
		return err
	}
	if err := c.purgeDeleted(); err != nil {
		return err
	}
	c.accounting.Store(true)
	// Exact bucket usage and per-volume dirty data, from the replayed tree.
	return c.gc(true)
}

// journalRoot is the journal's Root hook.
func (c *CacheSet) journalRoot() journal.Root {
	r := c.rootPtr.Load()
	if r == nil {
		return journal.Root{}
	}
	return journal.Root{Bucket: r.ptr.Bucket, Gen: r.ptr.Gen, Level: r.level}
}

// loadRoot reads the root node and makes it the root.
func (c *CacheSet) loadRoot(ptr bkey.Ptr, level uint8) error {
	c.treeMu.Lock()
	defer c.treeMu.Unlock()
	n, err := c.mcaAlloc(ptr, level)
	if err != nil {
		return err
	}
	if err := c.readNodeLocked(n); err != nil {
		c.dropNode(n)
		return fmt.Errorf("engine: btree root: %w", err)
	}
	c.setRoot(n)
	n.lock.Unlock()
	return nil
}

// markBuckets walks the whole btree and tells the allocator which buckets hold
// btree nodes and how much live and dirty data every data bucket holds (bcache's
// initial GC mark). Pointers whose gen is stale are ignored.
//
// The keys of the journal entries to replay count too: they point into buckets
// that must not be reused before the replay re-inserts them. That overcounts
// what they overwrite; the GC pass at the end of open corrects it.
func (c *CacheSet) markBuckets(replay *journal.Replay) error {
	type usage struct{ live, dirty int }
	data := map[uint32]*usage{}
	var nodes []uint32
	count := func(k bkey.Key) {
		if k.Whiteout() || k.Ptr.Bucket >= c.layout.NBuckets || c.alloc.Gen(k.Ptr.Bucket) != k.Ptr.Gen {
			return
		}
		u := data[k.Ptr.Bucket]
		if u == nil {
			u = &usage{}
			data[k.Ptr.Bucket] = u
		}
		u.live += int(k.Len)
		if k.Dirty() {
			u.dirty += int(k.Len)
		}
	}
	err := c.walk(func(n *node) error {
		nodes = append(nodes, n.bucket)
		if !n.isLeaf() {
			return nil
		}
		for i := 0; i < n.keys.Len(); i++ {
			count(n.keys.At(i))
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, e := range replay.Entries {
		for _, k := range e.Keys {
			count(k)
		}
	}
	isNode := map[uint32]bool{}
	for _, b := range nodes {
		if isNode[b] {
			return ondisk.Corruptf("btree", -1, "bucket %d holds two btree nodes", b)
		}
		isNode[b] = true
		if err := c.alloc.Load(b, alloc.KindBtree, 0, 0); err != nil {
			return fmt.Errorf("engine: mark btree bucket: %w", err)
		}
	}
	max := int(c.sb.BucketSize / ondisk.SectorSize)
	for b, u := range data {
		if isNode[b] {
			return ondisk.Corruptf("btree", -1, "data key points into btree node bucket %d", b)
		}
		if err := c.alloc.Load(b, alloc.KindData, min(u.live, max), min(u.dirty, max)); err != nil {
			return fmt.Errorf("engine: mark data bucket: %w", err)
		}
	}
	return nil
}

// walk calls fn for every node of the tree, parents before children. It holds
// treeMu shared; fn runs with the node locked shared.
func (c *CacheSet) walk(fn func(n *node) error) error {
	c.treeMu.RLock()
	defer c.treeMu.RUnlock()
	var visit func(ptr bkey.Ptr, level uint8) error
	visit = func(ptr bkey.Ptr, level uint8) error {
		n, err := c.getNode(ptr, level, false)
		if err != nil {
			return err
		}
		err = fn(n)
		var kids []bkey.Key
		if err == nil && !n.isLeaf() {
			kids = append(kids, n.children...)
		}
		n.lock.RUnlock()
		if err != nil {
			return err
		}
		for _, k := range kids {
			if err := visit(k.Ptr, level-1); err != nil {
				return err
			}
		}
		return nil
	}
	r := c.rootPtr.Load()
	return visit(r.ptr, r.level)
}

// replay re-inserts the keys of the journal entries that were not yet written to
// btree nodes, in order, and drops the references Open gave it.
func (c *CacheSet) replay(r *journal.Replay) error {
	for _, e := range r.Entries {
		for _, k := range e.Keys {
			// A key whose bucket was invalidated since is dead (see readCached),
			// but it still overwrote what was there before it: replay it as a
			// whiteout, so that an older key the nodes may hold does not come
			// back.
			if !k.Whiteout() && c.alloc.IsStale(k.Ptr.Bucket, k.Ptr.Gen) {
				k.Flags, k.Ptr = bkey.FlagWhiteout, bkey.Ptr{}
			}
			if _, err := c.insert(k, e.Seq, false, nil); err != nil {
				return fmt.Errorf("engine: replay journal entry %d: %w", e.Seq, err)
			}
		}
		if err := c.jnl.Unpin(e.Seq); err != nil {
			return fmt.Errorf("engine: replay journal entry %d: %w", e.Seq, err)
		}
	}
	return nil
}

// background is the cache set's housekeeping goroutine: it retires replaced
// roots once the journal names the new one, and runs the reaper.
func (c *CacheSet) background() {
	defer c.bgDone.Done()
	t := time.NewTicker(c.cfg.ReaperInterval)
	defer t.Stop()
	for {
		select {
		case <-c.closed:
			return
		case <-c.wake:
		case <-t.C:
		}
		c.retireRoots()
		c.shrink(c.nc.budget*3/4, false)
	}
}

// kick wakes the background goroutine.
func (c *CacheSet) kick() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// retireRoots frees replaced roots, and buckets of nodes the old root could
// reach, once a journal entry naming the new root is durable.
func (c *CacheSet) retireRoots() {
	c.retireMu.Lock()
	pending := c.retiring
	c.retiring = nil
	c.retireMu.Unlock()
	for i, r := range pending {
		if err := c.jnl.Commit(r.seq); err != nil {
			c.setErr(err)
			c.retireMu.Lock()
			c.retiring = append(c.retiring, pending[i:]...)
			c.retireMu.Unlock()
			return
		}
		c.nodeFree(r.n)
	}
	c.drainFreeing()
}

// Close writes every dirty node, commits the journal and closes the device.
func (c *CacheSet) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.closing.Store(true)
		c.vols.mu.Lock()
		for _, v := range c.vols.byName {
			if cerr := v.close(); cerr != nil && err == nil {
				err = cerr
			}
		}
		c.vols.mu.Unlock()
		c.closeWritePoint(&c.wpClean)
		c.closeWritePoint(&c.wpDirty)
		if ferr := c.flushAll(); err == nil {
			err = ferr
		}
		c.retireRoots()
		close(c.closed)
		c.bgDone.Wait()
		// One last jset records that no entry is needed any more, so the next
		// open replays nothing (replay would redo fills and writeback
		// completions that followed a replayable key).
		if err == nil && c.err() == nil {
			if cerr := c.jnl.Commit(c.jnl.Seq()); cerr != nil {
				err = cerr
			}
		}
		if cerr := c.shutdown(); err == nil {
			err = cerr
		}
	})
	return err
}

// shutdown stops the journal and allocator and closes the device.
func (c *CacheSet) shutdown() error {
	var errs []error
	if c.jnl != nil {
		errs = append(errs, c.jnl.Close())
	}
	if c.alloc != nil {
		errs = append(errs, c.alloc.Close())
	}
	errs = append(errs, c.dev.Close())
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}

// flushAll commits the journal and writes every dirty node.
func (c *CacheSet) flushAll() error {
	if err := c.jnl.Flush(); err != nil {
		return err
	}
	c.nc.mu.Lock()
	var dirty []*node
	for n := c.nc.live.tail; n != nil; n = n.prev {
		dirty = append(dirty, n)
	}
	c.nc.mu.Unlock()
	var pins []uint64
	for _, n := range dirty {
		n.writeMu.Lock()
		if n.state == stateLive && !n.journalFlush {
			pin, err := c.writeNodeLocked(n)
			if err != nil {
				n.writeMu.Unlock()
				return err
			}
			if pin != 0 {
				pins = append(pins, pin)
			}
		}
		n.writeMu.Unlock()
	}
	c.unpinAfterSync(pins)
	return c.err()
}

// noEvictionPolicy names no victims (a test knob).
type noEvictionPolicy struct{ *alloc.LRU }

func (noEvictionPolicy) Victims(int, func(uint32) bool) []uint32 { return nil }
