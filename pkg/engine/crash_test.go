//go:build invariants

package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// Crash consistency of the metadata (issue #3): a random workload of InsertKeys,
// ReplaceKey (fills and writeback completions) and Commit runs on a device.Crash
// that loses or tears every unsynced write at a crash point chosen among the
// workload's IOs; the cache set must reopen, pass Check, and hold every key
// committed before the last completed Commit (or something written after it).

const (
	crashVols    = 2
	crashSectors = 3000
)

// crashConfig is a small cache set with the smallest journal. With a small node
// cache, cannibalize writes dirty nodes at arbitrary points; with a large one,
// leaves stay dirty, the journal fills and flushWrite writes them.
func crashConfig(smallCache bool) Config {
	cfg := testConfig()
	cfg.JournalSize = 64 << 10
	cfg.JournalDelay = -1 // entries are written for a commit or for space only
	cfg.NodeCacheNodes = 128
	if smallCache {
		cfg.NodeCacheNodes = minNodeBudget
	}
	cfg.ReaperInterval = time.Hour
	cfg.NodeCacheWait = 2 * time.Second
	// Every key points into one data bucket, which must not be evicted (its
	// keys would be dead; verify accepts that, but the test would say less).
	cfg.knobs.NoEviction = true
	return cfg
}

// sval is what a sector maps to: nothing, or a sector of the data bucket.
type sval struct {
	set   bool
	off   uint32 // sector offset in the data bucket
	dirty bool
}

func (v sval) String() string {
	if !v.set {
		return "-"
	}
	if v.dirty {
		return fmt.Sprintf("%d*", v.off)
	}
	return fmt.Sprint(v.off)
}

// sectorHist is the history of one sector: vals[0] is its value at the start of
// the run, each write appends. After a crash the sector may hold any of
// vals[committed:]: the last journaled value a completed Commit (or Close)
// covered, or anything written after it. Uncommitted writes may survive, and
// unjournaled fills and writeback completions may be lost even after a clean
// Close: reopen replays the journal from the newest jset's last_seq, and a
// replayed key undoes a compare-and-swap made after it (by design: losing one
// costs a cache miss or a second writeback).
type sectorHist struct {
	vals      []sval
	journaled int // index of the newest value written by InsertKeys
	committed int
}

// crashModel is the per-sector truth of a single-threaded workload.
type crashModel struct {
	data    bkey.Ptr // the data bucket every key points into (Offset unused)
	sectors map[bkey.Pos]*sectorHist
	touched map[bkey.Pos]bool // journaled since the last completed Commit
}

func newCrashModel(data bkey.Ptr) *crashModel {
	return &crashModel{data: data, sectors: map[bkey.Pos]*sectorHist{}, touched: map[bkey.Pos]bool{}}
}

// clone returns a model whose sectors start at m's current values.
func (m *crashModel) clone() *crashModel {
	c := newCrashModel(m.data)
	for p, h := range m.sectors {
		c.sectors[p] = &sectorHist{vals: []sval{h.cur()}}
	}
	return c
}

// observe returns a model whose sectors start at what c holds.
func observe(c *CacheSet, data bkey.Ptr) (*crashModel, error) {
	m := newCrashModel(data)
	for v := uint64(1); v <= crashVols; v++ {
		keys, err := c.Lookup(v, 0, crashSectors)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			for lba := k.Start; lba < min(k.End(), crashSectors); lba++ {
				m.sectors[bkey.Pos{Vol: v, LBA: lba}] = &sectorHist{vals: []sval{m.keyVal(k, lba)}}
			}
		}
	}
	return m, nil
}

func (h *sectorHist) cur() sval { return h.vals[len(h.vals)-1] }

func (m *crashModel) hist(p bkey.Pos) *sectorHist {
	h := m.sectors[p]
	if h == nil {
		h = &sectorHist{vals: []sval{{}}}
		m.sectors[p] = h
	}
	return h
}

func (m *crashModel) keyVal(k bkey.Key, lba uint64) sval {
	if k.Whiteout() {
		return sval{}
	}
	return sval{set: true, off: k.Ptr.Offset + uint32(lba-k.Start), dirty: k.Dirty()}
}

