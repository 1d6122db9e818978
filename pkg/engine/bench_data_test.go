package engine

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// Data-path benchmarks. Each measures the engine and a peer in the same run, in
// interleaved rounds (so that a noisy neighbour slows both), and reports
//
//	iops       the engine's operations per second (ns/op is the engine's too)
//	peer-iops  the peer's
//	x-peer     iops / peer-iops
//
// plus what makes the figure trustworthy (hit%, fill drops, bypassed writes).
// bench/engine-bench.sh runs them repeatedly and prints medians.
//
// The cache device is a file in a temporary directory, opened with
// device.OpenFile with O_DIRECT when the filesystem allows it (the "direct"
// metric says whether it did; the page cache would otherwise serve cache hits
// from memory). ENGINE_BENCH_CACHE_IO=buffered opens it buffered instead, as
// the driver's OpenCacheDevice does today.

const blockSize = 4096

// benchSet is a cache set on a file.
type benchSet struct {
	dir    string
	path   string
	direct bool
	c      *CacheSet
}

// newBenchSet formats and opens a cache set of size bytes on a new file in dir.
// Volumes' backing files go to dir unless cfg.OpenBacking says otherwise.
func newBenchSet(b *testing.B, dir, name string, size int64, cfg Config) *benchSet {
	b.Helper()
	path := filepath.Join(dir, name)
	direct := os.Getenv("ENGINE_BENCH_CACHE_IO") != "buffered"
	dev, err := device.OpenFile(path, device.FileOptions{Direct: direct, Create: true, Size: size})
	if err != nil {
		b.Fatalf("open cache file: %v", err)
	}
	if cfg.BackingDir == "" {
		cfg.BackingDir = dir
	}
	if err := Format(dev, cfg); err != nil {
		b.Fatalf("Format: %v", err)
	}
	c, err := Open(dev, cfg)
	if err != nil {
		b.Fatalf("Open: %v", err)
	}
	return &benchSet{dir: dir, path: path, direct: dev.DirectIO(), c: c}
}

func (s *benchSet) close(b *testing.B) {
	if err := s.c.Close(); err != nil {
		b.Errorf("Close: %v", err)
	}
	os.Remove(s.path)
}

// runOps runs ops 0..n-1 on workers goroutines, each op once, and returns the
// time it took. op gets the worker's index (for per-worker buffers).
func runOps(n, workers int, op func(w, i int) error) (time.Duration, error) {
	var next atomic.Int64
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				if err := op(w, i); err != nil {
					fail(&firstErr, err)
					return
				}
			}
		}()
	}
	wg.Wait()
	d := time.Since(start)
	if p := firstErr.Load(); p != nil {
		return d, *p
	}
	return d, nil
}

// fail records err unless an error was recorded (out of line, so that the
// error does not escape, and allocate, on every op).
func fail(p *atomic.Pointer[error], err error) { p.CompareAndSwap(nil, &err) }

// workerBufs returns one aligned block buffer per worker.
func workerBufs(workers, size int) [][]byte {
	bufs := make([][]byte, workers)
	for i := range bufs {
		bufs[i] = device.AlignedBuffer(size)
	}
	return bufs
}

// pair measures the engine and its peer in interleaved rounds: n ops of each,
// in up to 4 rounds, the order alternating. engine and peer run ops [from, to)
// of the round. b's timer covers the engine's rounds only; between rounds
// (timer stopped) between() runs if set. It reports the metrics described at
// the top of the file and returns the two IOPS.
type pair struct {
	engine, peer func(from, to int) (time.Duration, error)
	// peerOps, if > 0, caps the peer's ops per benchmark run (its speed is
	// known to be steady, e.g. a fixed delay).
	peerOps int
	between func()
	// cache, if set, has its device writes (data, fills, journal, nodes)
	// reported per engine op as devw/op.
	cache *CacheSet
}

