package alloc

import (
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"
)

func TestNewRejectsBadConfig(t *testing.T) {
	st := newRecStore()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no buckets", Config{BucketSectors: 8, Store: st}},
		{"no sectors", Config{NBuckets: 8, Store: st}},
		{"no store", Config{NBuckets: 8, BucketSectors: 8}},
		{"short gens", Config{NBuckets: 8, BucketSectors: 8, Store: st, Gens: make([]uint32, 7)}},
		{"reserves eat all", Config{NBuckets: 8, BucketSectors: 8, Store: st, ReserveBtree: 6, ReserveMovingGC: 2}},
		{"negative reserve", Config{NBuckets: 8, BucketSectors: 8, Store: st, ReserveBtree: -1}},
		{"low at reserves", Config{NBuckets: 8, BucketSectors: 8, Store: st, ReserveBtree: 2, LowWater: 2, HighWater: 4}},
		{"high above n", Config{NBuckets: 8, BucketSectors: 8, Store: st, LowWater: 2, HighWater: 9}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatal("New accepted a bad config")
			}
		})
	}
}

// TestReserves: data never takes reserved buckets; btree and moving GC may take
// their own, and take the general list first.
func TestReserves(t *testing.T) {
	type step struct {
		r    Reserve
		want int // successful allocations before ErrNoBuckets
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"data stops at the reserves", []step{{ReserveNone, 5}}},
		{"btree takes general then its reserve", []step{{ReserveBtree, 8}}},
		{"moving gc takes general then its reserve", []step{{ReserveMovingGC, 6}}},
		{"meta without a reserve is like data", []step{{ReserveMeta, 5}}},
		{"btree after data gets exactly its reserve", []step{{ReserveNone, 5}, {ReserveBtree, 3}, {ReserveMovingGC, 1}, {ReserveNone, 0}}},
		{"data after btree gets nothing", []step{{ReserveBtree, 8}, {ReserveNone, 0}, {ReserveMovingGC, 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// 9 buckets: 3 btree + 1 moving GC reserved, 5 general.
			a, _ := newTest(t, Config{NBuckets: 9, ReserveBtree: 3, ReserveMovingGC: 1, LowWater: 5, HighWater: 9})
			fill(t, a)
			if s := a.Stats(); s.FreeByReserve != [NumReserves]int{5, 3, 1, 0} {
				t.Fatalf("free lists %v", s.FreeByReserve)
			}
			for _, st := range tc.steps {
				kind := KindData
				if st.r == ReserveBtree {
					kind = KindBtree
				}
				got := 0
				for {
					_, _, err := a.Alloc(st.r, kind, false)
					if errors.Is(err, ErrNoBuckets) {
						break
					}
					if err != nil {
						t.Fatal(err)
					}
					got++
				}
				if got != st.want {
					t.Fatalf("reserve %s: %d allocations, want %d", st.r, got, st.want)
				}
			}
		})
	}
}

func TestAllocNoWaitEmpty(t *testing.T) {
	a, st := newTest(t, Config{NBuckets: 4})
	_, _, err := a.Alloc(ReserveNone, KindData, false)
	if !errors.Is(err, ErrNoBuckets) || err.Error() != "alloc: no free buckets" {
		t.Fatalf("Alloc on an empty allocator: %v", err)
	}
	if s := a.Stats(); s.Failures != 1 || s.Allocations != 0 {
		t.Fatalf("stats %+v", s)
	}
	if st.ncalls() != 0 {
		t.Fatal("PersistGens called without the allocator goroutine")
	}
	if _, _, err := a.Alloc(ReserveNone, KindFree, false); err == nil {
		t.Fatal("Alloc of kind free accepted")
	}
}

// TestPersistBeforeHandOut: a bucket whose gen was bumped is not handed out until
// PersistGens returned, and then with the persisted gen.
func TestPersistBeforeHandOut(t *testing.T) {
	st := newRecStore()
	st.entered = make(chan struct{})
	st.block = make(chan struct{})
	a, _ := newTest(t, Config{NBuckets: 4, Store: st, Gens: []uint32{7, 7, 7, 7}})
	a.Start()
	<-st.entered // the first batch is being persisted, buckets are not free yet

	type res struct {
		b, g uint32
		err  error
	}
	got := make(chan res, 1)
	go func() {
		b, g, err := a.Alloc(ReserveNone, KindData, true)
		got <- res{b, g, err}
	}()
	for a.Stats().Waits == 0 { // the Alloc is blocked on the empty free lists
		runtime.Gosched()
	}
	if s := a.Stats(); s.Free != 0 || s.Pending != 4 {
		t.Fatalf("free %d pending %d while PersistGens is blocked", s.Free, s.Pending)
	}
	if a.Gen(0) != 8 || !a.IsStale(0, 7) {
		t.Fatal("gen not bumped in memory before persisting")
	}
	select {
	case r := <-got:
		t.Fatalf("Alloc returned %+v before PersistGens did", r)
	default:
	}
	st.block <- struct{}{}
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	if dg, ok := st.durableGen(r.b); !ok || dg != r.g || r.g != 8 {
		t.Fatalf("got bucket %d gen %d, durable gen %d (%v)", r.b, r.g, dg, ok)
	}
	if st.ncalls() != 1 || len(st.calls[0]) != 4 {
		t.Fatalf("want one PersistGens call for the 4 buckets, got %v", st.calls)
	}
	close(st.block) // let later batches through
	a.Close()
}

