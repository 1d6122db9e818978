package engine

import (
	"math/rand/v2"
	"sync/atomic"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// Btree benchmarks with a warm node cache (issue #3): the tree is built first and
// every node is in the cache, so they measure the btree and its locking, not
// device reads. Run them without the invariants tag, which adds checks:
//
//	go test -run '^$' -bench 'Btree' -benchtime 2s ./pkg/engine/

const (
	benchKeys    = 100_000 // 4 KiB extents of one volume
	benchSectors = 8
)

// benchTree is a cache set holding benchKeys adjacent 4 KiB extents, all nodes
// cached and written. nodeMaxKeys 0 is the production node size (what a 64 KiB
// bucket holds, about 800 keys); 16 makes a deep tree.
func benchTree(b *testing.B, nodeMaxKeys int) *CacheSet {
	b.Helper()
	cfg := Config{
		BucketSize:     64 << 10,
		MaxVolumes:     16,
		NodeMaxKeys:    nodeMaxKeys,
		NodeCacheNodes: 1 << 16, // the whole tree: a warm cache
	}
	c, _ := newTestSet(b, 4<<30, cfg)
	b.Cleanup(func() { c.Close() })
	batch := make([]bkey.Key, 0, 256)
	for i := range benchKeys {
		batch = append(batch, bkey.Key{Vol: 1, Start: uint64(i) * benchSectors, Len: benchSectors,
			Ptr: bkey.Ptr{Bucket: 1000 + uint32(i/1024), Offset: uint32(i%1024) * benchSectors}})
		if len(batch) == cap(batch) || i == benchKeys-1 {
			if err := c.InsertKeys(batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := c.flushAll(); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Lookup(1, 0, benchKeys*benchSectors); err != nil { // warm every leaf
		b.Fatal(err)
	}
	return c
}

func benchSizes(b *testing.B, fn func(b *testing.B, nodeMaxKeys int)) {
	for _, sz := range []struct {
		name string
		max  int
	}{{"nodes=64KiB", 0}, {"nodes=16keys", 16}} {
		b.Run(sz.name, func(b *testing.B) { fn(b, sz.max) })
	}
}

func reportOps(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkBtreeLookup: one 4 KiB read's lookup at a random place.
func BenchmarkBtreeLookup(b *testing.B) {
	benchSizes(b, func(b *testing.B, nodeMaxKeys int) {
		c := benchTree(b, nodeMaxKeys)
		rng := rand.New(rand.NewPCG(1, 2))
		b.ResetTimer()
		for range b.N {
			s := rng.Uint64N(benchKeys) * benchSectors
			keys, err := c.Lookup(1, s, s+benchSectors)
			if err != nil || len(keys) != 1 {
				b.Fatalf("lookup at %d: %d keys, %v", s, len(keys), err)
			}
		}
		reportOps(b)
	})
}

// BenchmarkBtreeLookupParallel: lookups from GOMAXPROCS goroutines.
func BenchmarkBtreeLookupParallel(b *testing.B) {
	benchSizes(b, func(b *testing.B, nodeMaxKeys int) {
		c := benchTree(b, nodeMaxKeys)
		var seed atomic.Uint64
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			rng := rand.New(rand.NewPCG(seed.Add(1), 2))
			for pb.Next() {
				s := rng.Uint64N(benchKeys) * benchSectors
				if _, err := c.Lookup(1, s, s+benchSectors); err != nil {
					b.Error(err)
					return
				}
			}
		})
		reportOps(b)
	})
}

// BenchmarkBtreeInsert: one 4 KiB write's metadata (a journaled key replacing
// one) at a random place, without waiting for a commit; the journal writes in the
// background and flushWrite writes nodes when it fills.
func BenchmarkBtreeInsert(b *testing.B) {
	benchSizes(b, func(b *testing.B, nodeMaxKeys int) {
		c := benchTree(b, nodeMaxKeys)
		rng := rand.New(rand.NewPCG(3, 4))
		keys := make([]bkey.Key, 1)
		b.ResetTimer()
		for i := range b.N {
			s := rng.Uint64N(benchKeys) * benchSectors
			keys[0] = bkey.Key{Vol: 1, Start: s, Len: benchSectors, Flags: bkey.FlagDirty,
				Ptr: bkey.Ptr{Bucket: 2000 + uint32(i/1024%1000), Offset: uint32(i%1024) * benchSectors}}
			if err := c.InsertKeys(keys); err != nil {
				b.Fatal(err)
			}
		}
		reportOps(b)
	})
}

// BenchmarkBtreeReplaceKey: a cache-miss fill (compare-and-swap into a gap, not
// journaled) at a random place, after a whiteout made the gap.
func BenchmarkBtreeReplaceKey(b *testing.B) {
	benchSizes(b, func(b *testing.B, nodeMaxKeys int) {
		c := benchTree(b, nodeMaxKeys)
		rng := rand.New(rand.NewPCG(5, 6))
		// Punch a gap into every other extent's place.
		for i := 0; i < benchKeys; i += 2 {
			k := bkey.Key{Vol: 1, Start: uint64(i) * benchSectors, Len: benchSectors, Flags: bkey.FlagWhiteout}
			if err := c.InsertKeys([]bkey.Key{k}); err != nil {
				b.Fatal(err)
			}
		}
		if err := c.flushAll(); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := range b.N {
			s := rng.Uint64N(benchKeys) * benchSectors
			k := bkey.Key{Vol: 1, Start: s, Len: benchSectors, Ptr: bkey.Ptr{Bucket: 3000 + uint32(i/1024%1000), Offset: uint32(i%1024) * benchSectors}}
			if _, err := c.ReplaceKey(k, nil); err != nil {
				b.Fatal(err)
			}
		}
		reportOps(b)
	})
}
