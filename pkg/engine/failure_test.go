//go:build invariants

package engine

import (
	"errors"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// TestJournalFullAfterDeviceFailure: the journal is full and only flushWrite can
// free it, by writing the node that pins its oldest entry; that write fails. The
// writer waiting for journal space must get an error, not wait forever. (The
// crash test found it: after a crash every node write fails.)
func TestJournalFullAfterDeviceFailure(t *testing.T) {
	cfg := testConfig()
	cfg.JournalSize = 16 * 4096
	cfg.ReaperInterval = time.Hour
	cfg.NodeCacheNodes = 64
	mem := device.NewMem(64 << 20)
	if err := Format(mem, cfg); err != nil {
		t.Fatal(err)
	}
	var bucketsFrom atomic.Int64 // writes at or past it fail; 0: none
	dev := device.NewFault(mem.Reopen(), func(op device.Op, off, n int64) error {
		if b := bucketsFrom.Load(); op == device.OpWrite && b != 0 && off >= b {
			return syscall.EIO
		}
		return nil
	})
	c, err := Open(dev, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	bucketsFrom.Store(c.layout.BucketOffset(0))

	// One committed key per journal entry, all on the same sector of the root
	// leaf (so it never splits), which holds the pin of the oldest: the journal
	// fills, and the next Add needs flushWrite.
	done := make(chan error, 1)
	go func() {
		for i := uint64(0); i < 100; i++ {
			k := bkey.Key{Vol: 1, Start: 0, Len: 1, Ptr: bkey.Ptr{Bucket: 100, Offset: uint32(i)}}
			if err := c.InsertKeys([]bkey.Key{k}); err != nil {
				done <- err
				return
			}
			if err := c.Commit(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("100 entries went into a 16-block journal without a node write")
		}
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("want the device error, got %v", err)
		}
		t.Logf("the writer got: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatalf("a writer waiting for journal space hangs after a node write failed (engine error: %v)", c.Err())
	}
	if st := c.jnl.Stats(); st.FlushCalls == 0 {
		t.Fatalf("the journal never asked flushWrite for space: %+v", st)
	}
}