// TestGenStoreError: a PersistGens error is sticky, wakes waiters with it, and no
// bucket of the failed batch is ever handed out.
func TestGenStoreError(t *testing.T) {
	st := newRecStore()
	boom := errors.New("disk on fire")
	st.fail = boom
	st.block = make(chan struct{})
	a, _ := newTest(t, Config{NBuckets: 4, Store: st})
	var logged []string
	a.logf = func(f string, args ...any) { logged = append(logged, f) }
	a.Start()

	errc := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, _, err := a.Alloc(ReserveBtree, KindBtree, true)
			errc <- err
		}()
	}
	for a.Stats().Waits < 2 {
		runtime.Gosched()
	}
	close(st.block)
	for i := 0; i < 2; i++ {
		if err := <-errc; !errors.Is(err, boom) {
			t.Fatalf("waiter got %v, want %v", err, boom)
		}
	}
	if err := a.Err(); !errors.Is(err, boom) {
		t.Fatalf("Err() = %v", err)
	}
	if _, _, err := a.Alloc(ReserveNone, KindData, false); !errors.Is(err, boom) {
		t.Fatalf("Alloc after the error: %v", err)
	}
	if s := a.Stats(); s.Free != 0 || s.Pending != 4 || s.PersistedGens != 0 {
		t.Fatalf("stats after a failed persist: %+v", s)
	}
	if len(logged) != 1 {
		t.Fatalf("logged %q", logged)
	}
}

// TestNeverInvalidated: dirty, open, btree and meta buckets keep their gens.
func TestNeverInvalidated(t *testing.T) {
	a, _ := newTest(t, Config{NBuckets: 8, LowWater: 1, HighWater: 8})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(a.Load(0, KindData, 8, 4)) // dirty
	must(a.Load(1, KindData, 8, 0)) // opened below
	must(a.Open(1))
	must(a.Load(2, KindBtree, 8, 0))
	must(a.Load(3, KindMeta, 8, 0))
	must(a.Load(4, KindData, 8, 0)) // the only candidate
	must(a.Load(5, KindData, 0, 0)) // empty but allocated: a candidate too
	fill(t, a)
	for b := uint32(0); b < 4; b++ {
		if a.Gen(b) != 0 {
			t.Errorf("bucket %d invalidated (gen %d)", b, a.Gen(b))
		}
	}
	for b := uint32(4); b < 8; b++ {
		if a.Gen(b) != 1 {
			t.Errorf("bucket %d not invalidated (gen %d)", b, a.Gen(b))
		}
	}
	if s := a.Stats(); s.Free != 4 || s.Evictions != 2 || s.Data != 2 || s.Dirty != 1 || s.Open != 1 {
		t.Fatalf("stats %+v", s)
	}
	// Cleaning and closing makes them candidates; btree and meta stay.
	must(a.AddSectors(0, 0, -4))
	must(a.Release(1))
	if n, err := a.invalidate(8); err != nil || n != 2 {
		t.Fatalf("invalidate: %d, %v", n, err)
	}
	if a.Gen(0) != 1 || a.Gen(1) != 1 || a.Gen(2) != 0 || a.Gen(3) != 0 {
		t.Fatalf("gens %d %d %d %d", a.Gen(0), a.Gen(1), a.Gen(2), a.Gen(3))
	}
}

