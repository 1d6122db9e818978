package engine

import (
	"errors"
	"fmt"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// errRetry is returned internally when a lookup raced with a reuse and must start
// again.
var errRetry = errors.New("engine: retry")

// getNode returns the node ptr points to at the given level, locked shared or
// exclusive, reading it from the device on a cache miss. Caller holds treeMu.
//
// The struct found in the hash may be reaped and reused between the lookup and
// the lock; after locking, the identity is checked and the lookup retried. (This is
// the check bcache's traversal has and its btree_flush_write lacked.)
func (c *CacheSet) getNode(ptr bkey.Ptr, level uint8, write bool) (*node, error) {
	nc := c.nc
	for wait := time.Duration(0); ; {
		nc.mu.Lock()
		n := nc.findLocked(ptr)
		nc.mu.Unlock()
		if n != nil {
			lockNode(n, write)
			if n.state == stateLive && n.bucket == ptr.Bucket && n.gen == ptr.Gen {
				if n.level != level {
					unlockNode(n, write)
					return nil, fmt.Errorf("engine: node in bucket %d has level %d, parent expects %d: %w",
						ptr.Bucket, n.level, level, errCorruptTree)
				}
				n.touch()
				return n, nil
			}
			unlockNode(n, write)
			continue
		}
		n, err := c.mcaAlloc(ptr, level)
		switch {
		case errors.Is(err, errRetry):
			continue
		case errors.Is(err, errNodeCacheFull):
			// Every cached node is in use or being written right now; those
			// holders finish without needing a new node, so wait a little.
			if wait > c.cfg.NodeCacheWait {
				return nil, err
			}
			wait += time.Millisecond
			time.Sleep(time.Millisecond)
			continue
		case err != nil:
			return nil, err
		}
		c.nc.mu.Lock()
		c.nc.stats.MissReads++
		c.nc.mu.Unlock()
		if err := c.readNodeLocked(n); err != nil {
			c.dropNode(n)
			return nil, err
		}
		if write {
			return n, nil
		}
		n.lock.Unlock() // lock again shared, checking identity as usual
	}
}

func lockNode(n *node, write bool) {
	if write {
		n.lock.Lock()
	} else {
		n.lock.RLock()
	}
}

func unlockNode(n *node, write bool) {
	if write {
		n.lock.Unlock()
	} else {
		n.lock.RUnlock()
	}
}

// dropNode removes a node that failed to load from the cache. Caller holds
// n.lock exclusive; it is released.
func (c *CacheSet) dropNode(n *node) {
	nc := c.nc
	nc.mu.Lock()
	if n.state == stateLive {
		nc.live.remove(n)
		delete(nc.hash, n.bucket)
	}
	n.setState(stateFreeable)
	nc.freeable.pushFront(n)
	nc.mu.Unlock()
	n.lock.Unlock()
}

// findLeaf descends from the root to the leaf covering pos and returns it locked
// (exclusive if write). Caller holds treeMu shared or exclusive.
func (c *CacheSet) findLeaf(pos bkey.Pos, write bool) (*node, error) {
	n := c.root
	lockNode(n, write && n.isLeaf())
	for !n.isLeaf() {
		if len(n.children) == 0 {
			unlockNode(n, false)
			return nil, fmt.Errorf("engine: interior node in bucket %d has no children: %w", n.bucket, errCorruptTree)
		}
		i := n.childIndex(pos)
		if i == len(n.children) {
			i--
		}
		child, level := n.children[i].Ptr, n.level-1
		unlockNode(n, false)
		var err error
		if n, err = c.getNode(child, level, write && level == 0); err != nil {
			return nil, err
		}
	}
	return n, nil
}

// lookup returns the keys overlapping [start, end) of volume vol, in order. Keys
// are returned whole (not clipped to the range).
func (c *CacheSet) lookup(vol, start, end uint64) ([]bkey.Key, error) {
	var out []bkey.Key
	c.treeMu.RLock()
	defer c.treeMu.RUnlock()
	pos := bkey.Pos{Vol: vol, LBA: start}
	for {
		leaf, err := c.findLeaf(pos, false)
		if err != nil {
			return nil, err
		}
		leaf.keys.Lookup(vol, pos.LBA, end, func(k bkey.Key) bool {
			out = append(out, k)
			return true
		})
		max := leaf.max
		leaf.lock.RUnlock()
		if max.Vol != vol || max.LBA >= end {
			return out, nil
		}
		pos = max
	}
}

// needRewrite tells an inserter the leaf has no room for extra more keys: it
// must be compacted or split first, under the exclusive tree lock.
type needRewrite struct{ extra int }

func (e *needRewrite) Error() string {
	return fmt.Sprintf("engine: node needs rewrite for %d keys", e.extra)
}

// errCorruptTree marks structural inconsistencies found while walking the tree.
var errCorruptTree = errors.New("engine: corrupt btree")

// insert adds k to the btree. seq is the journal entry k was added to (the caller
// holds a journal reference on it for the duration of the call); 0 means the key
// is not journaled. If expect is non-nil or fill is true, the insert is a
// compare-and-swap (see bkey.Set.ReplaceIf): fills only take gaps, and expect
// replaces only the sectors that still hold it. It returns the sectors inserted.
func (c *CacheSet) insert(k bkey.Key, seq uint64, cas bool, expect *bkey.Key) (uint64, error) {
	var total uint64
	if k.Whiteout() {
		defer c.mergeAfterDelete(k)
	}
	for k.Len > 0 {
		_, rest, n, err := c.insertPart(k, seq, cas, expect)
		var nr *needRewrite
		if errors.As(err, &nr) {
			if err := c.rewriteAt(k.StartPos(), nr.extra); err != nil {
				return total, err
			}
			continue
		}
		if err != nil {
			return total, err
		}
		total += n
		k = rest
	}
	return total, nil
}

// insertPart inserts the part of k that falls in one leaf and returns that part
// and the rest of k.
func (c *CacheSet) insertPart(k bkey.Key, seq uint64, cas bool, expect *bkey.Key) (part, rest bkey.Key, inserted uint64, err error) {
	c.treeMu.RLock()
	defer c.treeMu.RUnlock()
	leaf, err := c.findLeaf(k.StartPos(), true)
	if err != nil {
		return k, bkey.Key{}, 0, err
	}
	defer leaf.lock.Unlock()
	part, rest = splitKeyAt(k, leaf.max)

	// A plain insert adds at most 2 keys (it may split one); a compare-and-swap
	// may fragment every key in its range and logs the range's result. So a
	// compare-and-swap takes at most as many of the leaf's keys as a rewritten
	// node always has room for, and leaves the rest of its range to the next
	// part: otherwise no rewrite could ever make room. (ReplaceIf works sector
	// by sector, so the parts add up to the whole.)
	extra := 3
	if cas {
		limit := max((c.maxNodeKeys()/2-4)/2, 1)
		inRange := 0
		leaf.keys.Lookup(part.Vol, part.Start, part.End(), func(x bkey.Key) bool {
			if inRange == limit {
				part, rest = splitKeyAt(k, x.StartPos())
				return false
			}
			inRange++
			return true
		})
		extra = 2*inRange + 4
	}
	leaf.writeMu.Lock()
	defer leaf.writeMu.Unlock()
	if !c.leafFitsLocked(leaf, extra) {
		return k, bkey.Key{}, 0, &needRewrite{extra: extra}
	}
	if cas {
		inserted = leaf.keys.ReplaceIf(part, expect)
		if inserted == 0 {
			return part, rest, 0, nil
		}
		// Log the resulting state of the range: a whiteout, then what is there now.
		wo := part
		wo.Flags, wo.Ptr = bkey.FlagWhiteout, bkey.Ptr{}
		leaf.unwritten = append(leaf.unwritten, wo)
		leaf.keys.Lookup(part.Vol, part.Start, part.End(), func(x bkey.Key) bool {
			leaf.unwritten = append(leaf.unwritten, clipKey(x, part.Start, part.End()))
			return true
		})
	} else {
		if c.accounting.Load() {
			leaf.keys.Lookup(part.Vol, part.Start, part.End(), func(x bkey.Key) bool {
				c.displaced(clipKey(x, part.Start, part.End()))
				return true
			})
		}
		leaf.keys.Insert(part)
		leaf.unwritten = append(leaf.unwritten, part)
		inserted = uint64(part.Len)
	}
	leaf.dirty = true
	if seq != 0 {
		switch {
		case leaf.pin == 0:
			if err := c.jnl.Pin(seq); err != nil {
				c.setErr(err)
				return part, rest, inserted, err
			}
			leaf.pin = seq
		case seq < leaf.pin:
			if err := c.jnl.Pin(seq); err != nil {
				c.setErr(err)
				return part, rest, inserted, err
			}
			c.unpin(leaf.pin)
			leaf.pin = seq
		}
		if seq > leaf.journalSeq {
			leaf.journalSeq = seq
		}
	}
	return part, rest, inserted, nil
}

// splitKeyAt splits k at position at: part is what lies before at, rest the
// remainder (Len 0 when k lies entirely before at).
func splitKeyAt(k bkey.Key, at bkey.Pos) (part, rest bkey.Key) {
	if at.Vol != k.Vol || at.LBA >= k.End() || at.LBA <= k.Start {
		return k, bkey.Key{}
	}
	n := at.LBA - k.Start
	part = k
	part.Len = uint32(n)
	return part, advanceKey(k, n)
}

// advanceKey drops the first n sectors of k; the pointer follows the data.
func advanceKey(k bkey.Key, n uint64) bkey.Key {
	k.Start += n
	k.Len -= uint32(n)
	if !k.Whiteout() {
		k.Ptr.Offset += uint32(n)
	}
	return k
}

// clipKey returns the part of k inside [start, end).
func clipKey(k bkey.Key, start, end uint64) bkey.Key {
	if k.Start < start {
		k = advanceKey(k, start-k.Start)
	}
	if k.End() > end {
		k.Len = uint32(end - k.Start)
	}
	return k
}

// childKey is the key an interior node holds for a child covering up to max.
func childKey(max bkey.Pos, ptr bkey.Ptr) bkey.Key {
	return bkey.Key{Vol: max.Vol, Start: max.LBA, Ptr: ptr}
}

// InsertKeys journals keys in one journal entry and inserts them into the btree
// in order (a write's metadata update). The keys are durable after Commit; the
// caller orders overlapping inserts (the volume layer holds a range lock from
// here until the insert returns).
func (c *CacheSet) InsertKeys(keys []bkey.Key) error {
	_, err := c.insertKeys(keys)
	return err
}

// insertKeys is InsertKeys returning the journal entry that holds the keys
// (Commit it to make them durable).
func (c *CacheSet) insertKeys(keys []bkey.Key) (uint64, error) {
	if err := c.err(); err != nil {
		return 0, err
	}
	seq, err := c.jnl.Add(keys)
	if err != nil {
		return 0, fmt.Errorf("engine: journal: %w", err)
	}
	defer c.unpin(seq)
	for _, k := range keys {
		if _, err := c.insert(k, seq, false, nil); err != nil {
			return 0, err
		}
	}
	return seq, nil
}

// ReplaceKey inserts k by compare-and-swap without journaling it (a cache fill or a
// writeback completion; losing it in a crash is harmless). With expect == nil it
// fills only the gaps of k's range; otherwise it replaces only the sectors that
// still hold expect. It returns the sectors inserted.
func (c *CacheSet) ReplaceKey(k bkey.Key, expect *bkey.Key) (uint64, error) {
	if err := c.err(); err != nil {
		return 0, err
	}
	return c.insert(k, 0, true, expect)
}

// Lookup returns the keys overlapping [start, end) of volume vol, in order.
func (c *CacheSet) Lookup(vol, start, end uint64) ([]bkey.Key, error) {
	return c.lookup(vol, start, end)
}

// Commit makes every key inserted so far durable.
func (c *CacheSet) Commit() error {
	if err := c.jnl.Flush(); err != nil {
		return fmt.Errorf("engine: commit: %w", err)
	}
	return c.err()
}
