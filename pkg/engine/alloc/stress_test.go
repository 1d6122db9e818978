package alloc

import (
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
)

// TestStaleGenMethods: the ...Gen methods refuse a bucket invalidated since.
func TestStaleGenMethods(t *testing.T) {
	a, _ := newTest(t, Config{NBuckets: 4, LowWater: 1, HighWater: 1})
	a.Load(0, KindData, 8, 0)
	a.Load(1, KindData, 8, 0)
	a.Load(2, KindData, 8, 0)
	a.Load(3, KindData, 8, 0)
	if n, err := a.invalidate(1); n != 1 || err != nil {
		t.Fatal(n, err)
	}
	for _, err := range []error{a.FreeGen(0, 0), a.AddSectorsGen(0, 0, -1, 0), a.SetUsageGen(0, 0, 0, 0)} {
		if !errors.Is(err, ErrStale) {
			t.Fatalf("got %v, want ErrStale", err)
		}
	}
	if err := a.AddSectorsGen(1, 0, -8, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.SetUsageGen(2, 0, 4, 0); err != nil {
		t.Fatal(err)
	}
	if err := a.FreeGen(1, 0); err != nil {
		t.Fatal(err)
	}
}

// TestStress runs Alloc/Free/Touch/writeback from many goroutines against the
// running allocator goroutine and checks the safety properties on the way: a
// bucket is handed out only with a durable gen, and an open or dirty bucket is
// never invalidated.
func TestStress(t *testing.T) {
	before := runtime.NumGoroutine()
	st := newRecStore()
	var persists atomic.Int64
	st.hook = func([]GenChange) {
		if persists.Add(1)%3 == 0 {
			runtime.Gosched() // let allocations pile up behind a slow "disk"
		}
	}
	policy, err := NewSLRU(128, SLRUConfig{PromoteHits: 2})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := newTest(t, Config{
		NBuckets: 128, BucketSectors: 16, Store: st, Policy: policy,
		ReserveBtree: 4, ReserveMovingGC: 2, ReserveMeta: 1, MaxBatch: 8,
	})
	a.Start()

	const workers = 6
	iters := 3000
	if testing.Short() {
		iters = 500
	}
	type owned struct{ b, gen uint32 }
	stop := make(chan struct{})
	var checker sync.WaitGroup
	checker.Add(1)
	go func() { // Check and Stats while everything runs
		defer checker.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := a.Check(); err != nil {
				t.Error(err)
				return
			}
			_ = a.Stats()
			runtime.Gosched()
		}
	}()

	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 7))
			var btree, dirty, clean []owned
			fail := func(format string, args ...any) {
				t.Errorf(format, args...)
			}
			alloc := func(r Reserve, k Kind) (owned, bool) {
				b, g, err := a.Alloc(r, k, rng.IntN(4) != 0)
				if errors.Is(err, ErrNoBuckets) {
					return owned{}, false
				}
				if err != nil {
					fail("alloc: %v", err)
					return owned{}, false
				}
				if dg, ok := st.durableGen(b); !ok || dg != g {
					fail("bucket %d handed out with gen %d, durable %d (%v)", b, g, dg, ok)
				}
				return owned{b, g}, true
			}
			for i := 0; i < iters && !t.Failed(); i++ {
				switch op := rng.IntN(10); {
				case op < 3: // write data: clean or dirty
					r := ReserveNone
					if rng.IntN(8) == 0 {
						r = ReserveMovingGC
					}
					o, ok := alloc(r, KindData)
					if !ok {
						continue
					}
					isDirty := len(dirty) < 4 && rng.IntN(2) == 0
					if err := a.MarkData(o.b, 1+rng.IntN(16), isDirty); err != nil {
						fail("mark: %v", err)
					}
					if a.IsStale(o.b, o.gen) {
						fail("open bucket %d invalidated", o.b)
					}
					if err := a.Release(o.b); err != nil {
						fail("release: %v", err)
					}
					if isDirty {
						dirty = append(dirty, o)
					} else {
						clean = append(clean, o)
					}
				case op < 4: // a btree node
					if len(btree) >= 4 {
						o := btree[0]
						btree = btree[1:]
						if err := a.Free(o.b); err != nil {
							fail("free btree: %v", err)
						}
						continue
					}
					if o, ok := alloc(ReserveBtree, KindBtree); ok {
						a.Release(o.b)
						btree = append(btree, o)
					}
				case op < 5: // writeback of the oldest dirty bucket
					if len(dirty) == 0 {
						continue
					}
					o := dirty[0]
					dirty = dirty[1:]
					if a.IsStale(o.b, o.gen) {
						fail("dirty bucket %d invalidated", o.b)
					}
					a.mu.Lock()
					d := int(a.buckets[o.b].dirty)
					a.mu.Unlock()
					if err := a.AddSectorsGen(o.b, o.gen, 0, -d); err != nil {
						fail("writeback: %v", err)
					}
					clean = append(clean, o)
				case op < 6: // GC frees a clean bucket, or finds it gone
					if len(clean) == 0 {
						continue
					}
					j := rng.IntN(len(clean))
					o := clean[j]
					clean = append(clean[:j], clean[j+1:]...)
					if err := a.FreeGen(o.b, o.gen); err != nil && !errors.Is(err, ErrStale) {
						fail("free data: %v", err)
					}
				default: // read hits, promotion decisions
					if len(clean) > 0 {
						o := clean[rng.IntN(len(clean))]
						if !a.IsStale(o.b, o.gen) {
							a.Touch(o.b)
						}
					}
					a.Promote(rng.Uint64N(64))
					if len(clean) > 64 {
						clean = clean[32:]
					}
				}
			}
			// Leave no dirty data behind, so that other workers can finish.
			for _, o := range dirty {
				a.mu.Lock()
				d := int(a.buckets[o.b].dirty)
				a.mu.Unlock()
				if err := a.AddSectorsGen(o.b, o.gen, 0, -d); err != nil {
					fail("final writeback: %v", err)
				}
			}
			for _, o := range btree {
				a.Free(o.b)
			}
		}(uint64(w))
	}
	wg.Wait()
	close(stop)
	checker.Wait()
	if err := a.Check(); err != nil {
		t.Fatal(err)
	}
	s := a.Stats()
	t.Logf("stats: %+v", s)
	if s.Evictions == 0 || s.Allocations == 0 {
		t.Fatalf("the stress did not exercise invalidation: %+v", s)
	}
	a.Close()
	waitGoroutines(t, before)
}
