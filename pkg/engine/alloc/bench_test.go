package alloc

import (
	"fmt"
	"testing"
)

type nopStore struct{}

func (nopStore) PersistGens([]GenChange) error { return nil }

// BenchmarkAllocFree measures the Alloc/Release/Free cycle through the allocator
// goroutine (each freed bucket is gen-bumped and persisted before reuse).
func BenchmarkAllocFree(b *testing.B) {
	for _, par := range []bool{false, true} {
		b.Run(fmt.Sprintf("parallel=%v", par), func(b *testing.B) {
			a, err := New(Config{NBuckets: 4096, BucketSectors: 1024, Store: nopStore{}, ReserveBtree: 8, ReserveMovingGC: 4})
			if err != nil {
				b.Fatal(err)
			}
			a.Start()
			defer a.Close()
			cycle := func() {
				bk, _, err := a.Alloc(ReserveBtree, KindBtree, true)
				if err != nil {
					b.Fatal(err)
				}
				a.Release(bk)
				a.Free(bk)
			}
			b.ReportAllocs()
			b.ResetTimer()
			if par {
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						cycle()
					}
				})
			} else {
				for i := 0; i < b.N; i++ {
					cycle()
				}
			}
		})
	}
}

// BenchmarkEvict measures allocation when every bucket must come from evicting a
// clean data bucket chosen by the policy.
func BenchmarkEvict(b *testing.B) {
	for _, name := range []string{"lru", "slru"} {
		b.Run(name, func(b *testing.B) {
			const n = 4096
			var p Policy = NewLRU(n)
			if name == "slru" {
				p, _ = NewSLRU(n, SLRUConfig{})
			}
			a, err := New(Config{NBuckets: n, BucketSectors: 1024, Store: nopStore{}, Policy: p})
			if err != nil {
				b.Fatal(err)
			}
			a.Start()
			defer a.Close()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				bk, _, err := a.Alloc(ReserveNone, KindData, true)
				if err != nil {
					b.Fatal(err)
				}
				a.MarkData(bk, 1024, false)
				a.Release(bk)
				if i%4 == 0 {
					a.Touch(bk)
				}
			}
		})
	}
}

func BenchmarkTouch(b *testing.B) {
	const n = 1 << 16
	slru, _ := NewSLRU(n, SLRUConfig{})
	for _, p := range []struct {
		name string
		p    Policy
	}{{"lru", NewLRU(n)}, {"slru", slru}} {
		b.Run(p.name, func(b *testing.B) {
			for i := uint32(0); i < n; i++ {
				p.p.Add(i)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				p.p.Touch(uint32(i*7919) % n)
			}
		})
	}
}
