package sim

import (
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
)

// Zipf draws block numbers in [0, N) whose popularity follows a Zipf law of
// exponent Theta: the block of rank r (1-based) is drawn with probability
// proportional to 1/r^Theta. Ranks are mapped to block numbers by a random
// permutation, so hot blocks are spread over the range rather than packed at
// its start (YCSB's scrambled Zipfian). Any Theta > 0 works, including the
// usual 0.99.
//
// It samples by binary search in a precomputed CDF: exact, O(N) memory (12
// bytes per block) and O(log N) per draw. Not safe for concurrent use.
type Zipf struct {
	cdf  []float64 // cdf[r] = P(rank <= r+1)
	perm []uint32  // rank-1 → block
	rng  *rand.Rand
}

// NewZipf returns a generator over n blocks with exponent theta, seeded by seed
// (the same arguments give the same sequence).
func NewZipf(n int, theta float64, seed uint64) (*Zipf, error) {
	if n <= 0 || n > math.MaxUint32 {
		return nil, fmt.Errorf("sim: zipf over %d blocks", n)
	}
	if !(theta > 0) || math.IsInf(theta, 0) {
		return nil, fmt.Errorf("sim: zipf exponent %v not > 0", theta)
	}
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	z := &Zipf{cdf: make([]float64, n), perm: make([]uint32, n), rng: rng}
	sum := 0.0
	for r := range n {
		sum += math.Pow(float64(r+1), -theta)
		z.cdf[r] = sum
	}
	for r := range z.cdf {
		z.cdf[r] /= sum
	}
	z.cdf[n-1] = 1
	for i := range z.perm {
		z.perm[i] = uint32(i)
	}
	rng.Shuffle(n, func(i, j int) { z.perm[i], z.perm[j] = z.perm[j], z.perm[i] })
	return z, nil
}

// N is the number of blocks.
func (z *Zipf) N() int { return len(z.cdf) }

// Rank returns the 1-based popularity rank of a block.
func (z *Zipf) Rank(block uint64) int {
	for r, b := range z.perm {
		if uint64(b) == block {
			return r + 1
		}
	}
	return 0
}

// Prob is the probability of drawing the block of 1-based rank r.
func (z *Zipf) Prob(r int) float64 {
	if r < 1 || r > len(z.cdf) {
		return 0
	}
	if r == 1 {
		return z.cdf[0]
	}
	return z.cdf[r-1] - z.cdf[r-2]
}

// Next draws a block.
func (z *Zipf) Next() uint64 {
	u := z.rng.Float64()
	r := sort.SearchFloat64s(z.cdf, u)
	if r == len(z.cdf) {
		r--
	}
	return uint64(z.perm[r])
}

// Trace draws n blocks.
func (z *Zipf) Trace(n int) []uint64 {
	t := make([]uint64, n)
	for i := range t {
		t[i] = z.Next()
	}
	return t
}
