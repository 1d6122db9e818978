package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// maxNodeKeys is the most keys a node holds before it is split.
func (c *CacheSet) maxNodeKeys() int {
	// A compacted node must fit in half a bucket, so that it still has log room.
	room := (int(c.sb.BucketSize)/2 - ondisk.BsetHeaderSize) / ondisk.KeySize
	if c.cfg.NodeMaxKeys > 0 && c.cfg.NodeMaxKeys < room {
		return c.cfg.NodeMaxKeys
	}
	return room
}

// leafFitsLocked reports whether extra more keys fit in the node's key budget and
// in its log. Caller holds n.lock and n.writeMu.
func (c *CacheSet) leafFitsLocked(n *node, extra int) bool {
	if n.nkeys()+extra > c.maxNodeKeys() {
		return false
	}
	return n.logBytes+ondisk.BsetSize(len(n.unwritten)+extra) <= int(c.sb.BucketSize)
}

// rewriteAt makes room for an insert at pos: under the exclusive tree lock it walks
// from the root towards pos and rewrites (compacts, or splits in two) the first node
// that could not take another key, until the leaf has room. Interior nodes are
// split before their children (top-down), so a child's split always finds room in
// its parent.
//
// Holding treeMu exclusive across device IO is deliberate: structural changes are
// rare, and nothing the journal needs to make progress (flushWrite) takes treeMu.
func (c *CacheSet) rewriteAt(pos bkey.Pos, extra int) error {
	c.treeMu.Lock()
	var oldRoot *node
	defer func() {
		c.treeMu.Unlock()
		if oldRoot != nil {
			c.retireRoot(oldRoot)
		}
	}()
	for i := 0; ; i++ {
		if i > 64 {
			return fmt.Errorf("engine: rewrite at %v does not converge: %w", pos, errCorruptTree)
		}
		done, retired, err := c.rewriteStep(pos, extra)
		if retired != nil {
			oldRoot = retired
		}
		if err != nil || done {
			return err
		}
	}
}

// rewriteStep does one rewrite on the path to pos, or reports that the leaf has
// room. Caller holds treeMu exclusive.
func (c *CacheSet) rewriteStep(pos bkey.Pos, extra int) (done bool, oldRoot *node, err error) {
	var parent *node
	n := c.root
	n.lock.Lock()
	for {
		n.writeMu.Lock()
		fits := c.leafFitsLocked(n, extra)
		n.writeMu.Unlock()
		if !fits {
			oldRoot, err = c.rewriteNode(n, parent)
			if err != nil {
				n.lock.Unlock() // rewriteNode leaves n locked on error
			}
			if parent != nil {
				parent.lock.Unlock()
			}
			return false, oldRoot, err
		}
		if n.isLeaf() {
			n.lock.Unlock()
			if parent != nil {
				parent.lock.Unlock()
			}
			return true, nil, nil
		}
		i := n.childIndex(pos)
		if i == len(n.children) {
			i--
		}
		child, err := c.getNode(n.children[i].Ptr, n.level-1, true)
		if err != nil {
			n.lock.Unlock()
			if parent != nil {
				parent.lock.Unlock()
			}
			return false, nil, err
		}
		if parent != nil {
			parent.lock.Unlock()
		}
		parent, n = n, child
	}
}

