// Package engine is the csi-cache cache engine: one cache set per node, a
// bcache-style btree of extents over buckets of a cache device, a write-ahead
// journal, a bounded btree node cache with a reaper, and a bucket allocator.
//
// The on-disk formats are documented in the sub-packages that encode them:
// ondisk (device layout, superblock, volume table, bucket generations, btree node
// logs) and journal (jsets).
//
// # Lock order
//
// Take locks in this order; never the reverse:
//
//	CacheSet.treeMu             tree shape: shared for lookups and inserts,
//	                            exclusive for splits, compactions and root changes
//	node.lock                   parents before children; the reaper only TryLocks
//	nodeCache.mu                the cache lock (lists, hash, journalFlush selection)
//	node.writeMu                a node's write state and journalFlush flag
//	CacheSet.retireMu           retired roots and held-back node buckets
//	Allocator.mu, Journal.mu    leaves (their packages take no engine lock)
//
// Two rules keep the journal from deadlocking when it is full: nobody waits for
// journal space (Add, or a Commit that opens an entry) while holding a node lock or
// treeMu, and flushWrite — which the journal calls to make space — takes only the
// cache lock and writeMu, never node.lock or treeMu.
package engine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/journal"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// Errors of the engine.
var (
	ErrClosed = errors.New("engine: cache set closed")
	// ErrCorrupt is the class of corruption errors: IsCorruption(err) is true for
	// anything that wraps it (decoders return *ondisk.CorruptionError).
	ErrCorrupt = ondisk.ErrCorrupt
)

// IsCorruption reports whether err is (or wraps) a corruption of on-disk metadata.
func IsCorruption(err error) bool { return ondisk.IsCorruption(err) || errors.Is(err, errCorruptTree) }

// Config configures a cache set. The zero value of every field picks a default.
type Config struct {
	// Format: geometry of a new cache set (ignored by Open, which reads it).
	BucketSize  uint32 // bytes; default 512 KiB
	JournalSize int64  // bytes; default device/64 clamped to [1 MiB, 128 MiB]
	MaxVolumes  int    // default 1024

	// NodeCacheNodes is the node cache budget in nodes (live + reusable structs).
	// Default 256; at least 16.
	NodeCacheNodes int
	// NodeMaxKeys caps the keys per node below what the bucket size allows (tests
	// use it to get deep trees on small devices). 0: no cap.
	NodeMaxKeys int
	// NodeCacheWait is how long a node allocation waits for a node to steal when
	// every cached node is in use. Default 10 s.
	NodeCacheWait time.Duration
	// ReaperInterval is how often the reaper trims the node cache to 3/4 of the
	// budget and writes old dirty nodes. Default 1 s.
	ReaperInterval time.Duration
	// JournalDelay is how long a journal entry stays open without a commit.
	JournalDelay time.Duration
	// BootID identifies the running kernel's boot; zero reads it from
	// /proc/sys/kernel/random/boot_id (CurrentBootID). With a boot id, a write
	// is acknowledged once its journal entry is written unflushed (it survives
	// a crash of the process, not a power loss, until the next flush), and after
	// a reboot unflushed entries that were never made durable are dropped. When
	// no boot id can be had, every journal entry is written flushed.
	BootID [16]byte

	// BackingDir holds the backing files of BackingFile volumes (one sparse file
	// per volume, named by volume id). Required to create such volumes.
	BackingDir string
	// OpenBacking, if set, replaces how backing stores are opened (tests wrap
	// them in fault, delay and crash devices). create asks for a new, empty
	// store of size bytes.
	OpenBacking func(kind BackingKind, path string, size int64, create bool) (device.Device, error)

	// WritebackPercent is the share of the cache that dirty data may fill before
	// writeback speeds up (bcache's writeback_percent). Default 10; negative
	// writes back at full speed always.
	WritebackPercent int
	// GCInterval is how often GC runs without being asked. Default 1 minute.
	GCInterval time.Duration
	// Policy is the replacement policy of clean data buckets: "lru" (default) or
	// "slru" (segmented LRU with n-hit promotion of misses).
	Policy string

	// Logf, if set, receives the engine's rare log lines.
	Logf func(format string, args ...any)

	knobs testingKnobs
}

