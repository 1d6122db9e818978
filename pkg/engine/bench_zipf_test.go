package engine

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/sim"
)

// BenchmarkEngineZipf: 4 KiB reads drawn from Zipf(0.99) over a volume ten
// times the cache, by 32 readers, with a backing store that takes 1 ms per IO,
// against the same reads of the backing store alone. It reports, beside iops
// and x-peer, the engine's hit ratio over the measured reads (hit%) and what
// simulations of the same trace (warm-up included) give at the number of blocks
// the engine held at the end (cached-MiB):
//
//	lru%     block-granular LRU
//	blru%    LRU over whole buckets filled in miss order (the engine's shape)
//	opt%     Belady's optimum
//
// Each policy has its own cache set, warmed up until it is full (warm-reads);
// the trace is the same.
func BenchmarkEngineZipf(b *testing.B) {
	const (
		cacheSize = 128 << 20
		volSize   = 10 * cacheSize
		readers   = 32
		latency   = time.Millisecond
	)
	dir := b.TempDir()
	blocks := int(volSize / blockSize)
	z, err := sim.NewZipf(blocks, 0.99, 1)
	if err != nil {
		b.Fatal(err)
	}
	tr := &zipfTrace{z: z}
	for _, policy := range []string{"lru", "slru"} {
		var e *zipfEnv
		b.Run("policy="+policy, func(b *testing.B) {
			if e == nil {
				e = newZipfEnv(b, filepath.Join(dir, policy), policy, cacheSize, volSize, latency)
				e.warm(b, tr, cacheSize/blockSize, readers)
			}
			e.bench(b, tr, readers)
		})
		if e != nil {
			e.s.close(b)
		}
	}
}

// zipfTrace is a trace drawn as needed; every cache set replays it from the
// start.
type zipfTrace struct {
	z *sim.Zipf
	t []uint64
}

func (t *zipfTrace) upTo(n int) []uint64 {
	for len(t.t) < n {
		t.t = append(t.t, t.z.Next())
	}
	return t.t[:n]
}

type zipfEnv struct {
	s         *benchSet
	v         *Volume
	backing   device.Device // the volume's backing store: 1 ms per IO over memory
	pos       int           // trace position
	warmReads int           // reads of the warm-up
}

func newZipfEnv(b *testing.B, dir, policy string, cacheSize, volSize int64, latency time.Duration) *zipfEnv {
	e := &zipfEnv{}
	cfg := Config{Policy: policy}
	cfg.OpenBacking = func(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
		// Unwritten memory reads as zeroes: no pattern to check, and no memory
		// taken for a volume ten times the cache.
		e.backing = device.NewDelay(device.NewMem(size), device.DelayOptions{Read: latency, Write: latency, Sync: latency})
		return e.backing, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	e.s = newBenchSet(b, dir, "cache.img", cacheSize, cfg)
	v, err := e.s.c.CreateVolume(VolumeSpec{Name: "zipf", Size: uint64(volSize), SeqCutoff: NoSeqCutoff})
	if err != nil {
		b.Fatal(err)
	}
	e.v = v
	return e
}

// warm reads the trace in chunks of chunk blocks until the cache holds no
// more than a chunk earlier (LRU fills every miss and is full after a few
// chunks; SLRU caches a region on its second miss and takes many more), at
// least 4 chunks and at most 60. It reports the reads it took as warm-reads.
func (e *zipfEnv) warm(b *testing.B, tr *zipfTrace, chunk int64, readers int) {
	prev := 0
	for i := 1; ; i++ {
		e.read(b, tr, int(chunk), readers)
		waitFills(e.s.c)
		held := e.cachedBlocks(b)
		if i >= 4 && held < prev+prev/100 || i == 60 {
			break
		}
		prev = held
	}
	e.warmReads = e.pos
}

// read reads the next n blocks of the trace through the volume.
func (e *zipfEnv) read(b *testing.B, tr *zipfTrace, n, readers int) time.Duration {
	trace := tr.upTo(e.pos + n)[e.pos:]
	e.pos += n
	bufs := workerBufs(readers, blockSize)
	d, err := runOps(n, readers, func(w, i int) error {
		return e.v.ReadAt(bufs[w], int64(trace[i])*blockSize)
	})
	if err != nil {
		b.Fatal(err)
	}
	return d
}

func (e *zipfEnv) bench(b *testing.B, tr *zipfTrace, readers int) {
	from := e.pos
	before := e.v.Stats()
	bufs := workerBufs(readers, blockSize)
	peerPos := from
	pair{
		engine: func(lo, hi int) (time.Duration, error) {
			b.StopTimer() // drawing the trace is not the engine's time
			trace := tr.upTo(e.pos + hi - lo)[e.pos:]
			e.pos += hi - lo
			b.StartTimer()
			return runOps(hi-lo, readers, func(w, i int) error {
				return e.v.ReadAt(bufs[w], int64(trace[i])*blockSize)
			})
		},
		peer: func(lo, hi int) (time.Duration, error) {
			trace := tr.upTo(peerPos + hi - lo)[peerPos:]
			peerPos += hi - lo
			return runOps(hi-lo, readers, func(w, i int) error {
				_, err := e.backing.ReadAt(bufs[w], int64(trace[i])*blockSize)
				return err
			})
		},
		// The peer's speed is the delay: a few thousand reads tell it.
		peerOps: 8 * 1024,
		cache:   e.s.c,
	}.run(b)
	st := e.v.Stats()
	hits, misses := st.Hits-before.Hits, st.Misses-before.Misses
	b.ReportMetric(100*float64(hits)/float64(max(hits+misses, 1)), "hit%")
	b.ReportMetric(float64(e.warmReads), "warm-reads")
	if b.N < 1000 {
		return
	}
	// Simulations over the whole trace the engine read, counting the measured
	// part, at the number of blocks the engine holds now.
	waitFills(e.s.c)
	held := e.cachedBlocks(b)
	trace := tr.upTo(e.pos)
	bucketBlocks := int(e.s.c.sb.BucketSize) / blockSize
	b.ReportMetric(float64(held)*blockSize/(1<<20), "cached-MiB")
	b.ReportMetric(100*sim.LRU(trace, held, from).HitRatio(), "lru%")
	b.ReportMetric(100*sim.BucketLRU(trace, held/bucketBlocks, bucketBlocks, from).HitRatio(), "blru%")
	b.ReportMetric(100*sim.OPT(trace, held, from).HitRatio(), "opt%")
}

// cachedBlocks counts the 4 KiB blocks of the volume the cache holds.
func (e *zipfEnv) cachedBlocks(b *testing.B) int {
	c, v := e.s.c, e.v
	keys, err := c.lookup(v.id, 0, v.size.Load()/sectorSize)
	if err != nil {
		b.Fatal(err)
	}
	var sectors uint64
	for _, k := range keys {
		if !k.Whiteout() && !c.alloc.IsStale(k.Ptr.Bucket, k.Ptr.Gen) {
			sectors += uint64(k.Len)
		}
	}
	return int(sectors * sectorSize / blockSize)
}
