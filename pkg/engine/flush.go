package engine

import (
	"runtime"
	"time"
)

// flushWriteMax is the most nodes one flushWrite selects (bcache: BTREE_FLUSH_NR).
const flushWriteMax = 8

// flushSelection is one node flushWrite chose, with what it knew at selection.
type flushSelection struct {
	n      *node
	epoch  uint64 // identity of the struct at selection
	bucket uint32
	seq    uint64 // the journal entry it pinned
}

// flushWrite writes dirty btree nodes that pin the oldest journal entry, so that
// the entry can be reclaimed (bcache: btree_flush_write). The journal calls it when
// it is full. One flusher runs at a time; a concurrent call returns at once.
//
// Selection and flush are two steps. Between them the reaper could reap a selected
// node and hand its struct to another btree node, or nodeFree could free it. The
// journalFlush flag, set at selection under the cache lock and cleared after the
// flush, closes that window: the reaper skips flagged nodes and nodeFree waits for
// the flag to clear. The flush step re-checks, under the node's write lock, that
// the node is still dirty and still pins that entry.
func (c *CacheSet) flushWrite() {
	if !c.flushing.CompareAndSwap(false, true) {
		return
	}
	defer c.flushing.Store(false)

	oldest, pins, ok := c.jnl.OldestPinned()
	if !ok || pins <= 0 {
		return
	}
	c.stats.flushWriteRuns.Add(1)

	sel := c.flushSelect(oldest)
	c.hookAfterSelect(sel)

	var toUnpin []uint64
	for _, s := range sel {
		n := s.n
		n.writeMu.Lock()
		if n.epoch != s.epoch || n.state != stateLive || n.bucket != s.bucket {
			// The struct is no longer the node we selected: it was reaped and
			// reused, or freed. Writing it would write the wrong node. With the
			// journalFlush fix this cannot happen; count it and leave the node be.
			c.stats.flushWrongNode.Add(1)
			c.hookWrongNode(s, n)
			n.writeMu.Unlock()
			continue
		}
		switch {
		case !n.dirty:
			c.stats.flushCleanedByOthers.Add(1)
		case n.pin != s.seq:
			c.stats.flushWrittenByOthers.Add(1)
		default:
			pin, err := c.writeNodeLocked(n)
			if err != nil {
				c.setErr(err)
			} else if pin != 0 {
				toUnpin = append(toUnpin, pin)
			}
			c.stats.flushWriteNodes.Add(1)
		}
		n.journalFlush = false
		n.writeMu.Unlock()
	}
	c.unpinAfterSync(toUnpin)
}

// flushSelect walks the live nodes oldest first and flags the dirty ones that pin
// the oldest journal entry. It stops when it has as many as that entry's pin count,
// when the oldest entry changes, or at flushWriteMax. The root is on the live list,
// so it is reachable by this walk.
func (c *CacheSet) flushSelect(oldest uint64) []flushSelection {
	nc := c.nc
	nc.mu.Lock()
	defer nc.mu.Unlock()
	var sel []flushSelection
	for n := nc.live.tail; n != nil; n = n.prev {
		now, pins, ok := c.jnl.OldestPinned()
		if !ok || now != oldest || int64(len(sel)) >= pins {
			break
		}
		n.writeMu.Lock()
		if n.dirty && n.pin == oldest && !n.journalFlush {
			if c.journalFlushFix() {
				n.journalFlush = true
			}
			sel = append(sel, flushSelection{n: n, epoch: n.epoch, bucket: n.bucket, seq: oldest})
		}
		n.writeMu.Unlock()
		if len(sel) == flushWriteMax {
			break
		}
	}
	return sel
}

// unpinAfterSync makes the node writes durable with one device sync and then
// releases the journal pins they held. A failed sync keeps the pins: the journal
// still holds those keys, and the error is sticky.
func (c *CacheSet) unpinAfterSync(pins []uint64) {
	if len(pins) == 0 {
		return
	}
	if err := c.dev.Sync(); err != nil {
		c.setErr(err)
		return
	}
	for _, p := range pins {
		c.unpin(p)
	}
}

// writeDirty writes n if it is dirty and not selected by flushWrite, syncs, and
// releases its pin. Caller holds n.lock.
func (c *CacheSet) writeDirty(n *node) error {
	n.writeMu.Lock()
	if !n.dirty || n.journalFlush {
		n.writeMu.Unlock()
		return nil
	}
	pin, err := c.writeNodeLocked(n)
	n.writeMu.Unlock()
	if err != nil {
		return err
	}
	if pin != 0 {
		c.unpinAfterSync([]uint64{pin})
	}
	return c.err()
}

// nodeFree frees a node that is no longer part of the tree (bcache:
// btree_node_free): after a split or rewrite replaced it, or on an error path
// such as a failed split. Caller holds n.lock exclusive; it is released.
//
// Unlike the reaper, nodeFree cannot skip a node flushWrite selected: it waits,
// retrying, until the flusher cleared journalFlush, so that the flusher never
// writes a node that was freed (and whose bucket may already hold something else).
// A dirty node's unwritten keys are dropped with its pin: the caller made sure
// they are durable elsewhere (the replacement nodes) or were never acknowledged.
func (c *CacheSet) nodeFree(n *node) {
	for attempt := 0; ; attempt++ {
		n.writeMu.Lock()
		if !n.journalFlush || !c.journalFlushFix() {
			break
		}
		n.writeMu.Unlock()
		c.nc.mu.Lock()
		c.nc.stats.NodeFreeWaits++
		c.nc.mu.Unlock()
		c.hookNodeFreeRetry(n, attempt)
		if attempt < 100 {
			runtime.Gosched()
		} else {
			time.Sleep(50 * time.Microsecond)
		}
	}
	var pin uint64
	if n.dirty {
		pin = n.pin
		n.dirty, n.pin, n.unwritten = false, 0, n.unwritten[:0]
	}
	n.writeMu.Unlock()
	if pin != 0 {
		c.unpin(pin)
	}

	nc := c.nc
	nc.mu.Lock()
	bucket := n.bucket
	if n.state == stateLive {
		nc.live.remove(n)
		delete(nc.hash, n.bucket)
	}
	n.setState(stateFreeable)
	nc.freeable.pushFront(n)
	// Under the cache lock (Allocator.mu and retireMu are leaves here): a
	// btree bucket is always in the tree, cached, held back (freeing) or free,
	// which Check verifies.
	c.freeNodeBucket(bucket)
	nc.mu.Unlock()
	n.lock.Unlock()
}

// unpin drops a node's journal pin. A failure is a bookkeeping bug: the journal
// counts it and Check reports it; the engine records it as its sticky error.
func (c *CacheSet) unpin(seq uint64) {
	if err := c.jnl.Unpin(seq); err != nil {
		c.setErr(err)
	}
}