func (cfg *Config) withDefaults(devSize int64) {
	if cfg.BucketSize == 0 {
		cfg.BucketSize = 512 << 10
	}
	if cfg.JournalSize == 0 {
		j := devSize / 64
		j = max(j, 1<<20)
		j = min(j, 128<<20)
		cfg.JournalSize = j / ondisk.BlockSize * ondisk.BlockSize
	}
	if cfg.MaxVolumes == 0 {
		cfg.MaxVolumes = 1024
	}
	if cfg.NodeMaxKeys != 0 && cfg.NodeMaxKeys < minNodeMaxKeys {
		// A compare-and-swap insert needs room for a few keys per part.
		cfg.NodeMaxKeys = minNodeMaxKeys
	}
	if cfg.NodeCacheNodes == 0 {
		cfg.NodeCacheNodes = 256
	}
	if cfg.NodeCacheWait == 0 {
		cfg.NodeCacheWait = 10 * time.Second
	}
	if cfg.ReaperInterval == 0 {
		cfg.ReaperInterval = time.Second
	}
	if cfg.WritebackPercent == 0 {
		cfg.WritebackPercent = 10
	}
	if cfg.GCInterval == 0 {
		cfg.GCInterval = time.Minute
	}
	if cfg.BootID == ([16]byte{}) {
		cfg.BootID, _ = CurrentBootID() // none: every journal entry is flushed
	}
}

// minNodeMaxKeys is the smallest NodeMaxKeys honoured.
const minNodeMaxKeys = 16

// rootInfo is the btree root as the journal records it.
type rootInfo struct {
	ptr   bkey.Ptr
	level uint8
}

// CacheSet is one cache device with its btree, journal and allocator.
type CacheSet struct {
	cfg    Config
	dev    *device.Counting
	sb     ondisk.Superblock
	layout ondisk.Layout
	jnl    *journal.Journal
	alloc  *alloc.Allocator
	gens   *genStore
	nc     *nodeCache
	knobs  testingKnobs

	treeMu sync.RWMutex // guards root and the shape of the tree (see the lock order)
	root   *node

	rootPtr  atomic.Pointer[rootInfo] // read by the journal writer without locks
	flushing atomic.Bool              // a flushWrite is running

	retireMu sync.Mutex // guards retiring and freeing
	retiring []retiredRoot
	// freeing holds buckets of freed nodes that the durable journal's root may
	// still reach: see freeNodeBucket.
	freeing []retiredBucket
	// rootSeq is the journal entry open when the root last changed: until an
	// entry at least that new is durable, the journal names the old root.
	rootSeq atomic.Uint64

	// stickyErr is the first device error that left the on-disk state behind the
	// in-memory one; once set, every write fails with it.
	// It is read on every IO, so it is an atomic, not a mutex.
	stickyErr atomic.Pointer[error]

	stats engineStats

	vols       volumes
	accounting atomic.Bool // inserts subtract what they displace (off during replay)
	wpClean    writePoint  // clean data: writethrough writes, fills
	wpDirty    writePoint  // dirty data: writeback writes
	fills      chan fillReq

	gcPass     sync.Mutex // one GC pass at a time
	gcMu       sync.Mutex // guards gcRunning, gcDeferred
	gcRunning  bool
	gcDeferred []uint32 // data bucket releases waiting for GC to end
	gcKick     chan struct{}

	closeOnce sync.Once
	closing   atomic.Bool // Close has begun
	closed    chan struct{}
	wake      chan struct{} // 1-buffered: wakes the background loop
	bgDone    sync.WaitGroup
}

// retiredRoot is a replaced root waiting for a journal entry naming the new root
// to be durable.
type retiredRoot struct {
	n   *node
	seq uint64
}

