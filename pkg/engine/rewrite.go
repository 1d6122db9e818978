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
	if c.jnl != nil {
		c.rootSeq.Store(c.jnl.Seq())
	}
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

// mergeAfterDelete runs mergeIfSparse on every leaf of the range the whiteout
// k deleted. A merge that fails leaves the tree as it was (sparse, still
// correct), so the deletion stands: the error is logged, and device errors are
// sticky already.
func (c *CacheSet) mergeAfterDelete(k bkey.Key) {
	for pos, end := k.StartPos(), k.EndPos(); pos.Less(end); {
		if err := c.mergeIfSparse(pos); err != nil {
			if c.cfg.Logf != nil {
				c.cfg.Logf("engine: merge after a deletion at %v: %v", pos, err)
			}
			return
		}
		c.treeMu.RLock()
		leaf, err := c.findLeaf(pos, false)
		if err != nil {
			c.treeMu.RUnlock()
			return
		}
		next := leaf.max
		leaf.lock.RUnlock()
		c.treeMu.RUnlock()
		if !pos.Less(next) {
			return
		}
		pos = next
	}
}

// mergeIfSparse merges nodes made sparse by a deletion at pos (bcache's GC
// coalescing, done when the deletion happens): if the leaf covering pos is not
// the root, holds at most a quarter of a node and fits in half a node with an
// adjacent sibling, the two are merged; then its parent likewise, up the tree
// while merges happen. It takes treeMu exclusive only when a merge is due.
func (c *CacheSet) mergeIfSparse(pos bkey.Pos) error {
	for level := uint8(0); ; level++ {
		c.treeMu.RLock()
		due := c.mergeableAt(pos, level)
		c.treeMu.RUnlock()
		if !due {
			return nil
		}
		merged, err := c.mergeAt(pos, level)
		if errors.Is(err, errNoLogRoom) {
			// Compact the full node on the path (the grandparent), then retry.
			if err := c.rewriteAt(pos, 1); err != nil {
				return err
			}
			merged, err = c.mergeAt(pos, level)
		}
		if err != nil || !merged {
			return err
		}
	}
}

// errNoLogRoom: the node a merge must append to has no room left in its log.
var errNoLogRoom = errors.New("engine: no room in the node log")

// mergeableAt reports whether the node at level covering pos is below the root,
// holds at most a quarter of a node, and fits in half a node with the sibling
// mergeAt would pair it with. Caller holds treeMu.
func (c *CacheSet) mergeableAt(pos bkey.Pos, level uint8) bool {
	p := c.root
	if p.level <= level {
		return false
	}
	p.lock.RLock()
	for p.level > level+1 {
		ptr, l := p.children[min(p.childIndex(pos), len(p.children)-1)].Ptr, p.level-1
		p.lock.RUnlock()
		var err error
		if p, err = c.getNode(ptr, l, false); err != nil {
			return false
		}
	}
	if len(p.children) < 2 {
		p.lock.RUnlock()
		return false
	}
	i := min(p.childIndex(pos), len(p.children)-1)
	ptrs := []bkey.Ptr{p.children[i].Ptr}
	for _, j := range []int{i + 1, i - 1} {
		if j >= 0 && j < len(p.children) {
			ptrs = append(ptrs, p.children[j].Ptr)
		}
	}
	p.lock.RUnlock()
	nkeys := func(ptr bkey.Ptr) (int, bool) {
		n, err := c.getNode(ptr, level, false)
		if err != nil {
			return 0, false
		}
		defer n.lock.RUnlock()
		return n.nkeys(), true
	}
	x, ok := nkeys(ptrs[0])
	if !ok || x > c.maxNodeKeys()/4 {
		return false
	}
	for _, ptr := range ptrs[1:] {
		if y, ok := nkeys(ptr); ok && x+y <= c.maxNodeKeys()/2 {
			return true
		}
	}
	return false
}

