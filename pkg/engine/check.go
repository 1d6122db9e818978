package engine

import (
	"errors"
	"fmt"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// Check verifies the cache set's invariants (bbolt's tx.Check in spirit) and
// returns every violation found, joined:
//   - every node: keys sorted and non-overlapping, inside [min, max); interior
//     children contiguous from min to max, each child one level down with the
//     bounds its parent gives it
//   - no bucket holds two nodes; no data pointer has a generation newer than its
//     bucket's, and no live data pointer points into a btree bucket
//   - bucket accounting: the allocator has every node's bucket as a btree
//     bucket, and every btree bucket holds a node of the tree or a cached one (a
//     replaced root waiting to be retired): no bucket leaks
//   - node cache: live list and hash agree, memory within the budget, a node with
//     a journal pin is dirty, and a journal entry has at least as many pins as
//     nodes pinning it
//   - the allocator's and the journal's own checks
//
// Tests call it in cleanup. It takes treeMu shared, so it sees a consistent tree.
func (c *CacheSet) Check() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("check: "+format, args...)) }

	nodeBuckets := map[uint32]bool{}
	var dataPtrs []bkey.Key
	c.treeMu.RLock()
	var visit func(ptr bkey.Ptr, level uint8, min, max bkey.Pos)
	visit = func(ptr bkey.Ptr, level uint8, min, max bkey.Pos) {
		if nodeBuckets[ptr.Bucket] {
			bad("bucket %d holds two nodes", ptr.Bucket)
			return
		}
		nodeBuckets[ptr.Bucket] = true
		n, err := c.getNode(ptr, level, false)
		if err != nil {
			bad("node in bucket %d: %v", ptr.Bucket, err)
			return
		}
		if n.min != min || n.max != max {
			bad("node %d covers [%v,%v), parent says [%v,%v)", n.bucket, n.min, n.max, min, max)
		}
		var kids []bkey.Key
		if n.isLeaf() {
			if err := n.keys.Check(); err != nil {
				bad("leaf %d: %v", n.bucket, err)
			}
			for i := 0; i < n.keys.Len(); i++ {
				k := n.keys.At(i)
				if k.StartPos().Less(n.min) || n.max.Less(k.EndPos()) {
					bad("leaf %d [%v,%v) holds key %v outside it", n.bucket, n.min, n.max, k)
				}
				dataPtrs = append(dataPtrs, k)
			}
		} else {
			kids = append(kids, n.children...)
			if len(kids) == 0 || kids[len(kids)-1].EndPos() != n.max {
				bad("interior node %d does not reach its max %v", n.bucket, n.max)
			}
			for i := 1; i < len(kids); i++ {
				if !kids[i-1].EndPos().Less(kids[i].EndPos()) {
					bad("interior node %d: children out of order at %d", n.bucket, i)
				}
			}
		}
		n.lock.RUnlock()
		lo := min
		for _, k := range kids {
			visit(k.Ptr, level-1, lo, k.EndPos())
			lo = k.EndPos()
		}
	}
	r := c.rootPtr.Load()
	visit(r.ptr, r.level, bkey.Pos{}, bkey.MaxPos)
	// Still under treeMu, so no split or rewrite allocates or frees a node
	// bucket; nodeFree of a retired root frees its bucket under the cache lock,
	// so the cached nodes and the allocator's kinds are one consistent view.
	c.nc.mu.Lock()
	kinds := c.alloc.Kinds()
	cached := make(map[uint32]bool, len(c.nc.hash))
	for b := range c.nc.hash {
		cached[b] = true
	}
	c.retireMu.Lock()
	for _, f := range c.freeing {
		cached[f.b] = true // held back until the new root is durable
	}
	c.retireMu.Unlock()
	c.nc.mu.Unlock()
	c.treeMu.RUnlock()
	for b := range nodeBuckets {
		if int(b) < len(kinds) && kinds[b] != alloc.KindBtree {
			bad("btree node in bucket %d, which the allocator has as %s", b, kinds[b])
		}
	}
	for b, k := range kinds {
		if k == alloc.KindBtree && !nodeBuckets[uint32(b)] && !cached[uint32(b)] {
			bad("allocator has bucket %d as btree, but no node of the tree or the cache is there (leaked)", b)
		}
	}

	for _, k := range dataPtrs {
		if k.Whiteout() {
			bad("whiteout %v stored in a leaf", k)
			continue
		}
		if k.Ptr.Bucket >= c.layout.NBuckets {
			bad("key %v points past the last bucket", k)
			continue
		}
		gen := c.alloc.Gen(k.Ptr.Bucket)
		if k.Ptr.Gen > gen {
			bad("key %v has a generation newer than its bucket's (%d)", k, gen)
		}
		if k.Ptr.Gen == gen && (nodeBuckets[k.Ptr.Bucket] || kinds[k.Ptr.Bucket] == alloc.KindBtree) {
			bad("key %v points into btree node bucket %d", k, k.Ptr.Bucket)
		}
	}

	errs = append(errs, c.checkNodeCache()...)
	if err := c.alloc.Check(); err != nil {
		errs = append(errs, err)
	}
	if err := c.jnl.Check(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// checkNodeCache verifies the node cache lists and the pins of dirty nodes.
func (c *CacheSet) checkNodeCache() []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("check: "+format, args...)) }
	nc := c.nc
	nc.mu.Lock()
	defer nc.mu.Unlock()
	// Every live node's write lock stays held until the pins are compared with
	// the journal's: a node drops its pin in two steps (clear it under writeMu,
	// unpin after), so a node counted early could otherwise have unpinned by the
	// time the journal is asked. Nobody takes the cache lock or a second writeMu
	// while holding one, so holding them all cannot deadlock.
	var held []*node
	defer func() {
		for _, n := range held {
			n.writeMu.Unlock()
		}
	}()
	pinsBySeq := map[uint64]int64{}
	count := 0
	for n := nc.live.head; n != nil; n = n.next {
		count++
		if n.state != stateLive {
			bad("node %p on the live list is %s", n, n.state)
		}
		if nc.hash[n.bucket] != n {
			bad("live node of bucket %d is not in the hash", n.bucket)
		}
		n.writeMu.Lock()
		held = append(held, n)
		if n.pin != 0 {
			if !n.dirty {
				bad("clean node %d holds a pin on journal entry %d", n.bucket, n.pin)
			}
			pinsBySeq[n.pin]++
		}
		if n.journalFlush && !c.flushing.Load() {
			bad("node %d has journalFlush set with no flush running", n.bucket)
		}
	}
	if count != nc.live.n || len(nc.hash) != nc.live.n {
		bad("live list has %d nodes, counted %d, hash %d", nc.live.n, count, len(nc.hash))
	}
	if nc.peak > nc.budget {
		bad("node cache peak %d over budget %d", nc.peak, nc.budget)
	}
	for n := nc.freeable.head; n != nil; n = n.next {
		if n.state != stateFreeable {
			bad("node %p on the freeable list is %s", n, n.state)
		}
	}
	for n := nc.freed.head; n != nil; n = n.next {
		if n.state != stateFreed {
			bad("node %p on the freed list is %s", n, n.state)
		}
	}
	for seq, nodes := range pinsBySeq {
		if pins := c.jnl.Pins(seq); pins < nodes {
			bad("journal entry %d has %d pins, %d nodes hold one", seq, pins, nodes)
		}
	}
	return errs
}