// engineStats are counters updated without locks.
type engineStats struct {
	flushWriteRuns       atomic.Uint64
	flushWriteNodes      atomic.Uint64
	flushWrongNode       atomic.Uint64
	flushCleanedByOthers atomic.Uint64
	flushWrittenByOthers atomic.Uint64
	nodeWrites           atomic.Uint64
	splits               atomic.Uint64
	compactions          atomic.Uint64
	rootChanges          atomic.Uint64
	splitFailures        atomic.Uint64
	merges               atomic.Uint64

	cacheFull      atomic.Uint64 // data allocations that found no free bucket
	fills          atomic.Uint64
	fillsDropped   atomic.Uint64
	fillRaces      atomic.Uint64
	writebackBytes atomic.Uint64
	gcRuns         atomic.Uint64
	gcFreed        atomic.Uint64
}

func (c *CacheSet) setErr(err error) {
	first := c.stickyErr.CompareAndSwap(nil, &err)
	if first && c.cfg.Logf != nil {
		c.cfg.Logf("engine: cache set failed: %v", err)
	}
	if first && c.jnl != nil {
		// Nothing can free journal space any more (node writes fail): writers
		// waiting for it get the error instead of waiting forever.
		c.jnl.Fail(err)
	}
}

// err returns the sticky error, if any.
func (c *CacheSet) err() error {
	if p := c.stickyErr.Load(); p != nil {
		return *p
	}
	return nil
}

// Err reports the error that stopped the cache set from taking writes, if any.
func (c *CacheSet) Err() error { return c.err() }

func (c *CacheSet) syncDev() error {
	if err := c.dev.Sync(); err != nil {
		c.setErr(err)
		return fmt.Errorf("engine: sync cache device: %w", err)
	}
	return nil
}