func (p pair) run(b *testing.B) (iops, peerIOPS float64) {
	b.Helper()
	n := b.N
	rounds := 1
	if n >= 4000 {
		rounds = 4
	}
	peerN := n
	if p.peerOps > 0 {
		peerN = min(n, p.peerOps)
	}
	var engT, peerT time.Duration
	engDone, peerDone := 0, 0
	var writes0 uint64
	if p.cache != nil {
		writes0 = p.cache.dev.Writes()
	}
	b.ResetTimer()
	b.StopTimer()
	for r := range rounds {
		engTo := n * (r + 1) / rounds
		peerTo := peerN * (r + 1) / rounds
		runEngine := func() {
			b.StartTimer()
			d, err := p.engine(engDone, engTo)
			b.StopTimer()
			if err != nil {
				b.Fatalf("engine: %v", err)
			}
			engT += d
			engDone = engTo
		}
		runPeer := func() {
			d, err := p.peer(peerDone, peerTo)
			if err != nil {
				b.Fatalf("peer: %v", err)
			}
			peerT += d
			peerDone = peerTo
		}
		if r%2 == 0 {
			runEngine()
			runPeer()
		} else {
			runPeer()
			runEngine()
		}
		if p.between != nil && r < rounds-1 {
			p.between()
		}
	}
	iops = float64(n) / engT.Seconds()
	peerIOPS = float64(peerN) / peerT.Seconds()
	b.ReportMetric(iops, "iops")
	b.ReportMetric(peerIOPS, "peer-iops")
	b.ReportMetric(iops/peerIOPS, "x-peer")
	if p.cache != nil {
		b.ReportMetric(float64(p.cache.dev.Writes()-writes0)/float64(n), "devw/op")
	}
	return iops, peerIOPS
}

// fillPattern writes block numbers into the first bytes of each block of dev
// (the volume's backing store), so that reads can be checked.
func fillPattern(b *testing.B, dev device.Device, blocks int) {
	b.Helper()
	const chunk = 256
	buf := device.AlignedBuffer(chunk * blockSize)
	for first := 0; first < blocks; first += chunk {
		n := min(chunk, blocks-first)
		for i := range n {
			binary.LittleEndian.PutUint64(buf[i*blockSize:], uint64(first+i)+1)
		}
		if _, err := dev.WriteAt(buf[:n*blockSize], int64(first)*blockSize); err != nil {
			b.Fatalf("write pattern: %v", err)
		}
	}
	if err := dev.Sync(); err != nil {
		b.Fatalf("sync pattern: %v", err)
	}
}

func checkPattern(p []byte, block int) error {
	if got := binary.LittleEndian.Uint64(p); got != uint64(block)+1 {
		return fmt.Errorf("block %d holds the data of block %d", block, int64(got)-1)
	}
	return nil
}

// waitFills waits until the fill queue is empty (plus a little for the fills
// the fillers hold).
func waitFills(c *CacheSet) {
	for len(c.fills) > 0 {
		time.Sleep(time.Millisecond)
	}
	time.Sleep(20 * time.Millisecond)
}

// warm reads every block of v in random order, passes times at least, until a
// pass hits the cache for every block. It fails b if the cache does not take
// the whole volume.
func warm(b *testing.B, v *Volume, blocks, passes int) {
	b.Helper()
	buf := device.AlignedBuffer(blockSize)
	rng := rand.New(rand.NewPCG(1, 1))
	for pass := 0; ; pass++ {
		before := v.Stats()
		for _, blk := range rng.Perm(blocks) {
			for len(v.c.fills) > fillQueueLen/2 {
				time.Sleep(50 * time.Microsecond) // do not outrun the fillers
			}
			if err := v.ReadAt(buf, int64(blk)*blockSize); err != nil {
				b.Fatalf("warm-up read: %v", err)
			}
		}
		waitFills(v.c)
		missed := v.Stats().Misses - before.Misses
		if pass+1 >= passes && missed == 0 {
			return
		}
		if pass >= 10 {
			b.Fatalf("warm-up: pass %d still missed %d sectors", pass, missed)
		}
	}
}

// physMap returns, for every block of v, the cache device offset holding it.
func physMap(b *testing.B, v *Volume, blocks int) []int64 {
	b.Helper()
	c := v.c
	keys, err := c.lookup(v.id, 0, uint64(blocks)*blockSize/sectorSize)
	if err != nil {
		b.Fatal(err)
	}
	phys := make([]int64, blocks)
	for i := range phys {
		phys[i] = -1
	}
	const spb = blockSize / sectorSize
	for _, k := range keys {
		if c.alloc.IsStale(k.Ptr.Bucket, k.Ptr.Gen) || k.Whiteout() {
			continue
		}
		for s := (k.Start + spb - 1) / spb * spb; s+spb <= k.End(); s += spb {
			phys[s/spb] = c.dataOffset(k.Ptr, s-k.Start)
		}
	}
	for i, off := range phys {
		if off < 0 {
			b.Fatalf("block %d is not in the cache", i)
		}
	}
	return phys
}

