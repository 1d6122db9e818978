package engine

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
)

// stressScale is how much longer the randomized tests run under CSI_CACHE_STRESS=1.
func stressScale() int {
	if os.Getenv("CSI_CACHE_STRESS") != "" {
		return 20
	}
	return 1
}

// TestVolumeModel runs concurrent random reads, writes, trims, write-zeroes and
// flushes against an in-memory model, while a coordinator switches cache modes,
// shrinks and regrows the volume and runs GC. The cache is smaller than the
// volume, so buckets are evicted and reused under the readers. Each worker owns a
// region of the volume (so its model is exact); after the run every byte is
// compared, the cache set is checked, reopened and compared again.
func TestVolumeModel(t *testing.T) {
	for _, tc := range []struct {
		mode    CacheMode
		backing BackingKind
	}{
		{Writethrough, BackingFile}, {Writeback, BackingFile}, {Writearound, BackingFile},
		{NoCache, BackingFile}, {Writeback, BackingNone},
	} {
		t.Run(tc.mode.String()+"-"+tc.backing.String(), func(t *testing.T) {
			t.Parallel()
			runVolumeModel(t, tc.mode, tc.backing, uint64(len(t.Name())))
		})
	}
}

func runVolumeModel(t *testing.T, mode CacheMode, backing BackingKind, seed uint64) {
	const (
		workers    = 4
		regionSize = 1 << 20
		volSize    = workers * regionSize
	)
	cfg := volTestConfig()
	cfg.BucketSize = 64 << 10
	cacheSize := int64(3 << 20) // smaller than the volume: evictions
	if backing == BackingNone {
		cacheSize = 12 << 20 // a cache-only volume must fit
	}
	e := newVolEnv(t, cacheSize, cfg)
	v, err := e.c.CreateVolume(VolumeSpec{Name: "model", Size: volSize, Mode: mode, Backing: backing, SeqCutoff: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	models := make([][]byte, workers)
	for i := range models {
		models[i] = make([]byte, regionSize)
	}
	var pause sync.RWMutex // workers hold it shared per op; resize takes it
	ops := 250 * stressScale()
	errc := make(chan error, workers+1)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			base := int64(w) * regionSize
			m := models[w]
			for i := 0; i < ops; i++ {
				off := rng.IntN(regionSize/512) * 512
				n := min((1+rng.IntN(32))*512, regionSize-off)
				if rng.IntN(4) == 0 { // the 4 KiB fast path
					off = off / 4096 * 4096
					n = min(4096*(1+rng.IntN(4)), regionSize-off)
				}
				pause.RLock()
				var err error
				switch r := rng.IntN(100); {
				case r < 45:
					p := randBytes(rng, n)
					if err = v.WriteAt(p, base+int64(off), rng.IntN(8) == 0); err == nil {
						copy(m[off:], p)
					}
				case r < 75:
					got := make([]byte, n)
					if err = v.ReadAt(got, base+int64(off)); err == nil && !bytes.Equal(got, m[off:off+n]) {
						err = fmt.Errorf("worker %d op %d: read %d+%d differs", w, i, off, n)
					}
				case r < 82:
					if err = v.Trim(base+int64(off), int64(n)); err == nil {
						clear(m[off : off+n])
					}
				case r < 89:
					if err = v.WriteZeroes(base+int64(off), int64(n), rng.IntN(2) == 0); err == nil {
						clear(m[off : off+n])
					}
				case r < 94:
					err = v.Flush()
				default:
					got := make([]byte, regionSize)
					if err = v.ReadAt(got, base); err == nil && !bytes.Equal(got, m) {
						err = fmt.Errorf("worker %d op %d: region differs", w, i)
					}
				}
				pause.RUnlock()
				if err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	var cwg sync.WaitGroup
	cwg.Add(1)
	go func() { // the coordinator
		defer cwg.Done()
		rng := rand.New(rand.NewPCG(seed, 99))
		modes := []CacheMode{Writethrough, Writeback, Writearound, NoCache}
		for {
			select {
			case <-done:
				return
			case <-time.After(time.Duration(2+rng.IntN(10)) * time.Millisecond):
			}
			var err error
			switch r := rng.IntN(10); {
			case r < 4 && backing != BackingNone:
				err = v.SetCacheMode(modes[rng.IntN(len(modes))])
			case r < 6:
				err = e.c.GC()
			case r < 7:
				// Shrink past the last worker's region tail and grow back: the
				// cut range reads zeroes afterwards.
				pause.Lock()
				cut := uint64(rng.IntN(regionSize/512)) * 512
				if err = v.Resize(volSize - cut); err == nil {
					err = v.Resize(volSize)
					clear(models[workers-1][regionSize-cut:])
				}
				pause.Unlock()
			}
			if err != nil {
				errc <- fmt.Errorf("coordinator: %w", err)
				return
			}
		}
	}()
	wg.Wait()
	close(done)
	cwg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	verify := func(when string) {
		t.Helper()
		got := make([]byte, volSize)
		if err := v.ReadAt(got, 0); err != nil {
			t.Fatalf("%s: %v", when, err)
		}
		for w := range workers {
			if g := got[w*regionSize : (w+1)*regionSize]; !bytes.Equal(g, models[w]) {
				i := 0
				for g[i] == models[w][i] {
					i++
				}
				j := i
				for j < len(g) && g[j] != models[w][j] {
					j++
				}
				t.Fatalf("%s: region %d differs at bytes %d..%d (sector %d)", when, w, i, j, (w*regionSize+i)/512)
			}
		}
	}
	verify("after the run")
	if err := e.c.Check(); err != nil {
		t.Fatal(err)
	}
	st := v.Stats()
	t.Logf("hits %d misses %d bypassed %d dirty %d writeback %d; set %+v", st.Hits, st.Misses, st.Bypassed,
		st.DirtyBytes, st.WritebackBytes, e.c.Stats())
	if err := v.Flush(); err != nil {
		t.Fatal(err)
	}
	e.reopen()
	if v, err = e.c.Volume("model"); err != nil {
		t.Fatal(err)
	}
	verify("after reopen")
}
