// Package sim simulates caches on block traces, to put the engine's measured hit
// ratio next to what simple and optimal policies reach on the same trace.
//
// A trace is a sequence of block numbers (one 4 KiB read each, say). Every
// simulator replays the whole trace from an empty cache and counts the hits of
// the accesses from index From on, so that a warm-up prefix shapes the cache
// without counting:
//
//	LRU        block-granular least recently used, capacity in blocks
//	OPT        Belady's MIN: on a miss with a full cache, drop the block (the
//	           missed one included) whose next use is farthest in the future;
//	           the most hits any cache of that capacity can get
//	BucketLRU  the engine's shape: missed blocks are appended to an open bucket
//	           of BlocksPerBucket blocks, and eviction drops the least recently
//	           used bucket whole (its recency is its last fill or hit)
//
// Zipf generates the skewed traces the benchmarks use (math/rand's Zipf needs
// an exponent > 1; storage benchmarks use 0.99, as YCSB does).
package sim

// Result counts the accesses a simulator counted and their hits.
type Result struct {
	Accesses uint64
	Hits     uint64
}

// HitRatio is Hits / Accesses, or 0 with no access.
func (r Result) HitRatio() float64 {
	if r.Accesses == 0 {
		return 0
	}
	return float64(r.Hits) / float64(r.Accesses)
}

func (r *Result) count(i, from int, hit bool) {
	if i < from {
		return
	}
	r.Accesses++
	if hit {
		r.Hits++
	}
}
