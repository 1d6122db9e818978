//go:build invariants

package engine

import (
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// TestCheckBucketAccounting: Check compares the buckets of the tree with the
// allocator's view. It passes on a tree that went through splits, root changes
// and a reopen, and reports a btree bucket that no node holds (a leak).
func TestCheckBucketAccounting(t *testing.T) {
	cfg := testConfig()
	c, mem := newTestSet(t, 64<<20, cfg)
	rng := rand.New(rand.NewPCG(9, 9))
	for range 1500 {
		if err := c.InsertKeys([]bkey.Key{randKey(rng, 2, 20000)}); err != nil {
			t.Fatal(err)
		}
	}
	if c.stats.rootChanges.Load() == 0 || c.stats.splits.Load() == 0 {
		t.Fatalf("no splits (%d) or root changes (%d)", c.stats.splits.Load(), c.stats.rootChanges.Load())
	}
	mustCheck(t, c)

	b, _, err := c.allocBucket() // a btree bucket no node will ever use
	if err != nil {
		t.Fatal(err)
	}
	err = c.Check()
	if err == nil || !strings.Contains(err.Error(), "leaked") {
		t.Fatalf("Check with btree bucket %d leaked: %v", b, err)
	}
	c.freeBucket(b)
	mustCheck(t, c)

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	c, err = Open(mem.Reopen(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustCheck(t, c)
}

// TestCheckWhileNodesRetire: Check runs while root splits and root merges retire
// dirty leaves in the background, each dropping its journal pin in two steps
// (clear it, then unpin). Check must see a consistent picture: no "entry has
// fewer pins than nodes holding one" that a moment later is not true. (Before
// Check held every node's write lock through the comparison, about one check in
// 200 rounds saw such a mismatch.)
func TestCheckWhileNodesRetire(t *testing.T) {
	cfg := testConfig()
	cfg.ReaperInterval = time.Millisecond
	c, _ := newTestSet(t, 64<<20, cfg)
	defer c.Close()
	stop := make(chan struct{})
	checkErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				checkErr <- nil
				return
			default:
			}
			if errs := c.checkNodeCache(); len(errs) > 0 {
				checkErr <- errors.Join(errs...)
				return
			}
		}
	})
	for range 600 {
		// Grow the root leaf past a split, then delete it all: the root splits
		// and merges back, retiring dirty leaves that hold pins.
		for i := uint64(0); i < 20; i++ {
			if err := c.InsertKeys([]bkey.Key{{Vol: 1, Start: i * 4, Len: 2, Ptr: bkey.Ptr{Bucket: 900}}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.InsertKeys([]bkey.Key{{Vol: 1, Start: 0, Len: 100, Flags: bkey.FlagWhiteout}}); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if err := <-checkErr; err != nil {
		t.Fatal(err)
	}
	if c.stats.merges.Load() == 0 || c.stats.rootChanges.Load() == 0 {
		t.Fatalf("%d merges, %d root changes: nothing was retired", c.stats.merges.Load(), c.stats.rootChanges.Load())
	}
	mustCheck(t, c)
}