// insert records a journaled insert, issued (it may fail part-way).
func (m *crashModel) insert(k bkey.Key) {
	for lba := k.Start; lba < k.End(); lba++ {
		p := bkey.Pos{Vol: k.Vol, LBA: lba}
		h := m.hist(p)
		h.vals = append(h.vals, m.keyVal(k, lba))
		h.journaled = len(h.vals) - 1
		m.touched[p] = true
	}
}

// replace records ReplaceKey(k, expect) as bkey.Set.ReplaceIf applies it.
func (m *crashModel) replace(k bkey.Key, expect *bkey.Key) {
	for lba := k.Start; lba < k.End(); lba++ {
		p := bkey.Pos{Vol: k.Vol, LBA: lba}
		cur := m.hist(p).cur()
		switch {
		case expect == nil && cur.set:
			continue
		case expect != nil && (lba < expect.Start || lba >= expect.End() || cur != m.keyVal(*expect, lba)):
			continue
		}
		h := m.hist(p)
		h.vals = append(h.vals, m.keyVal(k, lba))
	}
}

// commit records a completed Commit.
func (m *crashModel) commit() {
	for p := range m.touched {
		h := m.sectors[p]
		h.committed = h.journaled
	}
	clear(m.touched)
}

// closed records a clean Close, which commits as Commit does.
func (m *crashModel) closed() { m.commit() }

// verify compares the reopened cache set with the model.
func (m *crashModel) verify(c *CacheSet) error {
	got := map[bkey.Pos]sval{}
	for v := uint64(1); v <= crashVols; v++ {
		keys, err := c.Lookup(v, 0, crashSectors)
		if err != nil {
			return fmt.Errorf("lookup vol %d: %w", v, err)
		}
		for _, k := range keys {
			if k.Ptr.Bucket != m.data.Bucket || k.Ptr.Gen != m.data.Gen {
				return fmt.Errorf("key %v does not point into the data bucket %d gen %d", k, m.data.Bucket, m.data.Gen)
			}
			for lba := k.Start; lba < min(k.End(), crashSectors); lba++ {
				got[bkey.Pos{Vol: v, LBA: lba}] = m.keyVal(k, lba)
			}
		}
	}
	// Reopening refills the free lists, which may evict the clean data
	// bucket: its keys are then dead (replay drops them, readers miss).
	evicted := c.alloc.IsStale(m.data.Bucket, m.data.Gen)
	var errs []error
	for p, h := range m.sectors {
		g := got[p]
		ok := evicted && g == (sval{})
		for _, v := range h.vals[h.committed:] {
			ok = ok || v == g
		}
		if !ok {
			errs = append(errs, fmt.Errorf("sector %d:%d holds %v, want one of %v (history %v)", p.Vol, p.LBA, g, h.vals[h.committed:], h.vals))
		}
		delete(got, p)
	}
	for p, g := range got {
		errs = append(errs, fmt.Errorf("sector %d:%d holds %v, never written", p.Vol, p.LBA, g))
	}
	if len(errs) > 5 {
		errs = append(errs[:5], fmt.Errorf("... %d more", len(errs)-5))
	}
	return errors.Join(errs...)
}

// verifyCurrent compares the running cache set with the model's current values:
// the model's semantics of fills and writeback completions must be exact.
func (m *crashModel) verifyCurrent(c *CacheSet) error { return m.clone().verify(c) }

// crashWorkload is a seeded sequence of operations on a cache set.
type crashWorkload struct {
	rng     *rand.Rand
	m       *crashModel
	nextOff *uint32 // data offsets are never reused, so every write is told apart
	// journalHeavy: mostly writes each committed at once, so that the journal
	// fills behind dirty leaves and flushWrite must write them.
	journalHeavy bool
}

func (w *crashWorkload) key(maxLen uint64) bkey.Key {
	r := w.rng
	l := 1 + r.Uint64N(maxLen)
	k := bkey.Key{Vol: 1 + r.Uint64N(crashVols), Start: r.Uint64N(crashSectors - l), Len: uint32(l),
		Ptr: bkey.Ptr{Bucket: w.m.data.Bucket, Gen: w.m.data.Gen, Offset: *w.nextOff}}
	*w.nextOff += uint32(l)
	return k
}

