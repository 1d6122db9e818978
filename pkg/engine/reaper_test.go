//go:build invariants

package engine

import (
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// moveToTailLocked makes n the oldest node of the live list. Caller holds nc.mu.
func (nc *nodeCache) moveToTailLocked(n *node) {
	l := &nc.live
	l.remove(n)
	n.prev, n.next = l.tail, nil
	if l.tail != nil {
		l.tail.next = n
	} else {
		l.head = n
	}
	l.tail = n
	l.n++
}

// TestShrinkFlushListChangesDuringWrite: a flushing shrink writes a dirty node
// with the cache lock released; meanwhile the node it was to visit next is reaped
// (by the background reaper or cannibalize). The sweep must not go on from that
// node, which is no longer on the live list: it would lock a free struct (and
// deadlock with an mcaAlloc that pops it while holding the cache lock) or move it
// from the live list it is not on, corrupting both lists. The stress test found it
// as a hang.
func TestShrinkFlushListChangesDuringWrite(t *testing.T) {
	cfg := testConfig()
	cfg.ReaperInterval = time.Hour // the test drives the reaper
	cfg.NodeCacheNodes = 64
	cfg.JournalSize = 4 << 20
	mem := device.NewMem(64 << 20)
	if err := Format(mem, cfg); err != nil {
		t.Fatal(err)
	}
	var gateOff atomic.Int64 // bucket offset of the write to hold; 0: none
	entered, release := make(chan struct{}), make(chan struct{})
	gated := device.NewFault(mem.Reopen(), func(op device.Op, off, n int64) error {
		if g := gateOff.Load(); op == device.OpWrite && g != 0 && off >= g && off < g+int64(cfg.BucketSize) {
			if gateOff.CompareAndSwap(g, 0) {
				close(entered)
				<-release
			}
		}
		return nil
	})
	c, err := Open(gated, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rng := rand.New(rand.NewPCG(5, 5))
	for i := 0; i < 600; i++ {
		if err := c.InsertKeys([]bkey.Key{randKey(rng, 2, 20000)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.flushAll(); err != nil {
		t.Fatal(err)
	}
	// A: a dirty leaf, the oldest on the live list; B: a clean leaf just before it.
	k := bkey.Key{Vol: 1, Start: 100, Len: 4, Ptr: bkey.Ptr{Bucket: 120}}
	if err := c.InsertKeys([]bkey.Key{k}); err != nil {
		t.Fatal(err)
	}
	leafAt := func(pos bkey.Pos) *node {
		c.treeMu.RLock()
		defer c.treeMu.RUnlock()
		n, err := c.findLeaf(pos, false)
		if err != nil {
			t.Fatal(err)
		}
		n.lock.RUnlock()
		return n
	}
	a := leafAt(k.StartPos())
	b := leafAt(bkey.Pos{Vol: 2, LBA: 19000})
	if a == b {
		t.Fatal("want two different leaves")
	}
	nc := c.nc
	nc.mu.Lock()
	nc.moveToTailLocked(b)
	nc.moveToTailLocked(a)
	a.accessed.Store(false)
	b.accessed.Store(false)
	gateOff.Store(c.layout.BucketOffset(a.bucket))
	nc.mu.Unlock()

	done := make(chan struct{})
	go func() {
		c.shrink(0, true)
		close(done)
	}()
	<-entered // shrink is writing A without the cache lock
	nc.mu.Lock()
	if !c.reapLocked(b) {
		nc.mu.Unlock()
		t.Fatal("B could not be reaped")
	}
	nc.freeable.pushFront(b)
	b.lock.Unlock()
	b.accessed.Store(true) // set by a user that looked it up a moment ago
	nc.mu.Unlock()
	close(release)
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("shrink did not return")
	}
	if err := nc.boundedListCheck(); err != nil {
		t.Fatalf("after a flushing shrink: %v", err)
	}
	if b.state == stateLive {
		t.Fatal("B was put back on the live list")
	}
	mustCheck(t, c)
}

// boundedListCheck walks the live and freeable lists with a bound, so a list
// made cyclic by a bug fails instead of hanging Check.
func (nc *nodeCache) boundedListCheck() error {
	nc.mu.Lock()
	defer nc.mu.Unlock()
	for _, l := range []struct {
		name  string
		list  *nodeList
		state nodeState
	}{{"live", &nc.live, stateLive}, {"freeable", &nc.freeable, stateFreeable}} {
		count := 0
		var last *node
		for n := l.list.head; n != nil; n = n.next {
			if count++; count > l.list.n {
				return fmt.Errorf("%s list longer than its count %d (cyclic?)", l.name, l.list.n)
			}
			if n.prev != last {
				return fmt.Errorf("%s list: broken prev link at element %d", l.name, count)
			}
			if n.state != l.state {
				return fmt.Errorf("%s list holds a %s node", l.name, n.state)
			}
			last = n
		}
		if count != l.list.n || last != l.list.tail {
			return fmt.Errorf("%s list: counted %d of %d, tail ok %v", l.name, count, l.list.n, last == l.list.tail)
		}
	}
	return nil
}

// TestSplitWaitsForNodeCache: a split needs new node structs while every cached
// node is dirty and the oldest one is selected by a flushWrite that has not
// flushed yet, so cannibalize finds nothing to steal for a moment. The split
// must wait for the flusher (as a lookup does), not fail with "node cache full".
func TestSplitWaitsForNodeCache(t *testing.T) {
	var armed atomic.Bool
	parked, release := make(chan []flushSelection, 1), make(chan struct{})
	cfg := testConfig()
	cfg.ReaperInterval = time.Hour
	cfg.NodeCacheNodes = minNodeBudget
	cfg.NodeMaxKeys = 32
	cfg.JournalSize = 4 << 20
	cfg.knobs = testingKnobs{AfterSelect: func(sel []flushSelection) {
		if armed.CompareAndSwap(true, false) {
			parked <- sel
			<-release
		}
	}}
	c, _ := newTestSet(t, 64<<20, cfg)
	defer c.Close()
	// Two levels: a root over ~16 leaves of ~15 keys, all clean, none cached.
	for i := uint64(0); i < 250; i++ {
		if err := c.InsertKeys([]bkey.Key{{Vol: 1, Start: i * 10, Len: 5, Ptr: bkey.Ptr{Bucket: 100}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.flushAll(); err != nil {
		t.Fatal(err)
	}
	if c.root.level != 1 {
		t.Fatalf("root level %d, want 1", c.root.level)
	}
	c.shrink(0, false)
	// Dirty leaf after leaf until the cache is full of dirty leaves (and the root).
	var last bkey.Pos // a key in the newest dirty leaf
	for lba := uint64(0); ; lba += 10 {
		if lba >= 2400 {
			t.Fatal("the cache never filled with dirty leaves")
		}
		last = bkey.Pos{Vol: 1, LBA: lba}
		if err := c.InsertKeys([]bkey.Key{{Vol: 1, Start: lba + 6, Len: 1, Ptr: bkey.Ptr{Bucket: 101}}}); err != nil {
			t.Fatal(err)
		}
		c.shrink(0, false) // drops spare structs and clean nodes
		c.nc.mu.Lock()
		full := c.nc.live.n == c.nc.budget
		c.nc.mu.Unlock()
		if full {
			break
		}
	}
	armed.Store(true)
	flushed := make(chan struct{})
	go func() { c.flushWrite(); close(flushed) }()
	sel := <-parked
	if len(sel) == 0 {
		t.Fatal("flushWrite selected nothing")
	}
	// Split the newest dirty leaf (not selected: the selection takes the oldest
	// first and stops at flushWriteMax).
	c.treeMu.RLock()
	lastLeaf, err := c.findLeaf(last, false)
	c.treeMu.RUnlock()
	if err != nil {
		t.Fatal(err)
	}
	last = lastLeaf.min
	lastLeaf.lock.RUnlock()
	for _, s := range sel {
		if s.n == lastLeaf {
			t.Fatal("the leaf to split was selected")
		}
	}
	fails := func() uint64 {
		c.nc.mu.Lock()
		defer c.nc.mu.Unlock()
		return c.nc.stats.CannibalizeFails
	}
	splitErr := make(chan error, 1)
	go func() {
		splits := c.stats.splits.Load()
		// Single sectors in the gaps between the leaf's keys (at 10i .. 10i+5).
		for i := uint64(0); c.stats.splits.Load() == splits && i < 60; i++ {
			k := bkey.Key{Vol: 1, Start: last.LBA + 10*(i%20) + 7 + i/20, Len: 1, Ptr: bkey.Ptr{Bucket: 102}}
			if err := c.InsertKeys([]bkey.Key{k}); err != nil {
				splitErr <- err
				return
			}
		}
		splitErr <- nil
	}()
	for deadline := time.Now().Add(10 * time.Second); fails() == 0; {
		select {
		case err := <-splitErr:
			close(release)
			<-flushed
			t.Fatalf("the split finished (error %v) before it met a full cache", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the split never met a full node cache")
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	<-flushed
	if err := <-splitErr; err != nil {
		t.Fatalf("split with a momentarily full node cache: %v", err)
	}
	mustCheck(t, c)
}
