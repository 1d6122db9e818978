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
