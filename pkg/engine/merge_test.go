//go:build invariants

package engine

import (
	"math/rand/v2"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

func countNodes(t *testing.T, c *CacheSet) (nodes int, levels uint8) {
	t.Helper()
	if err := c.walk(func(*node) error { nodes++; return nil }); err != nil {
		t.Fatal(err)
	}
	c.treeMu.RLock()
	defer c.treeMu.RUnlock()
	return nodes, c.root.level + 1
}

// TestMergeSparseNodes: deleting most of a three-level tree, in small pieces and
// in random order, merges the leaves (and then the interior nodes) it leaves
// sparse, until the root gives way and the tree loses levels. The contents match
// a model throughout, Check passes, and a reopen sees the same.
func TestMergeSparseNodes(t *testing.T) {
	cfg := testConfig() // at most 16 keys per node
	cfg.NodeCacheNodes = 64
	c, mem := newTestSet(t, 64<<20, cfg)
	m := model{}
	const sectors = 8000
	for lba := uint64(0); lba < sectors; lba += 8 {
		k := bkey.Key{Vol: 1, Start: lba, Len: 6, Ptr: bkey.Ptr{Bucket: 900, Offset: uint32(lba)}}
		if err := c.InsertKeys([]bkey.Key{k}); err != nil {
			t.Fatal(err)
		}
		m.insert(k)
	}
	before, levelsBefore := countNodes(t, c)
	if levelsBefore < 3 {
		t.Fatalf("%d levels, want at least 3", levelsBefore)
	}

	// Delete 95% of the key space, 40 sectors at a time, in random order.
	rng := rand.New(rand.NewPCG(4, 4))
	chunks := rng.Perm(sectors / 40)
	for i, ch := range chunks[:len(chunks)*95/100] {
		k := bkey.Key{Vol: 1, Start: uint64(ch) * 40, Len: 40, Flags: bkey.FlagWhiteout}
		if err := c.InsertKeys([]bkey.Key{k}); err != nil {
			t.Fatal(err)
		}
		m.insert(k)
		if i%50 == 0 {
			mustCheck(t, c)
			compareModel(t, c, m, 1, sectors)
		}
	}
	after, levelsAfter := countNodes(t, c)
	merges := c.stats.merges.Load()
	t.Logf("nodes %d -> %d, levels %d -> %d, %d merges, %d root changes", before, after, levelsBefore, levelsAfter,
		merges, c.stats.rootChanges.Load())
	if merges == 0 || after > before/4 {
		t.Fatalf("deleting 95%% of the keys left %d of %d nodes (%d merges)", after, before, merges)
	}
	if levelsAfter >= levelsBefore {
		t.Errorf("the tree kept its %d levels", levelsBefore)
	}
	mustCheck(t, c)
	compareModel(t, c, m, 1, sectors)

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := Open(mem.Reopen(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustCheck(t, c)
	compareModel(t, c, m, 1, sectors)
	// Replaying the journaled deletions may merge more, never less.
	if n, _ := countNodes(t, c); n > after {
		t.Errorf("reopened tree has %d nodes, had %d", n, after)
	}
}

// TestMergeOnlyWhatFits: a sparse leaf (a quarter of a node) next to one of 7
// keys is not merged (11 keys would be more than half a node); once the
// neighbour is down to 4 keys too, they are merged into one leaf of 8.
func TestMergeOnlyWhatFits(t *testing.T) {
	cfg := testConfig() // 16 keys per node: sparse at 4, merged if at most 8
	c, _ := newTestSet(t, 64<<20, cfg)
	defer c.Close()
	for lba := uint64(0); lba < 400; lba += 2 { // sequential: leaves of 7 keys
		if err := c.InsertKeys([]bkey.Key{{Vol: 1, Start: lba, Len: 1, Ptr: bkey.Ptr{Bucket: 900, Offset: uint32(lba)}}}); err != nil {
			t.Fatal(err)
		}
	}
	leafAt := func(lba uint64) (lo, hi uint64, keys int) {
		c.treeMu.RLock()
		defer c.treeMu.RUnlock()
		n, err := c.findLeaf(bkey.Pos{Vol: 1, LBA: lba}, false)
		if err != nil {
			t.Fatal(err)
		}
		defer n.lock.RUnlock()
		return n.min.LBA, n.max.LBA, n.nkeys()
	}
	aLo, aHi, aKeys := leafAt(100)
	bLo, bHi, bKeys := leafAt(aHi)
	if aKeys != 7 || bKeys != 7 || bLo != aHi {
		t.Fatalf("leaves [%d,%d) with %d keys and [%d,%d) with %d, want two adjacent leaves of 7", aLo, aHi, aKeys, bLo, bHi, bKeys)
	}
	del := func(lo uint64) {
		// The first 3 keys of the leaf starting at lo.
		if err := c.InsertKeys([]bkey.Key{{Vol: 1, Start: lo, Len: 6, Flags: bkey.FlagWhiteout}}); err != nil {
			t.Fatal(err)
		}
	}
	del(aLo)
	if _, _, k := leafAt(aLo); k != 4 || c.stats.merges.Load() != 0 {
		t.Fatalf("after deleting 3 of 7 keys: %d keys, %d merges; want 4 keys, no merge", k, c.stats.merges.Load())
	}
	del(bLo)
	lo, hi, k := leafAt(aLo)
	if c.stats.merges.Load() != 1 || lo != aLo || hi != bHi || k != 8 {
		t.Fatalf("after the neighbour went down to 4 keys: leaf [%d,%d) with %d keys, %d merges; want [%d,%d) with 8, one merge",
			lo, hi, k, c.stats.merges.Load(), aLo, bHi)
	}
	mustCheck(t, c)
}
