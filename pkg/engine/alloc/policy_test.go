package alloc

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func all(uint32) bool { return true }

func TestLRUVictims(t *testing.T) {
	p := NewLRU(8)
	for b := uint32(0); b < 6; b++ {
		p.Add(b)
	}
	p.Touch(0)
	p.Touch(2)
	p.Touch(0)
	p.Remove(4)
	p.Touch(4) // not a member: no-op
	p.Touch(7)
	if got, want := p.order(), []uint32{1, 3, 5, 2, 0}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	if got := p.Victims(2, all); !slices.Equal(got, []uint32{1, 3}) {
		t.Fatalf("victims %v", got)
	}
	odd := func(b uint32) bool { return b%2 == 0 }
	if got := p.Victims(10, odd); !slices.Equal(got, []uint32{2, 0}) {
		t.Fatalf("eligible victims %v", got)
	}
	if err := p.check(); err != nil {
		t.Fatal(err)
	}
}

// TestLRUModel compares LRU against a slice model over random operations.
func TestLRUModel(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 64
	p := NewLRU(n)
	var model []uint32 // least recently used first
	idx := func(b uint32) int { return slices.Index(model, b) }
	for i := 0; i < 20000; i++ {
		b := uint32(rng.IntN(n))
		switch rng.IntN(3) {
		case 0:
			p.Add(b)
			if idx(b) < 0 {
				model = append(model, b)
			}
		case 1:
			p.Touch(b)
			if j := idx(b); j >= 0 {
				model = append(slices.Delete(model, j, j+1), b)
			}
		case 2:
			p.Remove(b)
			if j := idx(b); j >= 0 {
				model = slices.Delete(model, j, j+1)
			}
		}
		if i%97 == 0 {
			if got := p.order(); !slices.Equal(got, model) {
				t.Fatalf("step %d: order %v, model %v", i, got, model)
			}
			if err := p.check(); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestSLRUScanResistance: buckets read once after they were written survive a scan
// of any number of buckets written once; under LRU they do not.
func TestSLRUScanResistance(t *testing.T) {
	const n = 100
	hot := []uint32{0, 1, 2, 3, 4}
	run := func(p Policy) []uint32 {
		for _, b := range hot {
			p.Add(b)
			p.Touch(b)
		}
		for b := uint32(5); b < n; b++ { // the scan: written, never read
			p.Add(b)
		}
		return p.Victims(n-len(hot), all)
	}
	s, err := NewSLRU(n, SLRUConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range run(s) {
		if slices.Contains(hot, b) {
			t.Fatalf("slru evicts hot bucket %d before the scan", b)
		}
	}
	if got := run(NewLRU(n))[:len(hot)]; !slices.Equal(got, hot) {
		t.Fatalf("lru victims %v: the test no longer shows the difference", got)
	}
	if err := s.check(); err != nil {
		t.Fatal(err)
	}
}

func TestSLRUProtectedBound(t *testing.T) {
	p, err := NewSLRU(10, SLRUConfig{ProtectedPercent: 50})
	if err != nil {
		t.Fatal(err)
	}
	for b := uint32(0); b < 10; b++ {
		p.Add(b)
	}
	for b := uint32(0); b < 8; b++ {
		p.Touch(b) // promote 0..7; protected holds at most 5
	}
	// Probation, LRU first: the untouched 8, 9, then demoted 0, 1, 2 (0 demoted
	// first, so it is the least recent of them). Protected: 3..7.
	if got, want := p.order(), []uint32{8, 9, 0, 1, 2, 3, 4, 5, 6, 7}; !slices.Equal(got, want) {
		t.Fatalf("order %v, want %v", got, want)
	}
	p.Touch(3) // protected hit: moves to the front of protected
	if got := p.Victims(10, func(b uint32) bool { return b >= 3 }); !slices.Equal(got, []uint32{8, 9, 4, 5, 6, 7, 3}) {
		t.Fatalf("victims %v", got)
	}
	if err := p.check(); err != nil {
		t.Fatal(err)
	}
}

func TestSLRUPromoteNHit(t *testing.T) {
	p, err := NewSLRU(4, SLRUConfig{PromoteHits: 3, FilterSize: 1024})
	if err != nil {
		t.Fatal(err)
	}
	var got []bool
	for i := 0; i < 7; i++ {
		got = append(got, p.Promote(42))
	}
	if want := []bool{false, false, true, false, false, true, false}; !slices.Equal(got, want) {
		t.Fatalf("promote 42: %v, want %v", got, want)
	}
	off, _ := NewSLRU(4, SLRUConfig{})
	if !off.Promote(1) {
		t.Fatal("filter off must always promote")
	}
	if _, err := NewSLRU(4, SLRUConfig{ProtectedPercent: 100}); err == nil {
		t.Fatal("protected percent 100 accepted")
	}
	// Through the allocator.
	a, _ := newTest(t, Config{NBuckets: 4, Policy: p})
	first, second, third := a.Promote(7), a.Promote(7), a.Promote(7)
	if first || second || !third {
		t.Fatal("Allocator.Promote does not use the policy's filter")
	}
	b, _ := newTest(t, Config{NBuckets: 4})
	if !b.Promote(7) {
		t.Fatal("LRU must always promote")
	}
}
