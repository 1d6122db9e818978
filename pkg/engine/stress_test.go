//go:build invariants

package engine

import (
	"errors"
	"fmt"
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

// stressEnv reports whether the long runs were asked for (make stress).
func stressEnv() bool { return os.Getenv("CSI_CACHE_STRESS") != "" }

// stressDuration is how long the run with the fix on lasts: short in make test,
// longer under make stress (CSI_CACHE_STRESS=1).
func stressDuration() time.Duration {
	switch {
	case stressEnv():
		return 30 * time.Second
	case testing.Short():
		return 500 * time.Millisecond
	}
	return 2 * time.Second
}

// faultBudget bounds the run with the fault switch on, which stops at the
// first wrong-node flush (typically well under a second: 0.2-3.3 s in 12 runs
// under -race on 2 cores; 12 s once on a machine loaded 10 times over).
func faultBudget() time.Duration {
	if stressEnv() {
		return 2 * time.Minute
	}
	return 30 * time.Second
}

// stallLimit is how long the watchdog lets the workload go without a journal
// entry written, an insert or a lookup completing before it calls it a deadlock. It is a hang
// detector, not a speed assertion: a healthy run completes something every few
// milliseconds even under -race on a loaded machine.
const stallLimit = 20 * time.Second

// stressConfig is the load: a tiny journal that is always full, the smallest
// node-cache budget, writers whose journal entries carry many keys (and
// discards, which merge the nodes they leave sparse), readers that
// load nodes so that reaped structs are reused at once, the reaper in a tight
// loop that never writes dirty nodes (only cannibalize, splits and flushWrite
// do), and injected split failures.
func stressConfig(fix bool, wrong *wrongNodes) Config {
	var splitMu sync.Mutex
	splitRng := rand.New(rand.NewPCG(3, 4))
	cfg := testConfig()
	cfg.NodeCacheNodes = minNodeBudget
	cfg.JournalSize = 16 * 4096
	cfg.NodeMaxKeys = 32
	cfg.NodeCacheWait = 5 * time.Second
	cfg.ReaperInterval = time.Millisecond
	cfg.knobs = testingKnobs{
		DisableJournalFlushFix: !fix,
		// Widen the window between selection and flush.
		AfterSelect: func([]flushSelection) { runtime.Gosched(); time.Sleep(20 * time.Microsecond) },
		WrongNode:   wrong.record,
		SplitFail: func() error {
			splitMu.Lock()
			defer splitMu.Unlock()
			if splitRng.IntN(50) == 0 {
				return errInjectedSplit
			}
			return nil
		},
	}
	return cfg
}

// wrongNodes counts the wrong-node flushes flushWrite detected, by what had
// become of the struct it selected.
type wrongNodes struct {
	total, freed, reused atomic.Uint64
}

// record is the WrongNode hook: it runs with now.writeMu held.
func (w *wrongNodes) record(s flushSelection, now *node) {
	w.total.Add(1)
	if now.state == stateLive {
		w.reused.Add(1) // reaped (or freed) and given to another btree node
	} else {
		w.freed.Add(1) // freed by nodeFree or reaped, not reused yet
	}
}

const (
	stressVols    = 4
	stressSectors = 20000
)

// stressBatch is one write's metadata: up to 64 adjacent extents of one volume,
// journaled in one entry.
func stressBatch(r *rand.Rand) []bkey.Key {
	n := 8 + r.IntN(57)
	vol := 1 + r.Uint64N(stressVols)
	lba := r.Uint64N(stressSectors - 64*8)
	keys := make([]bkey.Key, 0, n)
	for range n {
		l := 1 + r.Uint32N(8)
		k := bkey.Key{Vol: vol, Start: lba, Len: l, Ptr: bkey.Ptr{Bucket: 100 + r.Uint32N(50), Offset: r.Uint32N(64)}}
		switch r.IntN(10) {
		case 0:
			k.Flags, k.Ptr = bkey.FlagWhiteout, bkey.Ptr{}
		case 1, 2, 3:
			k.Flags = bkey.FlagDirty
		}
		keys = append(keys, k)
		lba += uint64(l)
	}
	return keys
}

type stressResult struct {
	elapsed                time.Duration
	inserts, keys, lookups int64
	entries                uint64 // journal entries written
	flushRuns, flushNodes  uint64
	wrongNode, wrongFreed  uint64
	wrongReused            uint64
	cleaned, writtenOthers uint64 // flushWrite found the node cleaned / written by others
	reapSkips, freeWaits   uint64 // near misses: reaper skipped a flagged node, nodeFree waited
	splits, splitFails     uint64
	merges                 uint64
	jStalls, jFlushCalls   int64
	nodeWrites, cannibal   uint64
	pinErrors              int64
	stalled                bool
	maxJournalGap          time.Duration // longest time without a journal entry written
	stacks                 string
	peak, budget           int
}

// runStress runs the load for d (or, with stopOnWrongNode, until the first
// wrong-node flush) with the journalFlush fix on or off, then stops it, checks and
// closes the cache set.
func runStress(t *testing.T, fix bool, d time.Duration, stopOnWrongNode bool) stressResult {
	var wrong wrongNodes
	cfg := stressConfig(fix, &wrong)
	goroutines := runtime.NumGoroutine()
	c, _ := newTestSet(t, 256<<20, cfg)
	jstats0 := c.jnl.Stats()

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var inserts, keys, lookups atomic.Int64
	var firstErr atomic.Value
	fail := func(err error) { firstErr.CompareAndSwap(nil, err) }
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(w), 99))
			for !stopped() {
				batch := stressBatch(r)
				if r.IntN(8) == 0 { // a discard: merges the nodes it leaves sparse
					batch = []bkey.Key{{Vol: batch[0].Vol, Start: batch[0].Start, Len: 64 + r.Uint32N(449), Flags: bkey.FlagWhiteout}}
				}
				err := c.InsertKeys(batch)
				if err != nil && !errors.Is(err, errInjectedSplit) {
					fail(fmt.Errorf("writer %d: %w", w, err))
					return
				}
				inserts.Add(1)
				keys.Add(int64(len(batch)))
				if r.IntN(8) == 0 { // a cache fill: compare-and-swap, not journaled
					k := stressBatch(r)[0]
					if k.Whiteout() {
						continue
					}
					if _, err := c.ReplaceKey(k, nil); err != nil && !errors.Is(err, errInjectedSplit) {
						fail(fmt.Errorf("writer %d: fill: %w", w, err))
						return
					}
				}
			}
		}()
	}
	for rd := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(rd), 7))
			for !stopped() {
				v := 1 + r.Uint64N(stressVols)
				s := r.Uint64N(stressSectors)
				if _, err := c.Lookup(v, s, s+2000); err != nil {
					fail(fmt.Errorf("reader %d: %w", rd, err))
					return
				}
				lookups.Add(1)
			}
		}()
	}
	wg.Add(1)
	go func() { // the reaper in a tight loop, besides the background one
		defer wg.Done()
		for !stopped() {
			c.shrink(0, false)
			time.Sleep(50 * time.Microsecond)
		}
	}()

	// Watch: stop at the deadline, at the first error, at the first wrong-node
	// flush if asked, or when nothing completes for stallLimit (a deadlock).
	res := stressResult{budget: c.nc.budget}
	start := time.Now()
	deadline := time.After(d)
	tick := time.NewTicker(10 * time.Millisecond)
	var lastSeq uint64
	var lastInserts, lastLookups int64
	seqAt, insertAt, lookupAt := start, start, start