// step runs one operation and updates the model. An error ends the workload.
func (w *crashWorkload) step(c *CacheSet) error {
	r := w.rng
	op := r.IntN(20)
	if w.journalHeavy {
		switch {
		case op < 14:
			if err := w.write(c); err != nil {
				return err
			}
			return w.commit(c)
		case op < 16:
			op = 10 // a fill
		case op < 17:
			op = 12 // a writeback completion
		default:
			op = 19 // a commit
		}
	}
	switch {
	case op == 0: // a burst of one-sector keys with gaps: splits up to the root
		n := 30 + r.IntN(31)
		k := w.key(1)
		k.Start = min(k.Start, crashSectors-2*uint64(n))
		keys := make([]bkey.Key, 0, n)
		for range n {
			k.Flags = uint8(r.IntN(2)) * bkey.FlagDirty
			keys = append(keys, k)
			w.m.insert(k)
			k.Start += 2
			k.Ptr.Offset = *w.nextOff
			*w.nextOff++
		}
		return c.InsertKeys(keys)
	case op < 3: // a discard: deletes 64-512 sectors, merging sparse nodes
		k := w.key(1)
		k.Len = 64 + r.Uint32N(449)
		k.Start = min(k.Start, crashSectors-uint64(k.Len))
		k.Flags, k.Ptr = bkey.FlagWhiteout, bkey.Ptr{}
		w.m.insert(k)
		return c.InsertKeys([]bkey.Key{k})
	case op < 10:
		return w.write(c)
	case op < 12: // a cache-miss fill
		k := w.key(32)
		w.m.replace(k, nil)
		_, err := c.ReplaceKey(k, nil)
		return err
	case op < 13: // a writeback completion: mark a dirty extent clean
		start := r.Uint64N(crashSectors - 64)
		v := 1 + r.Uint64N(crashVols)
		keys, err := c.Lookup(v, start, start+64)
		if err != nil {
			return err
		}
		for _, e := range keys {
			if e.Dirty() {
				k := e
				k.Flags &^= bkey.FlagDirty
				w.m.replace(k, &e)
				_, err := c.ReplaceKey(k, &e)
				return err
			}
		}
		return nil
	default:
		return w.commit(c)
	}
}

// commit commits and records it in the model.
func (w *crashWorkload) commit(c *CacheSet) error {
	if err := c.Commit(); err != nil {
		return err
	}
	w.m.commit()
	return nil
}

// write is a write's metadata: up to 10 keys, adjacent or scattered.
func (w *crashWorkload) write(c *CacheSet) error {
	r := w.rng
	n := 1 + r.IntN(10)
	keys := make([]bkey.Key, 0, n)
	adjacent := r.IntN(2) == 0
	for i := range n {
		k := w.key(16)
		if adjacent && i > 0 {
			prev := keys[i-1]
			if prev.End()+uint64(k.Len) >= crashSectors {
				break
			}
			k.Vol, k.Start = prev.Vol, prev.End()
		}
		switch r.IntN(10) {
		case 0:
			k.Flags, k.Ptr = bkey.FlagWhiteout, bkey.Ptr{}
		case 1, 2, 3, 4:
			k.Flags = bkey.FlagDirty
		}
		keys = append(keys, k)
	}
	for _, k := range keys {
		w.m.insert(k)
	}
	return c.InsertKeys(keys)
}

// crashBase is a formatted image holding a committed tree, and its model.
type crashBase struct {
	img     *device.Mem
	m       *crashModel
	nextOff uint32
}

