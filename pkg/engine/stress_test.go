//go:build invariants && stresswip

// Work in progress, not run by make test yet: with a 16-block journal the ring is
// reclaimed faster than it fills, so flushWrite never runs under this load, and
// the fault-switch run hangs (not yet diagnosed). Run it with
// go test -tags 'invariants stresswip' -run TestStress ./pkg/engine/

package engine

import (
	"errors"
	"math/rand/v2"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

var errInjectedSplit = errors.New("injected split failure")

// stressDuration is how long each stress run lasts: short in make test, longer
// under make stress (CSI_CACHE_STRESS=1).
func stressDuration() time.Duration {
	if os.Getenv("CSI_CACHE_STRESS") != "" {
		return 30 * time.Second
	}
	if testing.Short() {
		return 500 * time.Millisecond
	}
	return 2 * time.Second
}

type stressResult struct {
	flushRuns, wrongNode, reapSkips, nodeFreeWaits, splitFails uint64
	journalSeqs                                                uint64
	ops                                                        int64
	elapsed                                                    time.Duration
}

// runStress: writers on a tiny journal (always full, so flushWrite runs all the
// time), a node cache at its minimum budget, the reaper sweeping in a tight loop
// (writing dirty nodes as cannibalize does), readers loading nodes so recycled
// structs are reused at once, and injected split failures (nodeFree on the error
// path). The race window after selection is widened with a yield.
func runStress(t *testing.T, fix bool, d time.Duration, stopOnWrongNode bool) stressResult {
	var wrong atomic.Uint64
	var splitRng sync.Mutex
	rng := rand.New(rand.NewPCG(3, 4))
	cfg := testConfig()
	cfg.NodeCacheNodes = minNodeBudget
	cfg.JournalSize = 16 * 4096
	cfg.NodeMaxKeys = 32
	cfg.NodeCacheWait = 5 * time.Second
	cfg.ReaperInterval = time.Millisecond
	cfg.knobs = testingKnobs{
		DisableJournalFlushFix: !fix,
		AfterSelect:            func([]flushSelection) { runtime.Gosched(); time.Sleep(20 * time.Microsecond) },
		WrongNode:              func(flushSelection, *node) { wrong.Add(1) },
		SplitFail: func() error {
			splitRng.Lock()
			defer splitRng.Unlock()
			if rng.IntN(50) == 0 {
				return errInjectedSplit
			}
			return nil
		},
	}
	goroutines := runtime.NumGoroutine()
	c, _ := newTestSet(t, 256<<20, cfg)
	seq0 := c.jnl.Seq()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ops atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) {
		firstErr.CompareAndSwap(nil, err)
	}
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := c.InsertKeys([]bkey.Key{randKey(r, 4, 20000)})
				if err != nil && !errors.Is(err, errInjectedSplit) {
					fail(err)
					return
				}
				ops.Add(1)
			}
		}(w)
	}
	for rd := 0; rd < 2; rd++ {
		wg.Add(1)
		go func(rd int) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(rd), 7))
			for {
				select {
				case <-stop:
					return
				default:
				}
				v := 1 + r.Uint64N(4)
				s := r.Uint64N(20000)
				if _, err := c.Lookup(v, s, s+2000); err != nil {
					fail(err)
					return
				}
			}
		}(rd)
	}
	wg.Add(1)
	go func() { // the reaper in a tight loop; every 16th sweep writes dirty nodes
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			c.shrink(0, i%16 == 0)
			runtime.Gosched()
		}
	}()

	start := time.Now()
	deadline := time.After(d)
	tick := time.NewTicker(5 * time.Millisecond)
loop:
	for {
		select {
		case <-deadline:
			break loop
		case <-tick.C:
			if stopOnWrongNode && wrong.Load() > 0 || firstErr.Load() != nil {
				break loop
			}
		}
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	if err, _ := firstErr.Load().(error); err != nil {
		t.Fatalf("stress: %v", err)
	}

	c.nc.mu.Lock()
	res := stressResult{
		flushRuns:     c.stats.flushWriteRuns.Load(),
		wrongNode:     wrong.Load(),
		reapSkips:     c.nc.stats.ReapSkipFlush,
		nodeFreeWaits: c.nc.stats.NodeFreeWaits,
		splitFails:    c.stats.splitFailures.Load(),
		journalSeqs:   c.jnl.Seq() - seq0,
		ops:           ops.Load(),
		elapsed:       elapsed,
	}
	c.nc.mu.Unlock()
	if fix {
		mustCheck(t, c)
		if pe := c.jnl.Stats().PinErrors; pe != 0 {
			t.Errorf("%d journal pin errors (a pin went negative or was taken after reclaim)", pe)
		}
	}
	if err := c.Close(); err != nil && fix {
		t.Fatalf("Close: %v", err)
	}
	// No goroutine outlives Close.
	for i := 0; ; i++ {
		if n := runtime.NumGoroutine(); n <= goroutines {
			break
		} else if i > 200 {
			t.Errorf("%d goroutines after Close, %d before", n, goroutines)
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return res
}

func (r stressResult) log(t *testing.T, name string) {
	s := r.elapsed.Seconds()
	t.Logf("%s: %.1fs, %d inserts (%.0f/s), flushWrite runs %d (%.0f/s), journal entries %d, wrong-node flushes %d, near misses: reaper skips %d + nodeFree waits %d, injected split failures %d",
		name, s, r.ops, float64(r.ops)/s, r.flushRuns, float64(r.flushRuns)/s, r.journalSeqs, r.wrongNode, r.reapSkips, r.nodeFreeWaits, r.splitFails)
}

func TestStressJournalFlushRace(t *testing.T) {
	t.Run("fix", func(t *testing.T) {
		r := runStress(t, true, stressDuration(), false)
		r.log(t, "fix")
		if r.wrongNode != 0 {
			t.Fatalf("%d wrong-node flushes with the fix on", r.wrongNode)
		}
		if r.flushRuns == 0 || r.journalSeqs < 10 {
			t.Fatalf("journal made no progress: %d flushWrite runs, %d entries", r.flushRuns, r.journalSeqs)
		}
	})
	t.Run("fault", func(t *testing.T) {
		r := runStress(t, false, 4*stressDuration(), true)
		r.log(t, "fault")
		if r.wrongNode == 0 {
			t.Fatalf("with the fix off, %d flushWrite runs found no wrong-node flush", r.flushRuns)
		}
	})
}
