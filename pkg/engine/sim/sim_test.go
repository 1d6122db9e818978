package sim

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
)

func TestSmallTraces(t *testing.T) {
	tests := []struct {
		name      string
		trace     []uint64
		capacity  int
		from      int
		lru, opt  uint64 // hits
		bucketLRU uint64 // hits with buckets of 1 block (= LRU)
	}{
		{name: "empty", capacity: 2},
		{name: "zero capacity", trace: []uint64{1, 1, 1}, capacity: 0},
		{name: "repeat", trace: []uint64{1, 1, 1}, capacity: 1, lru: 2, opt: 2, bucketLRU: 2},
		// LRU thrashes on a loop one larger than the cache; OPT keeps 1 and 2
		// and lets 3 bypass.
		{name: "loop", trace: []uint64{1, 2, 3, 1, 2, 3, 1, 2, 3}, capacity: 2, lru: 0, opt: 4, bucketLRU: 0},
		// Belady's textbook example (3 frames): demand-paging MIN has 9 misses
		// (11 hits); letting a missed block bypass the cache saves one more.
		{
			name:  "textbook",
			trace: []uint64{7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1}, capacity: 3,
			lru: 8, opt: 12, bucketLRU: 8,
		},
		{name: "from skips warm-up", trace: []uint64{1, 2, 1, 2}, capacity: 2, from: 2, lru: 2, opt: 2, bucketLRU: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			want := uint64(max(0, len(tc.trace)-tc.from))
			check := func(what string, r Result, hits uint64) {
				t.Helper()
				if r.Accesses != want || r.Hits != hits {
					t.Errorf("%s = %+v, want %d hits of %d", what, r, hits, want)
				}
			}
			check("LRU", LRU(tc.trace, tc.capacity, tc.from), tc.lru)
			check("OPT", OPT(tc.trace, tc.capacity, tc.from), tc.opt)
			check("BucketLRU", BucketLRU(tc.trace, tc.capacity, 1, tc.from), tc.bucketLRU)
			if tc.from == 0 {
				if m := optModel(tc.trace, tc.capacity); m != tc.opt {
					t.Errorf("exhaustive search finds %d hits, the table says %d", m, tc.opt)
				}
				if m := lruModel(tc.trace, tc.capacity); m != tc.lru {
					t.Errorf("LRU model finds %d hits, the table says %d", m, tc.lru)
				}
			}
		})
	}
}

// lruModel is LRU kept as a slice ordered by recency.
func lruModel(trace []uint64, capacity int) uint64 {
	var cache []uint64 // most recent last
	var hits uint64
	for _, b := range trace {
		if i := slices.Index(cache, b); i >= 0 {
			hits++
			cache = append(slices.Delete(cache, i, i+1), b)
			continue
		}
		if capacity == 0 {
			continue
		}
		if len(cache) == capacity {
			cache = cache[1:]
		}
		cache = append(cache, b)
	}
	return hits
}

// optModel finds the most hits any cache of the capacity gets, by trying every
// choice of block to drop on every miss (tiny traces only).
func optModel(trace []uint64, capacity int) uint64 {
	var best func(i int, cache []uint64) uint64
	best = func(i int, cache []uint64) uint64 {
		if i == len(trace) {
			return 0
		}
		b := trace[i]
		if slices.Contains(cache, b) {
			return 1 + best(i+1, cache)
		}
		if len(cache) < capacity {
			return best(i+1, append(slices.Clone(cache), b))
		}
		m := best(i+1, cache) // do not keep b
		for j := range cache {
			next := slices.Clone(cache)
			next[j] = b
			m = max(m, best(i+1, next))
		}
		return m
	}
	if capacity == 0 {
		return 0
	}
	return best(0, nil)
}

func TestAgainstModels(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for iter := range 300 {
		n := 1 + rng.IntN(14)
		blocks := 1 + rng.IntN(6)
		capacity := rng.IntN(4)
		trace := make([]uint64, n)
		for i := range trace {
			trace[i] = uint64(rng.IntN(blocks))
		}
		lru, opt := LRU(trace, capacity, 0), OPT(trace, capacity, 0)
		if want := lruModel(trace, capacity); lru.Hits != want {
			t.Fatalf("iter %d: LRU(%v, %d) = %d hits, model %d", iter, trace, capacity, lru.Hits, want)
		}
		if want := optModel(trace, capacity); opt.Hits != want {
			t.Fatalf("iter %d: OPT(%v, %d) = %d hits, model %d", iter, trace, capacity, opt.Hits, want)
		}
		if b := BucketLRU(trace, capacity, 1, 0); b.Hits != lru.Hits {
			t.Fatalf("iter %d: BucketLRU with 1-block buckets = %d hits, LRU %d", iter, b.Hits, lru.Hits)
		}
	}
}