// randomBlocks returns n random block numbers below blocks.
func randomBlocks(n, blocks int, seed uint64) []int32 {
	rng := rand.New(rand.NewPCG(seed, 7))
	out := make([]int32, n)
	for i := range out {
		out[i] = int32(rng.IntN(blocks))
	}
	return out
}

// BenchmarkEngineHit: 4 KiB random reads that all hit the cache, against pread
// of the same blocks of the cache file (a second descriptor, opened the same
// way) at the same concurrency.
func BenchmarkEngineHit(b *testing.B) {
	const (
		volSize   = 64 << 20
		cacheSize = 256 << 20
		blocks    = volSize / blockSize
	)
	s := newBenchSet(b, b.TempDir(), "cache.img", cacheSize, Config{})
	defer s.close(b)
	v, err := s.c.CreateVolume(VolumeSpec{Name: "hit", Size: volSize, SeqCutoff: NoSeqCutoff})
	if err != nil {
		b.Fatal(err)
	}
	fillPattern(b, v.backing, blocks)
	warm(b, v, blocks, 2)
	raw, err := device.OpenFile(s.path, device.FileOptions{Direct: s.direct})
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	if raw.DirectIO() != s.direct {
		b.Fatalf("peer direct IO %v, engine %v", raw.DirectIO(), s.direct)
	}
	b.Logf("cache device O_DIRECT: %v", s.direct)
	benchHits(b, v, raw, blocks, b2f(s.direct))
}

// BenchmarkEngineHitMem is BenchmarkEngineHit on an in-memory cache device:
// without the device's cost, what is left is the engine's own (lookup, locks,
// accounting, allocations), against a copy from memory.
func BenchmarkEngineHitMem(b *testing.B) {
	const (
		volSize   = 64 << 20
		cacheSize = 256 << 20
		blocks    = volSize / blockSize
	)
	mem := device.NewMem(cacheSize)
	cfg := Config{OpenBacking: func(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
		return device.NewMem(size), nil
	}, BackingDir: "/nonexistent"}
	if err := Format(mem, cfg); err != nil {
		b.Fatal(err)
	}
	c, err := Open(mem.Reopen(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	v, err := c.CreateVolume(VolumeSpec{Name: "hit", Size: volSize, SeqCutoff: NoSeqCutoff})
	if err != nil {
		b.Fatal(err)
	}
	fillPattern(b, v.backing, blocks)
	warm(b, v, blocks, 2)
	benchHits(b, v, mem, blocks, 0)
}

// benchHits runs the hit benchmarks of warm volume v against reads of the
// same blocks from raw, the cache device.
func benchHits(b *testing.B, v *Volume, raw device.Device, blocks int, direct float64) {
	phys := physMap(b, v, blocks)
	for _, readers := range []int{1, 32} {
		b.Run(fmt.Sprintf("readers=%d", readers), func(b *testing.B) {
			b.ReportAllocs()
			seq := randomBlocks(b.N, blocks, uint64(readers))
			bufs := workerBufs(readers, blockSize)
			before := v.Stats()
			pair{
				engine: func(from, to int) (time.Duration, error) {
					return runOps(to-from, readers, func(w, i int) error {
						blk := int(seq[from+i])
						if err := v.ReadAt(bufs[w], int64(blk)*blockSize); err != nil {
							return err
						}
						return checkPattern(bufs[w], blk)
					})
				},
				peer: func(from, to int) (time.Duration, error) {
					return runOps(to-from, readers, func(w, i int) error {
						blk := int(seq[from+i])
						if _, err := raw.ReadAt(bufs[w], phys[blk]); err != nil {
							return err
						}
						return checkPattern(bufs[w], blk)
					})
				},
			}.run(b)
			st := v.Stats()
			hits, misses := st.Hits-before.Hits, st.Misses-before.Misses
			if misses != 0 {
				b.Fatalf("%d of %d sectors missed the cache", misses, hits+misses)
			}
			b.ReportMetric(100*float64(hits)/float64(hits+misses), "hit%")
			b.ReportMetric(direct, "direct")
		})
	}
}

func b2f(x bool) float64 {
	if x {
		return 1
	}
	return 0
}
