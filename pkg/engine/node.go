package engine

import (
	"sync"
	"sync/atomic"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// nodeState is where a node struct is in its life cycle. Node structs are recycled
// (bcache: btree_cache, btree_cache_freeable, btree_cache_freed) instead of being
// left to the garbage collector, because the journal-flush race this package is
// built around is a race on reuse.
type nodeState uint8

const (
	// stateFreed: the struct holds no keys and no identity; on nodeCache.freed.
	stateFreed nodeState = iota
	// stateFreeable: the struct keeps its key memory for reuse but has no identity;
	// on nodeCache.freeable.
	stateFreeable
	// stateLive: the struct is the in-memory copy of the btree node in bucket
	// `bucket` with generation `gen`; on nodeCache.live and in nodeCache.hash.
	stateLive
)

func (s nodeState) String() string {
	switch s {
	case stateFreed:
		return "freed"
	case stateFreeable:
		return "freeable"
	case stateLive:
		return "live"
	}
	return "?"
}

// node is one btree node in memory (bcache: struct btree).
//
// Locks (see the lock order on CacheSet):
//   - lock (bcache: b->lock) is the btree lock. Readers of the node's keys hold it
//     shared; inserters and structural changes hold it exclusive. The reaper takes
//     it with TryLock, so a node someone holds can never be reaped. The identity
//     fields change only with lock held exclusive AND the cache lock held, so
//     holding either one keeps them stable.
//   - writeMu (bcache: b->write_lock) serializes node writes and guards the write
//     state. journalFlush (flushWrite's selection flag) is also guarded by it;
//     selection sets it while holding the cache lock too.
type node struct {
	lock sync.RWMutex

	// Identity. Written with lock (exclusive), nodeCache.mu and writeMu held, so
	// holding any one of them keeps it stable (flushWrite re-checks it under
	// writeMu alone).
	bucket uint32
	gen    uint32
	level  uint8
	epoch  uint64 // bumped every time the struct gets a new identity
	state  nodeState
	min    bkey.Pos // smallest position the node covers
	max    bkey.Pos // first position after the node (exclusive)

	// Contents. Guarded by lock.
	keys     *bkey.Set  // leaf nodes: extents
	children []bkey.Key // interior nodes: key.EndPos() is the child's max, key.Ptr the child

	// Membership of nodeCache.live (most recently allocated or used at the head).
	// Guarded by nodeCache.mu.
	prev, next *node

	accessed atomic.Bool // set on use, cleared by the reaper's clock sweep

	writeMu sync.Mutex // guards the fields below
	// dirty is set when keys were added that are not in the node's on-disk log.
	dirty bool
	// unwritten are the keys added since the last write, in insertion order
	// (whiteouts included); the next write appends them as one bset.
	unwritten []bkey.Key
	// pin is the journal entry this dirty node holds a pin on (0: none): the
	// oldest entry whose keys are among unwritten.
	pin uint64
	// journalSeq is the newest journal entry whose keys are in the node.
	journalSeq uint64
	// The node's log on the device: random per incarnation, written into every bset;
	// bsets and bytes written so far.
	nodeSeq  uint64
	nbsets   uint32
	logBytes int
	// journalFlush is set by flushWrite on the nodes it selected, under the cache
	// lock, and cleared after the flush. The reaper skips flagged nodes; nodeFree
	// waits for the flag to clear.
	journalFlush bool
}

// isLeaf reports whether the node holds extents.
func (n *node) isLeaf() bool { return n.level == 0 }

// nkeys is the number of keys in the node. Caller holds lock.
func (n *node) nkeys() int {
	if n.isLeaf() {
		return n.keys.Len()
	}
	return len(n.children)
}

// ptr is the pointer a parent holds to this node. Caller holds lock or the cache lock.
func (n *node) ptr() bkey.Ptr { return bkey.Ptr{Bucket: n.bucket, Gen: n.gen} }

// childIndex returns the index of the child covering pos. Caller holds lock.
func (n *node) childIndex(pos bkey.Pos) int {
	lo, hi := 0, len(n.children)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if pos.Less(n.children[m].EndPos()) {
			hi = m
		} else {
			lo = m + 1
		}
	}
	return lo
}

// setState changes the node's life-cycle state. Caller holds lock (exclusive) and
// nodeCache.mu; writeMu is taken here so flushWrite can read the state under it.
func (n *node) setState(s nodeState) {
	n.writeMu.Lock()
	n.state = s
	n.writeMu.Unlock()
}