func TestBucketLRU(t *testing.T) {
	// Two buckets of two blocks: 1 2 fill bucket A, 3 4 bucket B; a hit on 1
	// makes A recent, so 5 evicts B (3 and 4) whole.
	trace := []uint64{1, 2, 3, 4, 1, 5, 2, 3, 4}
	r := BucketLRU(trace, 2, 2, 0)
	// Hits: 1 (A); 5 finds A recent, drops B (3 and 4) and reopens it; 2 (A);
	// 3 misses and goes to B (5, 3), 4 misses, drops A (now LRU) and reopens it.
	if r.Hits != 2 {
		t.Fatalf("BucketLRU = %+v, want 2 hits", r)
	}
	// On a skewed trace, whole-bucket eviction never beats block LRU by much and
	// OPT beats both.
	z, err := NewZipf(5000, 0.99, 7)
	if err != nil {
		t.Fatal(err)
	}
	tr := z.Trace(100000)
	lru, opt := LRU(tr, 500, 20000), OPT(tr, 500, 20000)
	bl := BucketLRU(tr, 10, 50, 20000)
	if !(opt.Hits > lru.Hits && opt.Hits > bl.Hits) {
		t.Fatalf("OPT %v, LRU %v, BucketLRU %v: OPT should win", opt, lru, bl)
	}
	t.Logf("zipf(0.99) 5000 blocks, cache 500: LRU %.3f BucketLRU(10x50) %.3f OPT %.3f",
		lru.HitRatio(), bl.HitRatio(), opt.HitRatio())
}

func TestZipf(t *testing.T) {
	if _, err := NewZipf(0, 1, 1); err == nil {
		t.Error("NewZipf(0 blocks) succeeded")
	}
	if _, err := NewZipf(10, 0, 1); err == nil {
		t.Error("NewZipf(theta 0) succeeded")
	}
	if _, err := NewZipf(10, math.NaN(), 1); err == nil {
		t.Error("NewZipf(theta NaN) succeeded")
	}
	const n, draws = 1000, 400000
	z, err := NewZipf(n, 0.99, 42)
	if err != nil {
		t.Fatal(err)
	}
	// The same seed gives the same trace.
	z2, _ := NewZipf(n, 0.99, 42)
	if !slices.Equal(z.Trace(100), z2.Trace(100)) {
		t.Fatal("same seed, different traces")
	}
	// Probabilities follow 1/r^0.99 and sum to 1.
	sum := 0.0
	for r := 1; r <= n; r++ {
		sum += z.Prob(r)
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Fatalf("probabilities sum to %v", sum)
	}
	if got, want := z.Prob(1)/z.Prob(10), math.Pow(10, 0.99); math.Abs(got-want) > 1e-9 {
		t.Fatalf("P(1)/P(10) = %v, want %v", got, want)
	}
	// Observed frequencies of the top ranks are within 5 standard deviations.
	counts := map[uint64]int{}
	for range draws {
		b := z.Next()
		if b >= n {
			t.Fatalf("block %d out of range", b)
		}
		counts[b]++
	}
	for r := 1; r <= 20; r++ {
		p := z.Prob(r)
		var block uint64
		for b := range uint64(n) {
			if z.Rank(b) == r {
				block = b
				break
			}
		}
		exp := p * draws
		sd := math.Sqrt(draws * p * (1 - p))
		if got := float64(counts[block]); math.Abs(got-exp) > 5*sd {
			t.Errorf("rank %d (block %d): %v draws, want %.0f ± %.0f", r, block, got, exp, 5*sd)
		}
	}
	// The hot blocks are scattered: the 10 hottest are not 0..9.
	hot := 0
	for r := 1; r <= 10; r++ {
		for b := range uint64(10) {
			if z.Rank(b) == r {
				hot++
			}
		}
	}
	if hot == 10 {
		t.Error("the 10 hottest blocks are blocks 0..9: ranks are not scrambled")
	}
}

func BenchmarkOPT(b *testing.B) {
	z, _ := NewZipf(100000, 0.99, 1)
	tr := z.Trace(200000)
	b.ResetTimer()
	for b.Loop() {
		OPT(tr, 10000, 0)
	}
}
