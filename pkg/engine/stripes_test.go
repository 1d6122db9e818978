package engine

import (
	"slices"
	"testing"
)

func TestStripesOf(t *testing.T) {
	const region = 1 << stripeShift // sectors
	all := make([]int, nStripes)
	for i := range all {
		all[i] = i
	}
	tests := []struct {
		name       string
		start, end uint64
		want       []int
	}{
		{"one sector", 0, 1, []int{0}},
		{"one region", region, 2 * region, []int{1}},
		{"across a boundary", region - 1, region + 1, []int{0, 1}},
		{"wraps round", (nStripes - 1) * region, (nStripes + 1) * region, []int{0, nStripes - 1}},
		{"same stripe a lap later", nStripes * region, nStripes*region + 8, []int{0}},
		{"nearly all", region, nStripes * region, all[1:]},
		{"all", 5, 5 + nStripes*region, all},
		{"far more than all", 0, 1 << 40, all},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := stripesOf(tc.start, tc.end)
			var got []int
			set.each(func(i int) { got = append(got, i) })
			if !slices.Equal(got, tc.want) {
				t.Errorf("stripesOf(%d, %d) = %v, want %v", tc.start, tc.end, got, tc.want)
			}
		})
	}
}

func TestStripeSeq(t *testing.T) {
	var st stripes
	const region = 1 << stripeShift
	s0 := st.seqSum(0, 8)
	other := st.seqSum(region, region+8)
	l := st.lock(0, 8)
	if st.seqSum(0, 8) == s0 {
		t.Fatal("lock did not move the sequence sum")
	}
	st.unlock(l)
	if st.seqSum(region, region+8) != other {
		t.Fatal("a write moved another region's sequence sum")
	}
	moved := st.seqSum(0, 8)
	q := st.lockQuiet(0, 8)
	st.unlockQuiet(q)
	if st.seqSum(0, 8) != moved {
		t.Fatal("lockQuiet moved the sequence sum")
	}
}
