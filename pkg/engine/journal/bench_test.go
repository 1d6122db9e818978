package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

const benchAreaSize = 4 << 20

// openBenchFile creates a file in a temporary directory as a device.File
// (pwrite, fdatasync), its blocks allocated.
func openBenchFile(b *testing.B) *device.File {
	b.Helper()
	f, err := device.OpenFile(filepath.Join(b.TempDir(), "journal"), device.FileOptions{Create: true, Size: benchAreaSize})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { f.Close() })
	// Allocate the blocks, so that both benchmarks overwrite allocated blocks.
	if err := Format(f, 0, benchAreaSize); err != nil {
		b.Fatal(err)
	}
	return f
}

// rawSync measures 4 KiB pwrite + fdatasync on f, per second, over n rounds.
func rawSync(f device.Device, n int) (float64, error) {
	buf := make([]byte, BlockSize)
	start := time.Now()
	for i := range n {
		buf[0] = byte(i)
		if _, err := f.WriteAt(buf, int64(i%(benchAreaSize/BlockSize))*BlockSize); err != nil {
			return 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// BenchmarkRawFdatasync is the peer of BenchmarkCommit: one 4 KiB write and one
// fdatasync per operation, the cost of a commit without group commit.
func BenchmarkRawFdatasync(b *testing.B) {
	f := openBenchFile(b)
	b.ResetTimer()
	rate, err := rawSync(f, b.N)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(rate, "syncs/s")
}

// rawSyncRate measures the raw write+fdatasync rate once per run, for the ratio.
var rawSyncRate = sync.OnceValues(func() (float64, error) {
	dir, err := os.MkdirTemp("", "journal-bench")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	f, err := device.OpenFile(filepath.Join(dir, "raw"), device.FileOptions{Create: true, Size: benchAreaSize})
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if err := Format(f, 0, benchAreaSize); err != nil {
		return 0, err
	}
	return rawSync(f, 1000)
})

// BenchmarkCommit: committers goroutines each Add one key and Commit it, on a
// journal over a real file. It reports commits/s, device syncs per commit, and
// the ratio of commits/s to raw 4 KiB write+fdatasync/s on the same kind of file
// measured in the same run (>1 means group commit shares syncs).
func BenchmarkCommit(b *testing.B) {
	raw, err := rawSyncRate()
	if err != nil {
		b.Fatal(err)
	}
	for _, committers := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("committers=%d", committers), func(b *testing.B) {
			dev := device.NewCounting(openBenchFile(b))
			j, _, err := Open(Config{Device: dev, Size: benchAreaSize, SetMagic: testMagic, NeedPreflush: dev.WritesSinceSync})
			if err != nil {
				b.Fatal(err)
			}
			j.Start()
			defer j.Close()
			var next atomic.Int64
			var wg sync.WaitGroup
			keys := testKeys(1, 0, 1)
			b.ResetTimer()
			start := time.Now()
			for range committers {
				wg.Go(func() {
					for next.Add(1) <= int64(b.N) {
						seq, err := j.Add(keys)
						if err == nil {
							err = j.Commit(seq)
						}
						if err == nil {
							err = j.Unpin(seq)
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			rate := float64(b.N) / elapsed.Seconds()
			b.ReportMetric(rate, "commits/s")
			b.ReportMetric(float64(j.Stats().Syncs)/float64(b.N), "syncs/commit")
			b.ReportMetric(rate/raw, "x-raw-fdatasync")
			if err := j.Check(); err != nil {
				b.Fatal(err)
			}
		})
	}
}