watch:
	for {
		select {
		case <-deadline:
			break watch
		case <-tick.C:
		}
		if firstErr.Load() != nil || stopOnWrongNode && wrong.total.Load() > 0 {
			break
		}
		now := time.Now()
		if seq := c.jnl.DurableSeq(); seq != lastSeq {
			res.maxJournalGap = max(res.maxJournalGap, now.Sub(seqAt))
			lastSeq, seqAt = seq, now
		}
		if p := inserts.Load(); p != lastInserts {
			lastInserts, insertAt = p, now
		}
		if p := lookups.Load(); p != lastLookups {
			lastLookups, lookupAt = p, now
		}
		if now.Sub(seqAt) > stallLimit || now.Sub(insertAt) > stallLimit || now.Sub(lookupAt) > stallLimit {
			res.stalled = true
			buf := make([]byte, 1<<20)
			res.stacks = string(buf[:runtime.Stack(buf, true)])
			break
		}
	}
	tick.Stop()
	close(stop)
	res.elapsed = time.Since(start)
	res.maxJournalGap = max(res.maxJournalGap, time.Since(seqAt))
	if res.stalled {
		// Deadlocked goroutines cannot be unblocked: report and leave them.
		t.Errorf("for %v no journal entry (last %v ago), insert (%v) or lookup (%v) completed: deadlock; goroutines:\n%s",
			stallLimit, time.Since(seqAt), time.Since(insertAt), time.Since(lookupAt), res.stacks)
		return res
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		t.Fatalf("stress: %v", err)
	}

	js := c.jnl.Stats()
	c.nc.mu.Lock()
	res.reapSkips = c.nc.stats.ReapSkipFlush
	res.freeWaits = c.nc.stats.NodeFreeWaits
	res.cannibal = c.nc.stats.Cannibalized
	res.peak = c.nc.peak
	c.nc.mu.Unlock()
	res.inserts, res.keys, res.lookups = inserts.Load(), keys.Load(), lookups.Load()
	res.entries = uint64(js.Writes - jstats0.Writes)
	res.flushRuns = c.stats.flushWriteRuns.Load()
	res.flushNodes = c.stats.flushWriteNodes.Load()
	res.wrongNode, res.wrongFreed, res.wrongReused = wrong.total.Load(), wrong.freed.Load(), wrong.reused.Load()
	res.cleaned = c.stats.flushCleanedByOthers.Load()
	res.writtenOthers = c.stats.flushWrittenByOthers.Load()
	res.splits = c.stats.splits.Load()
	res.splitFails = c.stats.splitFailures.Load()
	res.merges = c.stats.merges.Load()
	res.jStalls, res.jFlushCalls = js.Stalls-jstats0.Stalls, js.FlushCalls-jstats0.FlushCalls
	res.nodeWrites = c.stats.nodeWrites.Load()
	res.pinErrors = js.PinErrors

	if fix {
		mustCheck(t, c)
	}
	if err := c.Close(); err != nil && fix {
		t.Fatalf("Close: %v", err)
	}
	// No goroutine outlives Close.
	for i := 0; ; i++ {
		n := runtime.NumGoroutine()
		if n <= goroutines {
			break
		}
		if i > 500 {
			buf := make([]byte, 1<<20)
			t.Errorf("%d goroutines after Close, %d before:\n%s", n, goroutines, buf[:runtime.Stack(buf, true)])
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	return res
}

func (r stressResult) log(t *testing.T, name string) {
	s := r.elapsed.Seconds()
	t.Logf("%s: %.2fs; %d inserts (%d keys, %.0f/s), %d lookups; journal: %d entries, %d stalls, %d flush calls; "+
		"flushWrite: %d runs (%.0f/s), %d nodes written, wrong-node %d (struct freed %d, reused %d); longest journal gap %v; near misses: reaper skipped flagged %d, nodeFree waited %d, "+
		"cleaned by others %d, written by others %d; splits %d (injected failures %d), merges %d, node writes %d, cannibalized %d; node cache peak %d of %d",
		name, s, r.inserts, r.keys, float64(r.inserts)/s, r.lookups, r.entries, r.jStalls, r.jFlushCalls,
		r.flushRuns, float64(r.flushRuns)/s, r.flushNodes, r.wrongNode, r.wrongFreed, r.wrongReused, r.maxJournalGap.Round(time.Millisecond), r.reapSkips, r.freeWaits,
		r.cleaned, r.writtenOthers, r.splits, r.splitFails, r.merges, r.nodeWrites, r.cannibal, r.peak, r.budget)
}

// TestStressJournalFlushRace is the journal-flush race under load (issue #3):
// with the fix, no wrong-node flush, no pin error, the journal keeps moving and
// nothing leaks; with the fault switch on, the run reports the bug.
func TestStressJournalFlushRace(t *testing.T) {
	t.Run("fix", func(t *testing.T) {
		r := runStress(t, true, stressDuration(), false)
		r.log(t, "fix")
		if r.stalled {
			return
		}
		if r.wrongNode != 0 {
			t.Errorf("%d wrong-node flushes with the fix on", r.wrongNode)
		}
		if r.pinErrors != 0 {
			t.Errorf("%d journal pin errors (a pin went negative or was taken after reclaim)", r.pinErrors)
		}
		// The journal was full (writers stalled, flushWrite ran) and still moved.
		if r.jStalls == 0 || r.flushRuns == 0 || r.entries < 10 {
			t.Errorf("journal never full or not moving: %d stalls, %d flushWrite runs, %d entries", r.jStalls, r.flushRuns, r.entries)
		}
		if r.peak > r.budget {
			t.Errorf("node cache peak %d over budget %d", r.peak, r.budget)
		}
	})
	t.Run("fault", func(t *testing.T) {
		r := runStress(t, false, faultBudget(), true)
		r.log(t, "fault")
		if !r.stalled && r.wrongNode == 0 {
			t.Errorf("with the fix off, %d flushWrite runs found no wrong-node flush", r.flushRuns)
		}
	})
}