// allocBucket allocates a bucket for a btree node. When none is free it waits
// for the allocator goroutine to invalidate clean data buckets, up to
// NodeCacheWait; a cache device full of metadata is an error, not a hang.
func (c *CacheSet) allocBucket() (uint32, uint32, error) {
	var b, gen uint32
	var err error
	for waited := time.Duration(0); ; waited += time.Millisecond {
		b, gen, err = c.alloc.Alloc(alloc.ReserveBtree, alloc.KindBtree, false)
		if !errors.Is(err, alloc.ErrNoBuckets) || waited >= c.cfg.NodeCacheWait {
			break
		}
		// Buckets of freed nodes held back for a root change: make the new
		// root durable and free them (the journal's writer takes no engine
		// lock, so committing under treeMu cannot deadlock).
		if c.drainFreeing() {
			continue
		}
		// Wait only while the allocator can refill: dead buckets to bump, or
		// clean data buckets to evict. Every bucket dirty or metadata: fail now.
		if st := c.alloc.Stats(); st.Pending == 0 && st.Data-st.Dirty-st.Open <= 0 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	if err != nil {
		// Buckets emptied by overwrites wait for GC; it cannot run while the
		// caller holds treeMu, so ask for a pass for the next attempt.
		c.kickGC()
		return 0, 0, fmt.Errorf("engine: allocate btree node: %w", err)
	}
	// Btree buckets are never invalidated, so they need not stay open.
	if err := c.alloc.Release(b); err != nil {
		return 0, 0, fmt.Errorf("engine: allocate btree node: %w", err)
	}
	return b, gen, nil
}

// retiredBucket is a freed node's bucket waiting for journal entry seq.
type retiredBucket struct {
	b   uint32
	seq uint64
}

// freeNodeBucket frees the bucket of a node that left the tree. After a root
// change, and until a journal entry naming the new root is durable, a crash
// would reopen the tree from the old root, which may still point at the freed
// node: its bucket must not be reused before then, so it waits with the
// retired roots.
func (c *CacheSet) freeNodeBucket(b uint32) {
	if rs := c.rootSeq.Load(); rs != 0 && c.jnl.DurableSeq() < rs {
		c.retireMu.Lock()
		c.freeing = append(c.freeing, retiredBucket{b: b, seq: rs})
		c.retireMu.Unlock()
		c.kick()
		return
	}
	c.freeBucket(b)
}

// drainFreeing commits the journal up to the newest held-back node bucket and
// frees them all. It reports whether it freed any.
func (c *CacheSet) drainFreeing() bool {
	c.retireMu.Lock()
	var seq uint64
	for _, f := range c.freeing {
		seq = max(seq, f.seq)
	}
	c.retireMu.Unlock()
	if seq == 0 {
		return false
	}
	if err := c.jnl.Commit(seq); err != nil {
		c.setErr(err)
		return false
	}
	return c.freeHeld() > 0
}

// freeHeld frees the held-back node buckets whose journal entry is durable. It
// frees them under the cache lock, as nodeFree does, so that Check sees every
// btree bucket in the tree, cached, held back or free.
func (c *CacheSet) freeHeld() int {
	durable := c.jnl.DurableSeq()
	c.nc.mu.Lock()
	defer c.nc.mu.Unlock()
	c.retireMu.Lock()
	defer c.retireMu.Unlock()
	n := 0
	keep := c.freeing[:0]
	for _, f := range c.freeing {
		if f.seq <= durable {
			c.freeBucket(f.b)
			n++
		} else {
			keep = append(keep, f)
		}
	}
	c.freeing = keep
	return n
}

// freeBucket returns a btree node's bucket to the allocator.
func (c *CacheSet) freeBucket(b uint32) {
	if err := c.alloc.Free(b); err != nil {
		c.setErr(err)
	}
}

// Format writes a new, empty cache set on dev: superblock copies, an empty
// volume table, generation table, a zeroed journal and an empty root node.
func Format(dev device.Device, cfg Config) error {
	cfg.withDefaults(dev.Size())
	l, err := ondisk.ComputeLayout(dev.Size(), cfg.BucketSize, cfg.JournalSize, cfg.MaxVolumes)
	if err != nil {
		return fmt.Errorf("engine: format: %w", err)
	}
	sb := ondisk.NewSuperblock(l, time.Now())
	if err := formatGens(dev, l, sb.SetMagic); err != nil {
		return err
	}
	vt, err := ondisk.EncodeVolTable(ondisk.VolTable{Seq: 1}, sb.SetMagic, l.VolTableSize)
	if err != nil {
		return fmt.Errorf("engine: format: %w", err)
	}
	if _, err := dev.WriteAt(vt, l.VolTableCopyOffset(ondisk.CopyA)); err != nil {
		return fmt.Errorf("engine: format: write volume table: %w", err)
	}
	if err := zeroRange(dev, l.JournalOffset, l.JournalSize); err != nil {
		return fmt.Errorf("engine: format: zero journal: %w", err)
	}
	// The root: an empty leaf in bucket 0, generation 0.
	root := ondisk.EncodeBset(ondisk.BsetHeader{NodeSeq: 1, MaxPos: bkey.MaxPos}, nil, sb.SetMagic)
	if _, err := dev.WriteAt(root, l.BucketOffset(0)); err != nil {
		return fmt.Errorf("engine: format: write root: %w", err)
	}
	// The first jset names the root.
	j, _, err := journal.Open(journal.Config{
		Device: dev, Offset: l.JournalOffset, Size: l.JournalSize, SetMagic: sb.SetMagic,
		Root: func() journal.Root { return journal.Root{Bucket: 0, Gen: 0, Level: 0} },
	})
	if err != nil {
		return fmt.Errorf("engine: format: %w", err)
	}
	j.Start()
	err = j.Commit(j.Seq())
	if cerr := j.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("engine: format: first journal entry: %w", err)
	}
	for _, cp := range []ondisk.Copy{ondisk.CopyA, ondisk.CopyB} {
		if _, err := dev.WriteAt(ondisk.EncodeSuperblock(sb), ondisk.SuperblockOffset(cp)); err != nil {
			return fmt.Errorf("engine: format: write superblock %s: %w", cp, err)
		}
	}
	return dev.Sync()
}

// zeroRange writes zeroes over [off, off+n).
func zeroRange(dev device.Device, off, n int64) error {
	buf := make([]byte, min(n, 1<<20))
	for n > 0 {
		w := min(n, int64(len(buf)))
		if _, err := dev.WriteAt(buf[:w], off); err != nil {
			return err
		}
		off += w
		n -= w
	}
	return nil
}
