package engine

import (
	"fmt"
	"slices"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// writeNodeLocked appends the node's unwritten keys to its log as one bset
// (bcache: __bch_btree_node_write) and marks it clean. It returns the journal pin
// the node held; the caller releases it after a device sync, because only then are
// the keys durable outside the journal. Caller holds n.writeMu.
//
// writeMu is held across the device write on purpose: the bset must contain
// exactly the keys that are marked written, and concurrent inserts into the node
// (which need writeMu) must land in the next bset.
func (c *CacheSet) writeNodeLocked(n *node) (pin uint64, err error) {
	if !n.dirty {
		return 0, nil
	}
	hdr := ondisk.BsetHeader{
		NodeSeq:    n.nodeSeq,
		JournalSeq: n.journalSeq,
		MinPos:     n.min,
		MaxPos:     n.max,
		Index:      n.nbsets,
		Level:      n.level,
	}
	buf := ondisk.EncodeBset(hdr, n.unwritten, c.sb.SetMagic)
	if n.logBytes+len(buf) > int(c.sb.BucketSize) {
		return 0, fmt.Errorf("engine: node in bucket %d: log full (%d + %d bytes > bucket %d)",
			n.bucket, n.logBytes, len(buf), c.sb.BucketSize)
	}
	// Preflush, as the journal does before a jset: the keys in this bset may
	// point at data (a fill, a write whose jset is not out yet) written but not
	// synced, and a power loss must not keep the bset without that data.
	if c.dev.WritesSinceSync() {
		if err := c.syncDev(); err != nil {
			return 0, err
		}
	}
	off := c.layout.BucketOffset(n.bucket) + int64(n.logBytes)
	if _, err := c.dev.WriteAt(buf, off); err != nil {
		c.setErr(err)
		return 0, fmt.Errorf("engine: write btree node in bucket %d: %w", n.bucket, err)
	}
	c.stats.nodeWrites.Add(1)
	n.logBytes += len(buf)
	n.nbsets++
	n.unwritten = n.unwritten[:0]
	n.dirty = false
	pin, n.pin = n.pin, 0
	return pin, nil
}

// readNodeLocked loads the node named by n's identity from the device: it decodes
// the node's log and replays its bsets in order (later keys win). Caller holds
// n.lock exclusive; the node is not yet visible to anyone else.
func (c *CacheSet) readNodeLocked(n *node) error {
	buf := make([]byte, c.sb.BucketSize)
	off := c.layout.BucketOffset(n.bucket)
	if _, err := c.dev.ReadAt(buf, off); err != nil {
		return fmt.Errorf("engine: read btree node in bucket %d: %w", n.bucket, err)
	}
	hdr, sets, end, err := ondisk.DecodeNodeLog(buf, off, c.sb.SetMagic)
	if err != nil {
		return fmt.Errorf("engine: btree node in bucket %d (gen %d): %w", n.bucket, n.gen, err)
	}
	if hdr.Level != n.level {
		return ondisk.Corruptf("btree node", off, "level %d, parent expects %d", hdr.Level, n.level)
	}
	n.min, n.max = hdr.MinPos, hdr.MaxPos
	for _, keys := range sets {
		if n.isLeaf() {
			for _, k := range keys {
				n.keys.Insert(k)
			}
			continue
		}
		for _, k := range keys {
			n.children = insertChild(n.children, k)
		}
	}
	if !n.isLeaf() {
		if len(n.children) == 0 || n.children[len(n.children)-1].EndPos() != n.max {
			return ondisk.Corruptf("btree node", off, "interior node does not cover up to its max %v", n.max)
		}
	}
	// The newest bset's journal seq: later bsets must not go below it.
	lastStart := end - ondisk.BsetSize(len(sets[len(sets)-1]))
	last, _, _, err := ondisk.DecodeBset(buf[lastStart:end], off+int64(lastStart), c.sb.SetMagic)
	if err != nil {
		return err
	}
	n.writeMu.Lock()
	n.nodeSeq, n.nbsets, n.logBytes = hdr.NodeSeq, uint32(len(sets)), end
	n.journalSeq = last.JournalSeq
	n.writeMu.Unlock()
	return nil
}

// insertChild puts a child key into an interior node's sorted children: a key
// with the same end position replaces the old one (a rewritten child).
func insertChild(children []bkey.Key, k bkey.Key) []bkey.Key {
	i, found := slices.BinarySearchFunc(children, k.EndPos(), func(c bkey.Key, p bkey.Pos) int {
		return c.EndPos().Cmp(p)
	})
	if found {
		children[i] = k
		return children
	}
	return slices.Insert(children, i, k)
}