// newCrashBase formats a small device, allocates the data bucket, runs ops
// operations and closes the cache set cleanly.
func newCrashBase(t testing.TB, ops int) *crashBase {
	cfg := crashConfig(false)
	mem := device.NewMem(32 << 20)
	if err := Format(mem, cfg); err != nil {
		t.Fatalf("Format: %v", err)
	}
	c, err := Open(mem.Reopen(), cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	b, gen, err := c.alloc.Alloc(alloc.ReserveNone, alloc.KindData, true)
	if err != nil {
		t.Fatalf("allocate the data bucket: %v", err)
	}
	base := &crashBase{img: mem, m: newCrashModel(bkey.Ptr{Bucket: b, Gen: gen})}
	w := &crashWorkload{rng: rand.New(rand.NewPCG(1, 1)), m: base.m, nextOff: &base.nextOff}
	for range ops {
		if err := w.step(c); err != nil {
			t.Fatalf("base workload: %v", err)
		}
	}
	if err := base.m.verifyCurrent(c); err != nil {
		t.Fatalf("base workload: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// The runs start from what a reopen of the image holds (see sectorHist).
	c, err = Open(mem.Reopen(), cfg)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if base.m, err = observe(c, base.m.data); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	return base
}

// crashRun is one run of the workload on a copy of the base image.
type crashRun struct {
	seed       uint64
	smallCache bool // also the default mix; else a journal-heavy one
	ops        int
	point      int64 // crash at this IO; < 0: no armed crash point (power lost after Close)
	mode       device.CrashMode
}

type crashOutcome struct {
	ios      uint64 // IOs the run did (crash point included)
	crashed  bool   // the crash point was hit (else power was lost after Close)
	opsDone  int
	closedOK bool
	// What the workload exercised before the crash.
	splits, rootChanges, compactions, flushWrites uint64
	merges                                        uint64
	journalStalls                                 int64
}

// crashRunLimit bounds one run: a run that takes longer hangs (a run takes
// tens of milliseconds).
const crashRunLimit = time.Minute

// run runs the workload, crashes, reopens and verifies, or reports a hang.
func (b *crashBase) run(r crashRun) (crashOutcome, error) {
	type result struct {
		out crashOutcome
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := b.run1(r)
		done <- result{out, err}
	}()
	select {
	case res := <-done:
		return res.out, res.err
	case <-time.After(crashRunLimit):
		buf := make([]byte, 1<<20)
		return crashOutcome{}, fmt.Errorf("run hangs; goroutines:\n%s", buf[:runtime.Stack(buf, true)])
	}
}

func (b *crashBase) run1(r crashRun) (crashOutcome, error) {
	var out crashOutcome
	cfg := crashConfig(r.smallCache)
	img := b.img.Clone()
	dev := device.NewCrash(img)
	crashRng := rand.New(rand.NewPCG(r.seed, uint64(r.point)))
	if r.point >= 0 {
		dev.CrashAt(uint64(r.point), crashRng, r.mode)
	}
	m := b.m.clone()
	nextOff := b.nextOff
	w := &crashWorkload{rng: rand.New(rand.NewPCG(r.seed, 2)), m: m, nextOff: &nextOff, journalHeavy: !r.smallCache}

	c, err := Open(dev, cfg)
	if err == nil {
		for range r.ops {
			if err = w.step(c); err != nil {
				break
			}
			out.opsDone++
		}
		if err == nil && r.point < 0 {
			err = m.verifyCurrent(c)
			if err != nil {
				c.Close()
				return out, fmt.Errorf("in memory before Close: %w", err)
			}
		}
		out.splits, out.rootChanges = c.stats.splits.Load(), c.stats.rootChanges.Load()
		out.compactions, out.flushWrites = c.stats.compactions.Load(), c.stats.flushWriteRuns.Load()
		out.journalStalls = c.jnl.Stats().Stalls
		out.merges = c.stats.merges.Load()
		if cerr := c.Close(); err == nil && cerr == nil {
			m.closed()
			out.closedOK = true
		} else if err == nil {
			err = cerr
		}
	}
	out.ios = dev.IOs()
	out.crashed = dev.Crashed()
	if err != nil && !out.crashed {
		return out, fmt.Errorf("workload failed without a crash: %w", err)
	}
	if !out.crashed {
		if cerr := dev.Crash(crashRng, r.mode); cerr != nil {
			return out, fmt.Errorf("crash: %w", cerr)
		}
	}

	// The small budget matters while the workload runs; the reopened set only
	// replays, checks and reads, so it caches the whole tree.
	cfg2 := afterPowerLoss(cfg)
	cfg2.NodeCacheNodes = 1024
	c2, err := Open(img.Reopen(), cfg2)
	if err != nil {
		return out, fmt.Errorf("reopen: %w", err)
	}
	defer c2.Close()
	if err := c2.Check(); err != nil {
		return out, fmt.Errorf("check after reopen: %w", err)
	}
	if err := m.verify(c2); err != nil {
		return out, fmt.Errorf("contents after reopen: %w", err)
	}
	if err := c2.Close(); err != nil {
		return out, fmt.Errorf("close after reopen: %w", err)
	}
	return out, nil
}

// crashPlan is how many workloads (seeds) and crash points per workload run.
func crashPlan() (seeds, points int) {
	switch {
	case stressEnv():
		return 40, 250
	case testing.Short():
		return 4, 50
	}
	return 10, 100 // about 50 s (20 s of CPU) under -race on 2 shared cores
}

// TestCrashMetadata crashes a workload at random IOs and checks each reopen.
func TestCrashMetadata(t *testing.T) {
	const ops = 40
	start := time.Now()
	// A three-level tree, and an empty one (whose root is rewritten again and
	// again as it grows: root changes).
	bases := []*crashBase{newCrashBase(t, 80), newCrashBase(t, 0)}
	seeds, points := crashPlan()
	modes := []device.CrashMode{device.DropAll, device.KeepRandom, device.KeepPrefix}
	total, crashed, closes := 0, 0, 0
	var ios uint64
	var sum crashOutcome
	for s := range seeds {
		seed := uint64(100 + s)
		// Learn the workload's IO count, with power lost after a clean Close.
		base, small := bases[s%2], s/2%2 == 0
		cal, err := base.run(crashRun{seed: seed, smallCache: small, ops: ops, point: -1, mode: modes[s%3]})
		if err != nil {
			t.Fatalf("seed %d without a crash point: %v", seed, err)
		}
		t.Logf("workload %d (%s base, node cache %d%s): %d IOs, %d splits, %d merges, %d root changes, %d flushWrite runs, %d journal stalls",
			seed, map[bool]string{true: "deep", false: "empty"}[s%2 == 0], crashConfig(small).NodeCacheNodes,
			map[bool]string{true: "", false: ", journal-heavy"}[small],
			cal.ios, cal.splits, cal.merges, cal.rootChanges, cal.flushWrites, cal.journalStalls)
		ios += cal.ios
		sum.splits += cal.splits
		sum.merges += cal.merges
		sum.rootChanges += cal.rootChanges
		sum.compactions += cal.compactions
		sum.flushWrites += cal.flushWrites
		sum.journalStalls += cal.journalStalls
		rng := rand.New(rand.NewPCG(seed, 3))
		for i := range points {
			run := crashRun{seed: seed, smallCache: small, ops: ops, point: int64(rng.Uint64N(cal.ios)), mode: modes[i%3]}
			out, err := base.run(run)
			if err != nil {
				t.Fatalf("seed %d, crash at IO %d of ~%d (%v), after %d ops: %v", seed, run.point, cal.ios, run.mode, out.opsDone, err)
			}
			total++
			if out.crashed {
				crashed++
			}
			if out.closedOK {
				closes++
			}
		}
	}
	t.Logf("%d crash points over %d workloads of %d ops (%.0f IOs each on average; per workload %.1f splits, %.1f merges, %.1f root changes, "+
		"%.1f compactions, %.1f flushWrite runs, %.1f journal stalls): %d hit, %d runs finished and closed first; %.1fs",
		total, seeds, ops, float64(ios)/float64(seeds), float64(sum.splits)/float64(seeds), float64(sum.merges)/float64(seeds),
		float64(sum.rootChanges)/float64(seeds),
		float64(sum.compactions)/float64(seeds), float64(sum.flushWrites)/float64(seeds), float64(sum.journalStalls)/float64(seeds),
		crashed, closes, time.Since(start).Seconds())
	if crashed < total*3/4 {
		t.Errorf("only %d of %d crash points were hit", crashed, total)
	}
}
