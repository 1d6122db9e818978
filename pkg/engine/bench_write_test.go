package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// BenchmarkEngineWrite: 4 KiB random writes (no FUA, no flush) in writeback
// and writethrough mode, against the same writes to a backing store of the
// same kind alone, at the same concurrency. Backing stores:
//
//	file      a buffered file on the cache file's disk, as production opens
//	          backing files (writes land in the page cache)
//	delay1ms  1 ms per IO over memory (slow network or disk storage)
//
// Beside iops and x-peer it reports bypass% (writes that skipped the cache:
// in writeback mode, once dirty data fills 75% of the buckets) and, for
// writeback, the dirty MiB at the end.
func BenchmarkEngineWrite(b *testing.B) {
	const (
		volSize   = 64 << 20
		cacheSize = 256 << 20
		writers   = 32
	)
	dir := b.TempDir()
	for _, backing := range []string{"file", "delay1ms"} {
		for _, mode := range []CacheMode{Writeback, Writethrough} {
			var e *writeEnv
			name := fmt.Sprintf("backing=%s/mode=%s", backing, mode)
			b.Run(name, func(b *testing.B) {
				if e == nil {
					e = newWriteEnv(b, filepath.Join(dir, backing+"-"+mode.String()), backing, mode, volSize, cacheSize)
				}
				e.run(b, writers)
			})
			if e != nil {
				e.close(b)
			}
		}
	}
}

type writeEnv struct {
	s      *benchSet
	v      *Volume
	peer   device.Device
	blocks int
	seed   uint64
}

func newWriteEnv(b *testing.B, dir, backing string, mode CacheMode, volSize, cacheSize int64) *writeEnv {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	e := &writeEnv{blocks: int(volSize / blockSize)}
	cfg := Config{}
	var err error
	switch backing {
	case "file":
		// The volume's backing file is opened by the engine (BackingDir); the
		// peer writes another file opened the same way.
		e.peer, err = device.OpenFile(filepath.Join(dir, "peer.img"), device.FileOptions{Create: true, Size: volSize})
		if err != nil {
			b.Fatal(err)
		}
	case "delay1ms":
		slow := func(size int64) device.Device {
			return device.NewDelay(device.NewMem(size), device.DelayOptions{Read: time.Millisecond, Write: time.Millisecond, Sync: time.Millisecond})
		}
		cfg.OpenBacking = func(kind BackingKind, path string, size int64, create bool) (device.Device, error) {
			return slow(size), nil
		}
		e.peer = slow(volSize)
	default:
		b.Fatalf("backing %q", backing)
	}
	e.s = newBenchSet(b, dir, "cache.img", cacheSize, cfg)
	e.v, err = e.s.c.CreateVolume(VolumeSpec{Name: "write", Size: uint64(volSize), Mode: mode, SeqCutoff: NoSeqCutoff})
	if err != nil {
		b.Fatal(err)
	}
	return e
}

func (e *writeEnv) close(b *testing.B) {
	e.peer.Close()
	e.s.close(b)
}

func (e *writeEnv) run(b *testing.B, writers int) {
	e.seed++
	seq := randomBlocks(b.N, e.blocks, e.seed)
	bufs := workerBufs(writers, blockSize)
	for _, buf := range bufs {
		for i := range buf {
			buf[i] = byte(i)
		}
	}
	before := e.v.Stats()
	pair{
		engine: func(from, to int) (time.Duration, error) {
			return runOps(to-from, writers, func(w, i int) error {
				return e.v.WriteAt(bufs[w], int64(seq[from+i])*blockSize, false)
			})
		},
		peer: func(from, to int) (time.Duration, error) {
			return runOps(to-from, writers, func(w, i int) error {
				_, err := e.peer.WriteAt(bufs[w], int64(seq[from+i])*blockSize)
				return err
			})
		},
		cache: e.s.c,
	}.run(b)
	st := e.v.Stats()
	written := st.WriteBytes - before.WriteBytes
	b.ReportMetric(100*float64((st.Bypassed-before.Bypassed)*sectorSize)/float64(max(written, 1)), "bypass%")
	if CacheMode(e.v.mode.Load()) == Writeback {
		b.ReportMetric(float64(st.DirtyBytes)/(1<<20), "dirty-MiB")
	}
}
