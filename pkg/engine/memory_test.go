//go:build invariants

package engine

import (
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// TestNodeCacheWithinBudget (issue #3): on a tree with more than ten times as
// many nodes as the node cache may hold, built and then read and written all over
// its key space, the cache never holds more node structs with key memory (live +
// freeable) than its budget. A sampler watches it from outside while the
// workload runs; the cache's own high-water mark must agree.
func TestNodeCacheWithinBudget(t *testing.T) {
	cfg := testConfig() // 64 KiB buckets, at most 16 keys per node
	cfg.NodeCacheNodes = 32
	cfg.JournalSize = 1 << 20
	c, _ := newTestSet(t, 256<<20, cfg)
	defer c.Close()
	budget := c.nc.budget

	var maxSeen, samples int
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c.nc.mu.Lock()
			maxSeen = max(maxSeen, c.nc.memLocked())
			samples++
			c.nc.mu.Unlock()
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Microsecond):
			}
		}
	})

	// Build: sequential 4-sector extents in batches (a leaf keeps about half
	// its room after a split), then random overwrites all over the key space.
	const vols, sectorsPerVol = 2, 6000
	rng := rand.New(rand.NewPCG(11, 12))
	for v := uint64(1); v <= vols; v++ {
		for lba := uint64(0); lba < sectorsPerVol; {
			batch := make([]bkey.Key, 0, 50)
			for len(batch) < cap(batch) && lba < sectorsPerVol {
				batch = append(batch, bkey.Key{Vol: v, Start: lba, Len: 3, Ptr: bkey.Ptr{Bucket: 3000, Offset: uint32(lba)}})
				lba += 4
			}
			if err := c.InsertKeys(batch); err != nil {
				t.Fatal(err)
			}
		}
	}
	nodes := 0
	if err := c.walk(func(*node) error { nodes++; return nil }); err != nil {
		t.Fatal(err)
	}
	// Use: lookups and overwrites at random places, every node loaded again and
	// again through the cache.
	for i := range 2000 {
		v, s := 1+rng.Uint64N(vols), rng.Uint64N(sectorsPerVol-64)
		if i%3 == 0 {
			k := bkey.Key{Vol: v, Start: s, Len: 1 + rng.Uint32N(6), Ptr: bkey.Ptr{Bucket: 3001, Offset: uint32(i)}}
			if err := c.InsertKeys([]bkey.Key{k}); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if _, err := c.Lookup(v, s, s+64); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()

	c.nc.mu.Lock()
	peak, st, live, freeable := c.nc.peak, c.nc.stats, c.nc.live.n, c.nc.freeable.n
	cachedKeys := 0
	for n := c.nc.live.head; n != nil; n = n.next {
		if n.keys != nil {
			cachedKeys += n.keys.Len()
		}
		cachedKeys += len(n.children)
	}
	c.nc.mu.Unlock()
	t.Logf("tree %d nodes (%d levels), node cache budget %d: peak %d, largest sampled %d (%d samples), at the end %d live + %d freeable "+
		"holding %d keys; %d misses read, %d cannibalized, %d reaped",
		nodes, c.root.level+1, budget, peak, maxSeen, samples, live, freeable, cachedKeys,
		st.MissReads, st.Cannibalized, st.Reaped)
	if nodes < 10*budget {
		t.Fatalf("the tree has %d nodes, want at least 10x the budget of %d", nodes, budget)
	}
	if peak > budget || maxSeen > budget {
		t.Errorf("node cache over budget %d: peak %d, sampled %d", budget, peak, maxSeen)
	}
	if maxSeen > peak {
		t.Errorf("sampled %d node structs, the cache's high-water mark says %d", maxSeen, peak)
	}
	if st.MissReads < uint64(nodes) {
		t.Errorf("only %d cache misses for %d nodes: the workload did not go through the tree", st.MissReads, nodes)
	}
	mustCheck(t, c)
}