// mergeAt merges the node at level covering pos with its right or else its left
// sibling, the first that together with it holds at most half a node. Their
// parent is replaced too, by a compacted copy with one child less (a node log can
// replace a child, not delete one); the grandparent then points at the copy, or
// the copy becomes the root. A root left with one child gives way to it, and the
// tree loses a level.
//
// Crash safety follows rewriteNode: the new nodes are written and synced before
// anything points at them, and the old ones are freed only once nothing durable
// does. When the root changes, the old root and the merged nodes (still reachable
// from it on disk) are retired together, after a journal entry names the new
// root. It reports whether it merged.
func (c *CacheSet) mergeAt(pos bkey.Pos, level uint8) (merged bool, err error) {
	c.treeMu.Lock()
	var retire []*node
	defer func() {
		c.treeMu.Unlock()
		for _, n := range retire {
			c.retireRoot(n)
		}
	}()
	if c.root.level <= level {
		return false, nil
	}
	// Walk to the parent p of the nodes to merge, keeping the grandparent gp.
	var gp *node
	p := c.root
	p.lock.Lock()
	unlock := func() {
		p.lock.Unlock()
		if gp != nil {
			gp.lock.Unlock()
		}
	}
	for p.level > level+1 {
		child, err := c.getNode(p.children[min(p.childIndex(pos), len(p.children)-1)].Ptr, p.level-1, true)
		if err != nil {
			unlock()
			return false, err
		}
		if gp != nil {
			gp.lock.Unlock()
		}
		gp, p = p, child
	}
	if len(p.children) < 2 {
		unlock()
		return false, nil
	}
	if gp != nil {
		gp.writeMu.Lock()
		room := c.leafFitsLocked(gp, 1)
		gp.writeMu.Unlock()
		if !room {
			unlock()
			return false, errNoLogRoom
		}
	}
	i := min(p.childIndex(pos), len(p.children)-1)
	x, err := c.getNode(p.children[i].Ptr, level, true)
	if err != nil {
		unlock()
		return false, err
	}
	var y *node
	j := -1
	for _, cand := range []int{i + 1, i - 1} {
		if cand < 0 || cand >= len(p.children) {
			continue
		}
		n, err := c.getNode(p.children[cand].Ptr, level, true)
		if err != nil {
			x.lock.Unlock()
			unlock()
			return false, err
		}
		if x.nkeys()+n.nkeys() <= c.maxNodeKeys()/2 {
			y, j = n, cand
			break
		}
		n.lock.Unlock()
	}
	if y == nil {
		x.lock.Unlock()
		unlock()
		return false, nil
	}
	a, b := x, y
	if j < i {
		a, b, i = y, x, j
	}
	merged, oldRoot, err := c.mergeNodes(gp, p, i, a, b)
	switch {
	case err != nil || !merged:
		a.lock.Unlock()
		b.lock.Unlock()
		unlock()
		return false, err
	case oldRoot != nil:
		// p, a and b stay locked until retired.
		retire = append(retire, oldRoot, a, b)
	}
	if gp != nil {
		gp.lock.Unlock()
	}
	return true, nil
}

// mergeNodes merges a and b, children i and i+1 of p (gp is p's parent, nil if
// p is the root). Caller holds treeMu exclusive and all four locked. If they do
// not fit in half a node it changes nothing (merged false). On success, when p
// was the root it returns p, and p, a and b stay locked for the caller to retire;
// otherwise it frees a, b and p, releasing their locks. On error everything stays
// locked; the tree is unchanged unless the error is the sticky one of a failed
// grandparent write (as in rewriteNode).
func (c *CacheSet) mergeNodes(gp, p *node, i int, a, b *node) (merged bool, oldRoot *node, err error) {
	var keys []bkey.Key
	if a.isLeaf() {
		keys = append(a.keys.Keys(), b.keys.Keys()...)
	} else {
		keys = append(slices.Clone(a.children), b.children...)
	}
	if len(keys) > c.maxNodeKeys()/2 {
		return false, nil, nil
	}
	m, err := c.newNode(a.level, a.min, b.max, keys)
	if err != nil {
		return false, nil, err
	}
	kids := slices.Concat(p.children[:i], []bkey.Key{childKey(b.max, m.ptr())}, p.children[i+2:])
	var p2 *node // p's replacement; nil: m is the new root
	if gp != nil || len(kids) > 1 {
		if p2, err = c.newNode(p.level, p.min, p.max, kids); err != nil {
			c.nodeFree(m)
			return false, nil, err
		}
	}
	fresh := []*node{m}
	if p2 != nil {
		fresh = append(fresh, p2)
	}
	if err := c.writeNew(fresh...); err != nil {
		for _, n := range fresh {
			c.nodeFree(n)
		}
		return false, nil, err
	}
	if gp == nil {
		root := m
		if p2 != nil {
			root = p2
		}
		c.setRoot(root)
		for _, n := range fresh {
			n.lock.Unlock()
		}
		c.stats.merges.Add(1)
		c.stats.rootChanges.Add(1)
		return true, p, nil
	}
	j := gp.childIndex(p.min)
	if j >= len(gp.children) || gp.children[j].Ptr != p.ptr() {
		for _, n := range fresh {
			c.nodeFree(n)
		}
		return false, nil, fmt.Errorf("engine: parent in bucket %d does not point at node %d: %w", gp.bucket, p.bucket, errCorruptTree)
	}
	gp.children[j].Ptr = p2.ptr()
	gp.writeMu.Lock()
	gp.unwritten = append(gp.unwritten, gp.children[j])
	gp.dirty = true
	_, err = c.writeNodeLocked(gp)
	gp.writeMu.Unlock()
	if err == nil {
		err = c.syncDev()
	}
	for _, n := range fresh {
		n.lock.Unlock()
	}
	if err != nil {
		// As in rewriteNode: the grandparent's in-memory copy points at the
		// replacement, the device may not; the error is sticky.
		c.setErr(err)
		return false, nil, err
	}
	c.stats.merges.Add(1)
	c.nodeFree(a)
	c.nodeFree(b)
	c.nodeFree(p)
	return true, nil, nil
}
