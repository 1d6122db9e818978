package engine

import (
	"errors"
	"sync"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// nodeCache is the bounded in-memory cache of btree nodes (bcache: the mca_*
// functions of btree.c). A node struct lives on exactly one of three lists:
//
//	live      nodes with an identity (bucket, gen), also in hash; the head is the
//	          most recently allocated, so walking from the tail visits the oldest
//	          first (flushWrite and the reaper both do)
//	freeable  structs that kept their key memory for reuse, no identity
//	freed     structs without key memory, no identity
//
// Memory: live + freeable structs hold key memory; their number never exceeds
// budget. An allocation at the budget reuses a freeable struct, else cannibalizes a
// clean live node (reap), else writes a dirty one first; only one goroutine
// cannibalizes at a time (bcache: btree_cache_alloc_lock).
type nodeCache struct {
	mu sync.Mutex // the cache lock; guards the fields below and node list membership

	live     nodeList
	freeable nodeList
	freed    nodeList
	hash     map[uint32]*node // bucket -> live node
	budget   int              // max live + freeable
	peak     int              // high-water mark of live + freeable
	// root is never reaped. Written under mu (and CacheSet.treeMu).
	root *node
	// cannibalizing is true while one goroutine is stealing a node.
	cannibalizing bool
	cannibalWait  *sync.Cond // signalled when cannibalizing clears; uses mu

	stats nodeCacheStats
}

// nodeCacheStats are counters of the node cache, guarded by nodeCache.mu.
type nodeCacheStats struct {
	Reaped           uint64 // live nodes freed by the reaper or cannibalize
	ReapSkipFlush    uint64 // reap attempts skipped because journalFlush was set
	ReapSkipDirty    uint64 // reap attempts skipped because the node was dirty
	ReapSkipLocked   uint64 // reap attempts skipped because the node was in use
	Cannibalized     uint64 // allocations that stole a live node
	NodeFreeWaits    uint64 // nodeFree retries waiting for journalFlush to clear
	Allocs           uint64 // node structs handed out
	Reused           uint64 // allocations that reused a recycled struct
	MissReads        uint64 // nodes read from the device on a cache miss
	CannibalizeFails uint64 // allocations at the budget that found nothing to steal
}

// nodeList is an intrusive doubly linked list of nodes.
type nodeList struct {
	head, tail *node
	n          int
}

func (l *nodeList) pushFront(n *node) {
	n.prev, n.next = nil, l.head
	if l.head != nil {
		l.head.prev = n
	} else {
		l.tail = n
	}
	l.head = n
	l.n++
}

func (l *nodeList) remove(n *node) {
	if n.prev != nil {
		n.prev.next = n.next
	} else {
		l.head = n.next
	}
	if n.next != nil {
		n.next.prev = n.prev
	} else {
		l.tail = n.prev
	}
	n.prev, n.next = nil, nil
	l.n--
}

func (l *nodeList) popBack() *node {
	n := l.tail
	if n != nil {
		l.remove(n)
	}
	return n
}

// errNodeCacheFull is returned when an allocation at the budget finds no node it
// may steal (every live node is locked, dirty and being written, or flagged).
var errNodeCacheFull = errors.New("engine: btree node cache full")

func newNodeCache(budget int) *nodeCache {
	if budget < minNodeBudget {
		budget = minNodeBudget
	}
	nc := &nodeCache{hash: make(map[uint32]*node), budget: budget}
	nc.cannibalWait = sync.NewCond(&nc.mu)
	return nc
}

// minNodeBudget is the smallest node budget: a traversal holds one node at each
// level plus the nodes of a split in progress.
const minNodeBudget = 16

// memLocked is the number of structs holding key memory. Caller holds mu.
func (nc *nodeCache) memLocked() int { return nc.live.n + nc.freeable.n }

// findLocked returns the live node for ptr, or nil. Caller holds mu.
func (nc *nodeCache) findLocked(ptr bkey.Ptr) *node {
	n := nc.hash[ptr.Bucket]
	if n == nil || n.gen != ptr.Gen {
		return nil
	}
	return n
}

// reapLocked tries to take a live node away from the cache (bcache: mca_reap
// with flush=false). On success it returns true with n.lock held exclusive, the
// node removed from live and hash, and its identity cleared; the caller moves it
// to another list or reuses it. Caller holds mu.
//
// A node is not reaped when it is the root, in use (lock held), dirty, or selected
// by flushWrite (journalFlush set) — the last is the race fix: a node flushWrite
// chose must stay the node it chose until the flush is done.
func (c *CacheSet) reapLocked(n *node) bool {
	nc := c.nc
	if n == nc.root {
		return false
	}
	if !n.lock.TryLock() {
		nc.stats.ReapSkipLocked++
		return false
	}
	n.writeMu.Lock()
	flagged, dirty := n.journalFlush, n.dirty
	n.writeMu.Unlock()
	if flagged && c.journalFlushFix() {
		nc.stats.ReapSkipFlush++
		c.hookReapSkip(n)
		n.lock.Unlock()
		return false
	}
	if dirty {
		nc.stats.ReapSkipDirty++
		n.lock.Unlock()
		return false
	}
	nc.live.remove(n)
	delete(nc.hash, n.bucket)
	n.setState(stateFreeable)
	nc.stats.Reaped++
	c.hookReaped(n)
	return true
}

// shrink reaps nodes until live + freeable is at most target, oldest first, and
// frees the key memory of surplus freeable structs (bcache: bch_mca_scan). With
// flush, dirty nodes are written first and then reaped (bcache: mca_reap with
// flush, as cannibalize does); nodes selected by flushWrite are never written or
// reaped here. It returns the number of structs whose memory was released.
func (c *CacheSet) shrink(target int, flush bool) int {
	nc := c.nc
	nc.mu.Lock()
	defer nc.mu.Unlock()
	released := 0
	for nc.memLocked() > target && nc.freeable.n > 0 {
		n := nc.freeable.popBack()
		nc.releaseLocked(n)
		released++
	}
	// Clock sweep over the live list, oldest first: a node used since the last
	// sweep gets a second chance.
	for n, steps := nc.live.tail, nc.live.n*2; n != nil && steps > 0 && nc.memLocked() > target; steps-- {
		prev := n.prev
		if n.accessed.Swap(false) {
			nc.live.remove(n)
			nc.live.pushFront(n)
		} else {
			if flush && n != nc.root && n.lock.TryLock() {
				// Write outside the cache lock; holding n.lock keeps it ours.
				nc.mu.Unlock()
				err := c.writeDirty(n)
				nc.mu.Lock()
				// The list changed meanwhile: prev may have been reaped or freed.
				// n cannot have been (we held its lock), so it is still on the
				// live list; go on from its neighbour of now.
				prev = n.prev
				n.lock.Unlock()
				if err != nil {
					return released
				}
				if n.state != stateLive {
					n = nc.live.tail // the list changed under us; start over
					continue
				}
			}
			if c.reapLocked(n) {
				nc.releaseLocked(n)
				n.lock.Unlock()
				released++
			}
		}
		n = prev
		if n == nil {
			n = nc.live.tail
		}
	}
	return released
}

// releaseLocked drops a struct's key memory and puts it on the freed list.
// Caller holds mu; n is on no list.
func (nc *nodeCache) releaseLocked(n *node) {
	n.keys = nil
	n.children = nil
	n.setState(stateFreed)
	nc.freed.pushFront(n)
}

// mcaAlloc returns a node struct with the given identity, on the live list and in
// the hash, with n.lock held exclusive (bcache: mca_alloc). It prefers, in order:
// a freeable struct, a freed struct (or a new one) while under the budget, and
// finally cannibalizes a clean live node.
func (c *CacheSet) mcaAlloc(ptr bkey.Ptr, level uint8) (*node, error) {
	nc := c.nc
	nc.mu.Lock()
	defer nc.mu.Unlock()
	for {
		if nc.hash[ptr.Bucket] != nil {
			// Someone loaded (or is loading) it since the caller looked.
			return nil, errRetry
		}
		n := nc.freeable.popBack()
		if n == nil && nc.memLocked() < nc.budget {
			n = nc.freed.popBack()
			if n == nil {
				n = &node{}
			} else {
				nc.stats.Reused++
			}
		} else if n != nil {
			nc.stats.Reused++
		}
		if n == nil {
			var err error
			n, err = c.cannibalizeLocked()
			if err != nil {
				return nil, err
			}
			if n == nil {
				continue // mu was released while waiting; look again
			}
		}
		if !n.lock.TryLock() {
			// A struct on the free lists is never locked, except by a goroutine
			// that checked its identity a moment ago and is about to retry.
			n.lock.Lock()
		}
		c.assignLocked(n, ptr, level)
		if m := nc.memLocked(); m > nc.peak {
			nc.peak = m
		}
		nc.stats.Allocs++
		return n, nil
	}
}

// assignLocked gives n a new identity and puts it on the live list. Caller holds
// mu and n.lock exclusive.
func (c *CacheSet) assignLocked(n *node, ptr bkey.Ptr, level uint8) {
	nc := c.nc
	n.min, n.max = bkey.Pos{}, bkey.MaxPos
	if level == 0 {
		if n.keys == nil {
			n.keys = &bkey.Set{}
		} else {
			n.keys.Reset()
		}
		n.children = nil
	} else {
		n.keys = nil
		n.children = n.children[:0]
	}
	n.writeMu.Lock()
	n.bucket, n.gen, n.level = ptr.Bucket, ptr.Gen, level
	n.epoch++
	n.state = stateLive
	n.nodeSeq, n.nbsets, n.logBytes = 0, 0, 0
	n.dirty, n.unwritten, n.pin, n.journalSeq, n.journalFlush = false, n.unwritten[:0], 0, 0, false
	n.writeMu.Unlock()
	n.accessed.Store(true)
	nc.live.pushFront(n)
	nc.hash[ptr.Bucket] = n
	c.hookAssigned(n)
}

// cannibalizeLocked steals the oldest clean live node for a new allocation. If
// another goroutine is cannibalizing, it waits for it and returns (nil, nil) so the
// caller looks at the free lists again. Caller holds mu (released while waiting).
func (c *CacheSet) cannibalizeLocked() (*node, error) {
	nc := c.nc
	if nc.cannibalizing {
		nc.cannibalWait.Wait()
		return nil, nil
	}
	for n := nc.live.tail; n != nil; n = n.prev {
		if c.reapLocked(n) {
			nc.stats.Cannibalized++
			n.lock.Unlock() // alloc locks it again
			return n, nil
		}
	}
	// Nothing clean: write the oldest dirty node that is not in use, then reap it.
	// The write happens outside mu (device IO); cannibalizing keeps others out.
	nc.cannibalizing = true
	defer func() {
		nc.cannibalizing = false
		nc.cannibalWait.Broadcast()
	}()
	for n := nc.live.tail; n != nil; n = n.prev {
		if n == nc.root || !n.lock.TryLock() {
			continue
		}
		nc.mu.Unlock()
		err := c.writeDirty(n)
		nc.mu.Lock()
		if err != nil {
			n.lock.Unlock()
			return nil, err
		}
		n.lock.Unlock()
		if n.state == stateLive && c.reapLocked(n) {
			nc.stats.Cannibalized++
			n.lock.Unlock()
			return n, nil
		}
		// Someone dirtied or used it meanwhile; the list may have changed.
		break
	}
	nc.stats.CannibalizeFails++
	return nil, errNodeCacheFull
}

// touch marks n recently used.
func (n *node) touch() { n.accessed.Store(true) }