// TestBatching: many freed buckets are persisted with one call per MaxBatch.
func TestBatching(t *testing.T) {
	a, st := newTest(t, Config{NBuckets: 32, LowWater: 1, HighWater: 32, MaxBatch: 10})
	fill(t, a)
	if got := st.ncalls(); got != 4 { // 10+10+10+2
		t.Fatalf("%d PersistGens calls for 32 buckets, want 4", got)
	}
	var bs []uint32
	for i := 0; i < 7; i++ {
		b, _, err := a.Alloc(ReserveNone, KindBtree, false)
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
	}
	for _, b := range bs {
		a.Release(b)
		if err := a.Free(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Free(bs[0]); !errors.Is(err, ErrBadBucket) {
		t.Fatalf("double free: %v", err)
	}
	fill(t, a)
	if got := st.ncalls(); got != 5 || len(st.calls[4]) != 7 {
		t.Fatalf("want one more call with 7 gens, got %v", st.calls[4:])
	}
	for _, b := range bs {
		if a.Gen(b) != 2 {
			t.Fatalf("freed bucket %d has gen %d, want 2", b, a.Gen(b))
		}
	}
}

// TestGenStoreMayAllocate: PersistGens runs without the allocator's mutex, so the
// store may allocate (without waiting) from the meta reserve.
func TestGenStoreMayAllocate(t *testing.T) {
	st := newRecStore()
	a, _ := newTest(t, Config{NBuckets: 16, Store: st, ReserveMeta: 2, LowWater: 8, HighWater: 16, MaxBatch: 4})
	var got []error
	st.hook = func([]GenChange) {
		_, _, err := a.Alloc(ReserveMeta, KindMeta, false)
		got = append(got, err)
		_ = a.Stats()
	}
	fill(t, a)
	if len(got) != 4 || !errors.Is(got[0], ErrNoBuckets) || got[1] != nil {
		t.Fatalf("allocations from inside PersistGens: %v", got)
	}
}

// TestCloseWakesWaiters: Close fails waiting Allocs with ErrClosed and leaves no
// goroutine behind.
func TestCloseWakesWaiters(t *testing.T) {
	before := runtime.NumGoroutine()
	a, _ := newTest(t, Config{NBuckets: 4})
	for b := uint32(0); b < 4; b++ {
		if err := a.Load(b, KindData, 8, 8); err != nil { // all dirty: nothing to invalidate
			t.Fatal(err)
		}
	}
	a.Start()
	const n = 3
	errc := make(chan error, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _, err := a.Alloc(ReserveNone, KindData, true)
			errc <- err
		}()
	}
	for a.Stats().Waits < n {
		runtime.Gosched()
	}
	a.Close()
	wg.Wait()
	for i := 0; i < n; i++ {
		if err := <-errc; !errors.Is(err, ErrClosed) {
			t.Fatalf("waiter got %v", err)
		}
	}
	if _, _, err := a.Alloc(ReserveNone, KindData, true); !errors.Is(err, ErrClosed) {
		t.Fatalf("Alloc after Close: %v", err)
	}
	a.Close() // idempotent
	waitGoroutines(t, before)
}

// TestWaiterWokenByWriteback: a waiter blocked on an all-dirty cache gets a bucket
// once writeback cleans one.
func TestWaiterWokenByWriteback(t *testing.T) {
	now := time.Unix(0, 0)
	var clockMu sync.Mutex
	clock := func() time.Time {
		clockMu.Lock()
		defer clockMu.Unlock()
		now = now.Add(time.Second)
		return now
	}
	a, _ := newTest(t, Config{NBuckets: 2, Clock: clock})
	a.Load(0, KindData, 8, 8)
	a.Load(1, KindData, 8, 8)
	a.Start()
	done := make(chan uint32)
	go func() {
		b, _, err := a.Alloc(ReserveNone, KindData, true)
		if err != nil {
			t.Error(err)
		}
		done <- b
	}()
	for a.Stats().Waits == 0 {
		runtime.Gosched()
	}
	if err := a.AddSectors(1, 0, -8); err != nil {
		t.Fatal(err)
	}
	if b := <-done; b != 1 || a.Gen(1) != 1 {
		t.Fatalf("got bucket %d gen %d", b, a.Gen(b))
	}
	if s := a.Stats(); s.WaitTime != time.Second {
		t.Fatalf("wait time %v", s.WaitTime)
	}
}

func waitGoroutines(t *testing.T, want int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > want {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines, want %d:\n%s", runtime.NumGoroutine(), want, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

func TestAccountingErrors(t *testing.T) {
	a, _ := newTest(t, Config{NBuckets: 4, BucketSectors: 8})
	a.Load(0, KindBtree, 8, 0)
	a.Load(1, KindData, 4, 0)
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"load twice", a.Load(0, KindData, 0, 0)},
		{"load free", a.Load(2, KindFree, 0, 0)},
		{"load out of range", a.Load(9, KindData, 0, 0)},
		{"dirty above live", a.SetUsage(1, 2, 3)},
		{"live above bucket", a.AddSectors(1, 5, 0)},
		{"negative live", a.AddSectors(1, -5, 0)},
		{"data into btree", a.MarkData(0, 1, false)},
		{"usage of a dead bucket", a.SetUsage(3, 0, 0)},
		{"open a dead bucket", a.Open(3)},
		{"release unopened", a.Release(1)},
	} {
		if !errors.Is(tc.err, ErrBadBucket) {
			t.Errorf("%s: %v, want ErrBadBucket", tc.name, tc.err)
		}
	}
	fill(t, a)
	if err := a.Load(2, KindData, 0, 0); !errors.Is(err, ErrBadBucket) {
		t.Errorf("Load after the first refill: %v", err)
	}
	if !a.IsStale(99, 0) {
		t.Error("out-of-range pointer not stale")
	}
}
