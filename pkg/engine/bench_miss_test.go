package engine

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// BenchmarkEngineMiss: 4 KiB random reads of blocks not in the cache (each
// block is read once; when all were, the cache is emptied, timer stopped),
// against reads of other blocks of the backing store itself at the same
// concurrency. Backing stores:
//
//	disk       a file on the cache file's disk, opened with O_DIRECT: cold
//	           reads, competing with the fills' cache writes for the disk
//	pagecache  the same file buffered, as production opens backing files, and
//	           all in the page cache: the engine's CPU cost against a nearly
//	           free read
//	delay1ms   1 ms per read over memory (network or disk storage); 32 readers
//	           only, one reader would take minutes
func BenchmarkEngineMiss(b *testing.B) {
	const (
		volSize   = 256 << 20
		cacheSize = 512 << 20
	)
	dir := b.TempDir()
	for _, backing := range []string{"disk", "pagecache", "delay1ms"} {
		var e *missEnv
		readerCounts := []int{1, 32}
		if backing == "delay1ms" {
			readerCounts = []int{32}
		}
		for _, readers := range readerCounts {
			b.Run(fmt.Sprintf("backing=%s/readers=%d", backing, readers), func(b *testing.B) {
				if e == nil {
					e = newMissEnv(b, filepath.Join(dir, backing), backing, volSize, cacheSize)
				}
				e.run(b, readers)
			})
		}
		if e != nil {
			e.close(b)
		}
	}
}

// missEnv is a volume whose backing store holds a pattern, shared by the runs
// of the sub-benchmarks of one backing kind.
type missEnv struct {
	s       *benchSet
	v       *Volume
	peer    device.Device // a second descriptor on the backing file
	blocks  int
	perm    []int32 // the engine reads perm[:half], the peer perm[half:]
	engNext int     // next index into perm of the engine
	peerPos int
}

func newMissEnv(b *testing.B, dir, backing string, volSize, cacheSize int64) *missEnv {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	blocks := int(volSize / blockSize)
	cfg := Config{}
	var slow device.Device
	var mem *device.Mem
	switch backing {
	case "disk":
		cfg.OpenBacking = func(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
			if kind != BackingFile {
				return nil, errors.New("bench: file backing only")
			}
			return device.OpenFile(path, device.FileOptions{Direct: true, Create: create, Size: size})
		}
	case "delay1ms":
		mem = device.NewMem(volSize)
		slow = device.NewDelay(mem, device.DelayOptions{Read: time.Millisecond, Write: time.Millisecond, Sync: time.Millisecond})
		cfg.OpenBacking = func(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
			return device.NewDelay(mem.Reopen(), device.DelayOptions{Read: time.Millisecond, Write: time.Millisecond, Sync: time.Millisecond}), nil
		}
	}
	s := newBenchSet(b, dir, "cache.img", cacheSize, cfg)
	v, err := s.c.CreateVolume(VolumeSpec{Name: "miss", Size: uint64(volSize), SeqCutoff: NoSeqCutoff})
	if err != nil {
		b.Fatal(err)
	}
	var peer device.Device
	switch backing {
	case "delay1ms":
		peer = slow
		fillPattern(b, mem, blocks)
	case "disk":
		fillPattern(b, v.backing, blocks)
		f, err := device.OpenFile(v.info.BackingPath, device.FileOptions{Direct: true})
		if err != nil {
			b.Fatal(err)
		}
		if !f.DirectIO() || !v.backing.(*device.File).DirectIO() {
			b.Logf("backing store: O_DIRECT refused by the filesystem")
		}
		peer = f
	default:
		fillPattern(b, v.backing, blocks)
		f, err := device.OpenFile(v.info.BackingPath, device.FileOptions{})
		if err != nil {
			b.Fatal(err)
		}
		// Both read from the page cache: read the file once.
		buf := device.AlignedBuffer(1 << 20)
		for off := int64(0); off < volSize; off += int64(len(buf)) {
			if _, err := f.ReadAt(buf, off); err != nil {
				b.Fatal(err)
			}
		}
		peer = f
	}
	rng := rand.New(rand.NewPCG(3, 3))
	perm := make([]int32, blocks)
	for i, x := range rng.Perm(blocks) {
		perm[i] = int32(x)
	}
	return &missEnv{s: s, v: v, peer: peer, blocks: blocks, perm: perm}
}

func (e *missEnv) close(b *testing.B) {
	e.peer.Close()
	e.s.close(b)
}

func (e *missEnv) run(b *testing.B, readers int) {
	bufs := workerBufs(readers, blockSize)
	half := e.blocks / 2
	var hits, misses uint64
	dropped := e.s.c.stats.fillsDropped.Load()
	pair{
		engine: func(from, to int) (time.Duration, error) {
			var total time.Duration
			for n := to - from; n > 0; {
				if e.engNext == half {
					// Every cold block was read: empty the cache.
					b.StopTimer()
					waitFills(e.s.c)
					if err := e.s.c.invalidateRange(e.v.id, 0, uint64(e.blocks)*blockSize/sectorSize); err != nil {
						return total, err
					}
					e.engNext = 0
					b.StartTimer()
				}
				piece := min(n, half-e.engNext)
				base := e.engNext
				before := e.v.Stats()
				d, err := runOps(piece, readers, func(w, i int) error {
					blk := int(e.perm[base+i])
					if err := e.v.ReadAt(bufs[w], int64(blk)*blockSize); err != nil {
						return err
					}
					return checkPattern(bufs[w], blk)
				})
				total += d
				if err != nil {
					return total, err
				}
				st := e.v.Stats()
				hits += st.Hits - before.Hits
				misses += st.Misses - before.Misses
				e.engNext += piece
				n -= piece
			}
			return total, nil
		},
		peer: func(from, to int) (time.Duration, error) {
			base := e.peerPos
			e.peerPos = (e.peerPos + to - from) % half
			return runOps(to-from, readers, func(w, i int) error {
				blk := int(e.perm[half+(base+i)%half])
				if _, err := e.peer.ReadAt(bufs[w], int64(blk)*blockSize); err != nil {
					return err
				}
				return checkPattern(bufs[w], blk)
			})
		},
		cache: e.s.c,
	}.run(b)
	if hits != 0 {
		b.Fatalf("%d of %d sectors hit the cache", hits, hits+misses)
	}
	b.ReportMetric(100*float64(e.s.c.stats.fillsDropped.Load()-dropped)/float64(b.N), "fill-drop%")
	b.ReportMetric(b2f(e.s.direct), "direct")
}
