package engine

import (
	"math/rand/v2"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// testConfig is a small cache set: 64 KiB buckets, few keys per node (deep trees),
// a small journal.
func testConfig() Config {
	return Config{
		BucketSize:     64 << 10,
		JournalSize:    256 << 10,
		MaxVolumes:     16,
		NodeCacheNodes: 32,
		NodeMaxKeys:    16,
		ReaperInterval: 20 * 1000 * 1000, // 20ms
		BootID:         testBoot,
	}
}

// Boot ids of the tests: every test "boots" as testBoot; a reopen after a
// simulated power loss is a new boot (afterPowerLoss), or the journal would
// trust entries written without a flush, whose data the power loss may have
// dropped. A reopen after a crash of the process keeps testBoot.
var (
	testBoot      = [16]byte{0x7e, 0x57, 15: 1}
	testBootAfter = [16]byte{0x7e, 0x57, 15: 2}
)

// afterPowerLoss returns cfg for the boot after a power loss.
func afterPowerLoss(cfg Config) Config {
	cfg.BootID = testBootAfter
	return cfg
}

// newTestSet formats and opens a cache set on a fresh in-memory device.
func newTestSet(t testing.TB, size int64, cfg Config) (*CacheSet, *device.Mem) {
	t.Helper()
	mem := device.NewMem(size)
	if err := Format(mem, cfg); err != nil {
		t.Fatalf("Format: %v", err)
	}
	c, err := Open(mem.Reopen(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return c, mem
}

func mustCheck(t testing.TB, c *CacheSet) {
	t.Helper()
	if err := c.Check(); err != nil {
		t.Fatalf("Check: %v", err)
	}
}

// model is the per-sector truth the btree is compared against.
type model map[bkey.Pos]bkey.Ptr

func (m model) insert(k bkey.Key) {
	for s := uint64(0); s < uint64(k.Len); s++ {
		p := bkey.Pos{Vol: k.Vol, LBA: k.Start + s}
		if k.Whiteout() {
			delete(m, p)
			continue
		}
		m[p] = bkey.Ptr{Bucket: k.Ptr.Bucket, Offset: k.Ptr.Offset + uint32(s), Gen: k.Ptr.Gen}
	}
}

func compareModel(t testing.TB, c *CacheSet, m model, vols, sectors uint64) {
	t.Helper()
	for v := uint64(1); v <= vols; v++ {
		keys, err := c.Lookup(v, 0, sectors)
		if err != nil {
			t.Fatalf("Lookup vol %d: %v", v, err)
		}
		got := model{}
		for _, k := range keys {
			k = clipKey(k, 0, sectors)
			got.insert(k)
		}
		for s := uint64(0); s < sectors; s++ {
			p := bkey.Pos{Vol: v, LBA: s}
			// A pointer into a bucket invalidated since is dead: the tree may
			// hold it or not (replay drops it), readers treat it as a miss.
			if w, ok := m[p]; ok && c.alloc.IsStale(w.Bucket, w.Gen) && got[p] == (bkey.Ptr{}) {
				continue
			}
			if got[p] != m[p] {
				t.Fatalf("vol %d sector %d: btree %+v, model %+v", v, s, got[p], m[p])
			}
		}
	}
}

func randKey(rng *rand.Rand, vols, sectors uint64) bkey.Key {
	start := rng.Uint64N(sectors - 1)
	l := 1 + rng.Uint64N(min(64, sectors-start))
	k := bkey.Key{Vol: 1 + rng.Uint64N(vols), Start: start, Len: uint32(l),
		Ptr: bkey.Ptr{Bucket: 100 + rng.Uint32N(50), Offset: rng.Uint32N(64), Gen: 0}}
	if rng.IntN(8) == 0 {
		k.Flags, k.Ptr = bkey.FlagWhiteout, bkey.Ptr{}
	}
	if rng.IntN(3) == 0 {
		k.Flags |= bkey.FlagDirty
	}
	return k
}

func TestBtreeInsertLookupReopen(t *testing.T) {
	cfg := testConfig()
	c, mem := newTestSet(t, 64<<20, cfg)
	rng := rand.New(rand.NewPCG(1, 2))
	m := model{}
	const vols, sectors = 3, 20000
	for i := 0; i < 3000; i++ {
		k := randKey(rng, vols, sectors)
		if err := c.InsertKeys([]bkey.Key{k}); err != nil {
			t.Fatalf("insert %d %v: %v", i, k, err)
		}
		m.insert(k)
	}
	mustCheck(t, c)
	compareModel(t, c, m, vols, sectors)
	if c.root.level < 2 {
		t.Errorf("tree has depth %d, want at least 3 levels", c.root.level+1)
	}
	t.Logf("levels %d, splits %d, compactions %d, node writes %d, flushWrite runs %d",
		c.root.level+1, c.stats.splits.Load(), c.stats.compactions.Load(), c.stats.nodeWrites.Load(), c.stats.flushWriteRuns.Load())
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	c2, err := Open(mem.Reopen(), cfg)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	defer c2.Close()
	mustCheck(t, c2)
	compareModel(t, c2, m, vols, sectors)
}
