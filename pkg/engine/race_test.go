//go:build invariants

package engine

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// raceHarness parks flushWrite between selection and flush — the race window of
// bcache's btree_flush_write — so a test can run the reaper, cannibalize and
// nodeFree inside it, with the journalFlush fix on or off.
type raceHarness struct {
	t        *testing.T
	c        *CacheSet
	armed    atomic.Bool
	selected chan []flushSelection
	release  chan struct{}

	mu        sync.Mutex
	events    []string
	wrongNode []flushSelection
}

func (h *raceHarness) event(e string) {
	h.mu.Lock()
	h.events = append(h.events, e)
	h.mu.Unlock()
}

func newRaceHarness(t *testing.T, fix bool) *raceHarness {
	h := &raceHarness{t: t, selected: make(chan []flushSelection, 1), release: make(chan struct{})}
	cfg := testConfig()
	cfg.ReaperInterval = time.Hour // the test drives the reaper itself
	cfg.NodeCacheNodes = 64
	cfg.JournalSize = 4 << 20 // big enough that setup never fills it
	cfg.knobs = testingKnobs{
		DisableJournalFlushFix: !fix,
		AfterSelect: func(sel []flushSelection) {
			if !h.armed.CompareAndSwap(true, false) {
				return
			}
			h.selected <- sel
			<-h.release // parked in the race window
			h.event("flush resumed")
		},
		WrongNode: func(s flushSelection, n *node) {
			h.mu.Lock()
			h.wrongNode = append(h.wrongNode, s)
			h.mu.Unlock()
			h.event("wrong node")
		},
		NodeFreeRetry: func(n *node, attempt int) {
			if attempt == 0 {
				h.event("nodeFree waits")
			}
		},
	}
	h.c, _ = newTestSet(t, 64<<20, cfg)
	t.Cleanup(func() { h.c.Close() })
	// A tree several levels deep, all clean, nothing pinned.
	rng := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < 1500; i++ {
		if err := h.c.InsertKeys([]bkey.Key{randKey(rng, 2, 20000)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.c.flushAll(); err != nil {
		t.Fatal(err)
	}
	return h
}

// dirtyLeaf inserts one journaled key and returns the leaf it dirtied, which now
// holds the only pin on the oldest journal entry.
func (h *raceHarness) dirtyLeaf(k bkey.Key) (*node, uint64) {
	h.t.Helper()
	if err := h.c.InsertKeys([]bkey.Key{k}); err != nil {
		h.t.Fatal(err)
	}
	h.c.treeMu.RLock()
	leaf, err := h.c.findLeaf(k.StartPos(), false)
	h.c.treeMu.RUnlock()
	if err != nil {
		h.t.Fatal(err)
	}
	leaf.lock.RUnlock()
	leaf.writeMu.Lock()
	pin, dirty := leaf.pin, leaf.dirty
	leaf.writeMu.Unlock()
	oldest, pins, ok := h.c.jnl.OldestPinned()
	if !dirty || pin == 0 || !ok || oldest != pin || pins != 1 {
		h.t.Fatalf("leaf dirty=%v pin=%d, journal oldest=%d pins=%d ok=%v", dirty, pin, oldest, pins, ok)
	}
	return leaf, pin
}

// startFlush runs flushWrite until it parks after selection and returns its
// selection and a channel closed when it finishes.
func (h *raceHarness) startFlush() ([]flushSelection, chan struct{}) {
	h.armed.Store(true)
	done := make(chan struct{})
	go func() {
		h.c.flushWrite()
		h.event("flush done")
		close(done)
	}()
	select {
	case sel := <-h.selected:
		return sel, done
	case <-time.After(10 * time.Second):
		h.t.Fatal("flushWrite selected nothing")
		return nil, nil
	}
}

// waitOrWatchdog waits for done; a flusher stuck for long is a deadlock.
func waitOrWatchdog(done chan struct{}) (deadlock bool) {
	select {
	case <-done:
		return false
	case <-time.After(20 * time.Second):
		return true
	}
}

// churn makes the node cache reuse every recycled struct: it loads every node of
// the tree again (lookups over the whole key space), so structs the reaper freed
// get new identities through mcaAlloc.
func (h *raceHarness) churn() {
	for v := uint64(1); v <= 2; v++ {
		if _, err := h.c.Lookup(v, 0, 20000); err != nil {
			h.t.Fatal(err)
		}
	}
}

// TestFlushWriteRaceReaper: flushWrite selects a dirty leaf and parks; the
// shrinker, flushing dirty nodes as cannibalize does, sweeps the whole cache and
// the tree is loaded again so recycled structs are reused. With the fix the
// selected node is skipped by the reaper, keeps its identity, and the flush writes
// it and releases the oldest pin. Without it the struct is reaped and reused and
// the flush step finds another node under the pointer it selected.
func TestFlushWriteRaceReaper(t *testing.T) {
	for _, fix := range []bool{true, false} {
		t.Run(map[bool]string{true: "fix", false: "fault"}[fix], func(t *testing.T) {
			h := newRaceHarness(t, fix)
			c := h.c
			leaf, pin := h.dirtyLeaf(bkey.Key{Vol: 1, Start: 5000, Len: 8, Ptr: bkey.Ptr{Bucket: 120}})
			epoch := sel0Epoch(leaf)
			writesBefore := c.stats.flushWriteNodes.Load()

			sel, done := h.startFlush()
			if len(sel) != 1 || sel[0].n != leaf {
				t.Fatalf("selected %d nodes, want the dirty leaf", len(sel))
			}

			// The race window: sweep everything (writing dirty nodes first), then
			// reload the tree so every recycled struct is reused.
			c.shrink(0, true)
			h.churn()
			c.shrink(0, true)
			h.churn()

			close(h.release)
			deadlock := waitOrWatchdog(done)
			c.nc.mu.Lock()
			skips := c.nc.stats.ReapSkipFlush
			c.nc.mu.Unlock()
			wrong := c.stats.flushWrongNode.Load()
			nowEpoch := sel0Epoch(leaf)
			leaf.lock.RLock()
			state := leaf.state
			leaf.lock.RUnlock()
			t.Logf("reaper skips for journalFlush %d, wrong-node flushes %d, deadlock %v, epoch %d -> %d",
				skips, wrong, deadlock, epoch, nowEpoch)

			if fix {
				if deadlock || wrong != 0 {
					t.Fatalf("with the fix: deadlock=%v wrong-node flushes=%d", deadlock, wrong)
				}
				if nowEpoch != epoch || state != stateLive {
					t.Fatalf("selected node was reused: epoch %d -> %d, state %s", epoch, nowEpoch, state)
				}
				if skips == 0 {
					t.Fatal("the reaper never met the flagged node")
				}
				if got := c.stats.flushWriteNodes.Load() - writesBefore; got != 1 {
					t.Fatalf("flush wrote %d nodes, want the one it selected", got)
				}
				if c.jnl.Pins(pin) != 0 {
					t.Fatalf("oldest journal entry %d still pinned", pin)
				}
				mustCheck(t, c)
				return
			}
			if !deadlock && wrong == 0 {
				t.Fatal("with the fix off the race went undetected")
			}
		})
	}
}

// TestFlushWriteRaceNodeFree: flushWrite selects a leaf and parks; the leaf is
// split (inserts into its range), so the split frees it with nodeFree. With the
// fix nodeFree waits until the flush cleared journalFlush; the flush writes the
// node it selected. Without it nodeFree frees the node under the flusher, its
// struct is reused, and the flusher meets the wrong node.
func TestFlushWriteRaceNodeFree(t *testing.T) {
	for _, fix := range []bool{true, false} {
		t.Run(map[bool]string{true: "fix", false: "fault"}[fix], func(t *testing.T) {
			h := newRaceHarness(t, fix)
			c := h.c
			leaf, _ := h.dirtyLeaf(bkey.Key{Vol: 2, Start: 7000, Len: 8, Ptr: bkey.Ptr{Bucket: 121}})
			leaf.lock.RLock()
			lo, hi := leaf.min, leaf.max
			leaf.lock.RUnlock()

			sel, done := h.startFlush()
			if len(sel) != 1 || sel[0].n != leaf {
				t.Fatalf("selected %d nodes, want the dirty leaf", len(sel))
			}

			// Fill the leaf's range until it splits; the split calls nodeFree on it.
			splitDone := make(chan error, 1)
			go func() {
				start := lo.LBA
				if lo.Vol < 2 {
					start = 0
				}
				end := uint64(20000)
				if hi.Vol == 2 {
					end = hi.LBA
				}
				before := c.stats.splits.Load() + c.stats.compactions.Load()
				for i := 0; i < 512 && c.stats.splits.Load()+c.stats.compactions.Load() == before; i++ {
					s := start + uint64(i*2)%max(end-start, 1)
					if err := c.InsertKeys([]bkey.Key{{Vol: 2, Start: s, Len: 1, Ptr: bkey.Ptr{Bucket: 122}}}); err != nil {
						splitDone <- err
						return
					}
				}
				h.event("split done")
				h.churn()
				splitDone <- nil
			}()

			if fix {
				// nodeFree must be waiting for the parked flusher, not done.
				deadline := time.Now().Add(10 * time.Second)
				for {
					c.nc.mu.Lock()
					waits := c.nc.stats.NodeFreeWaits
					c.nc.mu.Unlock()
					if waits > 0 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatal("nodeFree never waited for the flagged node")
					}
					time.Sleep(time.Millisecond)
				}
				select {
				case <-splitDone:
					t.Fatal("split finished while the flusher was parked")
				default:
				}
			} else if err := <-splitDone; err != nil {
				t.Fatal(err)
			}
			close(h.release)
			deadlock := waitOrWatchdog(done)
			if fix {
				if err := <-splitDone; err != nil {
					t.Fatal(err)
				}
			}
			wrong := c.stats.flushWrongNode.Load()
			h.mu.Lock()
			events := append([]string(nil), h.events...)
			h.mu.Unlock()
			t.Logf("events %v; wrong-node flushes %d, deadlock %v", events, wrong, deadlock)
			if fix {
				if deadlock || wrong != 0 {
					t.Fatalf("with the fix: deadlock=%v wrong-node flushes=%d", deadlock, wrong)
				}
				// nodeFree returned only after the flush: the split's completion
				// comes after the flusher resumed.
				if idx(events, "flush resumed") > idx(events, "split done") {
					t.Fatalf("nodeFree returned before the flush cleared journalFlush: %v", events)
				}
				mustCheck(t, c)
				return
			}
			if !deadlock && wrong == 0 {
				t.Fatal("with the fix off the race went undetected")
			}
		})
	}
}

func idx(events []string, e string) int {
	for i, x := range events {
		if x == e {
			return i
		}
	}
	return 1 << 30
}

// sel0Epoch reads a node's identity counter under its lock.
func sel0Epoch(n *node) uint64 {
	n.lock.RLock()
	defer n.lock.RUnlock()
	return n.epoch
}