// rewriteNode replaces n by one compacted node, or two if it is more than half
// full, and points the parent (or the root) at the replacement. Caller holds
// treeMu exclusive and n.lock and parent.lock exclusive. On success n is freed
// (nodeFree releases its lock) unless n was the root: then n is returned, still
// locked, and the caller retires it after the new root is durable. On error n stays
// as it was, locked.
func (c *CacheSet) rewriteNode(n, parent *node) (oldRoot *node, err error) {
	var keys []bkey.Key
	if n.isLeaf() {
		keys = n.keys.Keys()
	} else {
		keys = slices.Clone(n.children)
	}
	groups := [][]bkey.Key{keys}
	bounds := []bkey.Pos{n.min, n.max}
	if len(keys) > c.maxNodeKeys()/2 && len(keys) >= 2 {
		mid := len(keys) / 2
		var b bkey.Pos
		if n.isLeaf() {
			b = keys[mid].StartPos()
		} else {
			b = keys[mid-1].EndPos()
		}
		groups = [][]bkey.Key{keys[:mid], keys[mid:]}
		bounds = []bkey.Pos{n.min, b, n.max}
	}

	repl := make([]*node, 0, len(groups))
	fail := func(err error) (*node, error) {
		for _, m := range repl {
			c.nodeFree(m)
		}
		return nil, err
	}
	for i, g := range groups {
		m, err := c.newNode(n.level, bounds[i], bounds[i+1], g)
		if err != nil {
			return fail(err)
		}
		repl = append(repl, m)
	}
	if err := c.hookSplitFail(); err != nil {
		c.stats.splitFailures.Add(1)
		return fail(fmt.Errorf("engine: split of node in bucket %d: %w", n.bucket, err))
	}
	if err := c.writeNew(repl...); err != nil {
		return fail(err)
	}

	if parent == nil {
		root := repl[0]
		if len(repl) > 1 {
			kids := []bkey.Key{childKey(repl[0].max, repl[0].ptr()), childKey(repl[1].max, repl[1].ptr())}
			r, err := c.newNode(n.level+1, n.min, n.max, kids)
			if err != nil {
				return fail(err)
			}
			if err := c.writeNew(r); err != nil {
				c.nodeFree(r)
				return fail(err)
			}
			root = r
		}
		c.setRoot(root)
		for _, m := range repl {
			m.lock.Unlock()
		}
		if root != repl[0] {
			root.lock.Unlock()
		}
		c.stats.rootChanges.Add(1)
		return n, nil
	}

	i := parent.childIndex(n.min)
	if i >= len(parent.children) || parent.children[i].Ptr != n.ptr() {
		return fail(fmt.Errorf("engine: parent in bucket %d does not point at node %d: %w", parent.bucket, n.bucket, errCorruptTree))
	}
	var changed []bkey.Key
	last := repl[len(repl)-1]
	parent.children[i].Ptr = last.ptr()
	changed = append(changed, parent.children[i])
	if len(repl) == 2 {
		k := childKey(repl[0].max, repl[0].ptr())
		parent.children = slices.Insert(parent.children, i, k)
		changed = append(changed, k)
	}
	parent.writeMu.Lock()
	parent.unwritten = append(parent.unwritten, changed...)
	parent.dirty = true
	_, err = c.writeNodeLocked(parent)
	parent.writeMu.Unlock()
	if err == nil {
		err = c.syncDev()
	}
	for _, m := range repl {
		m.lock.Unlock()
	}
	if err != nil {
		// The parent's in-memory copy points at the replacement; the device may
		// not. The error is sticky: the cache set stops taking writes.
		c.setErr(err)
		return nil, err
	}
	if len(repl) == 2 {
		c.stats.splits.Add(1)
	} else {
		c.stats.compactions.Add(1)
	}
	c.nodeFree(n)
	return nil, nil
}

// newNode allocates a bucket and a node struct for a new node holding keys (which
// it owns afterwards). The node is returned locked exclusive, dirty with all its
// keys unwritten and no journal pin.
func (c *CacheSet) newNode(level uint8, min, max bkey.Pos, keys []bkey.Key) (*node, error) {
	b, gen, err := c.allocBucket()
	if err != nil {
		return nil, err
	}
	// Every cached node may be in use or selected by flushWrite for a moment:
	// wait for one to steal as getNode does, up to NodeCacheWait. The caller's
	// locks cannot be what holds them up: nodes held under treeMu are released
	// without new allocations, and flushWrite takes no node lock.
	var n *node
	for wait := time.Duration(0); ; wait += time.Millisecond {
		n, err = c.mcaAlloc(bkey.Ptr{Bucket: b, Gen: gen}, level)
		if !errors.Is(err, errNodeCacheFull) || wait > c.cfg.NodeCacheWait {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		c.freeBucket(b)
		return nil, err
	}
	n.min, n.max = min, max
	if level == 0 {
		for _, k := range keys {
			n.keys.Append(k)
		}
	} else {
		n.children = append(n.children[:0], keys...)
	}
	n.writeMu.Lock()
	n.nodeSeq = rand.Uint64() | 1
	n.unwritten = append(n.unwritten[:0], keys...)
	n.dirty = true
	n.writeMu.Unlock()
	return n, nil
}

// writeNew writes freshly made nodes and syncs the device. Callers hold their
// locks.
func (c *CacheSet) writeNew(nodes ...*node) error {
	for _, m := range nodes {
		m.writeMu.Lock()
		_, err := c.writeNodeLocked(m)
		m.writeMu.Unlock()
		if err != nil {
			return err
		}
	}
	return c.syncDev()
}

// setRoot makes n the root. Caller holds treeMu exclusive.
func (c *CacheSet) setRoot(n *node) {
	c.nc.mu.Lock()
	c.nc.root = n
	c.nc.mu.Unlock()
	c.root = n
	c.rootPtr.Store(&rootInfo{ptr: n.ptr(), level: n.level})
}

// retireRoot queues the previous root to be freed once a journal entry naming the
// new root is durable (the root pointer lives in the journal); until then its bucket
// must not be reused. The background goroutine commits that entry: the caller may
// hold a journal reference, so it must not wait for journal space itself. old stays
// locked exclusive; nodeFree releases it.
func (c *CacheSet) retireRoot(old *node) {
	c.retireMu.Lock()
	c.retiring = append(c.retiring, retiredRoot{n: old, seq: c.jnl.Seq()})
	c.retireMu.Unlock()
	c.kick()
}
