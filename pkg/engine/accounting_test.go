//go:build invariants

package engine

import (
	"math/rand/v2"
	"strings"
	"testing"

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
