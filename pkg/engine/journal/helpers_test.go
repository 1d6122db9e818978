package journal

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

const testMagic = 0x6373692d63616368 // "csi-cach"

// memDev is a small in-memory device.Device for the journal's tests. It keeps the
// image as of the last Sync (what survives a crash: unsynced writes are lost), counts
// IO, and can delay syncs, block them behind a gate, or fail writes and syncs.
type memDev struct {
	mu        sync.Mutex // guards the fields below
	data      []byte
	durable   []byte // data as of the last Sync
	writes    int
	syncs     int
	syncDelay time.Duration
	gate      chan struct{} // if set, Sync waits for it to be closed
	failWrite error         // returned by WriteAt when set
	failSync  error         // returned by Sync when set
}

var _ device.Device = (*memDev)(nil)

func newMemDev(size int64) *memDev {
	return &memDev{data: make([]byte, size), durable: make([]byte, size)}
}

func (d *memDev) ReadAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if off < 0 || off+int64(len(p)) > int64(len(d.data)) {
		return 0, device.ErrOutOfRange
	}
	return copy(p, d.data[off:]), nil
}

func (d *memDev) WriteAt(p []byte, off int64) (int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failWrite != nil {
		return 0, d.failWrite
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.data)) {
		return 0, device.ErrOutOfRange
	}
	d.writes++
	return copy(d.data[off:], p), nil
}

func (d *memDev) Sync() error {
	d.mu.Lock()
	delay, gate := d.syncDelay, d.gate
	d.mu.Unlock()
	if gate != nil {
		<-gate
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.failSync != nil {
		return d.failSync
	}
	d.syncs++
	copy(d.durable, d.data)
	return nil
}

func (d *memDev) Size() int64  { return int64(len(d.data)) }
func (d *memDev) Close() error { return nil }

// crash returns a device holding what d's power loss would leave: the synced image.
func (d *memDev) crash() *memDev {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := newMemDev(int64(len(d.data)))
	copy(c.data, d.durable)
	copy(c.durable, d.durable)
	return c
}

func (d *memDev) counts() (writes, syncs int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.writes, d.syncs
}

// fakeClock is a Clock that moves only in advance.
type fakeClock struct {
	mu     sync.Mutex // guards the fields below
	now    time.Time
	timers map[int]fakeTimer
	next   int
}

type fakeTimer struct {
	at time.Time
	f  func()
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Unix(1_700_000_000, 0), timers: map[int]fakeTimer{}}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.next
	c.next++
	c.timers[id] = fakeTimer{at: c.now.Add(d), f: f}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.timers[id]
		delete(c.timers, id)
		return ok
	}
}

// advance moves the clock and runs the timers that are due, without c.mu.
func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	for id, t := range c.timers {
		if !t.at.After(c.now) {
			due = append(due, t.f)
			delete(c.timers, id)
		}
	}
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
}

// testConfig is a config for a journal on all of dev.
func testConfig(dev device.Device) Config {
	return Config{Device: dev, Size: dev.Size(), SetMagic: testMagic}
}

// openJournal opens and starts a journal; cleanup closes it and checks its
// invariants. Replayed references are left to the caller.
func openJournal(t testing.TB, cfg Config) (*Journal, *Replay) {
	t.Helper()
	j, rp, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	j.Start()
	t.Cleanup(func() {
		if err := j.Check(); err != nil {
			t.Errorf("Check: %v", err)
		}
		j.Close()
	})
	return j, rp
}

// unpinReplay drops the references Open gave to the replayed entries.
func unpinReplay(t testing.TB, j *Journal, rp *Replay) {
	t.Helper()
	for _, e := range rp.Entries {
		if err := j.Unpin(e.Seq); err != nil {
			t.Fatalf("unpin replayed %d: %v", e.Seq, err)
		}
	}
}

// testKeys returns n distinct keys of volume vol starting at sector start.
func testKeys(vol, start uint64, n int) []bkey.Key {
	ks := make([]bkey.Key, n)
	for i := range ks {
		s := start + uint64(i)*8
		ks[i] = bkey.Key{Vol: vol, Start: s, Len: 8, Flags: uint8(s % 3), Ptr: bkey.Ptr{Bucket: uint32(s >> 3), Offset: uint32(s % 1024), Gen: uint32(vol)}}
	}
	return ks
}

// within fails the test if f does not return within d, printing every goroutine.
func within(t testing.TB, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		f()
	}()
	select {
	case <-done:
	case <-time.After(d):
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%s: not done after %v (deadlock?)\n%s", what, d, buf)
	}
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true after %v", what, d)
		}
		time.Sleep(time.Millisecond)
	}
}

// dump describes the journal's state for datadriven tests.
func (j *Journal) dump() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	var b strings.Builder
	fmt.Fprintf(&b, "seq=%d durable=%d last_seq=%d used=%d+%d/%d head=%d\n",
		j.openSeqLocked(), j.durableSeq, j.lastSeqOnDisk, j.used, j.open.cost, j.nblocks, j.head)
	for i, e := range j.ents {
		state := [...]string{"open", "closed", "written", "durable"}[e.state]
		fmt.Fprintf(&b, "  %d %s pins=%d", j.base+uint64(i), state, e.pins)
		if e.state != stateOpen {
			fmt.Fprintf(&b, " blocks=%d+%d", e.pos, e.blocks)
			if e.cost != e.blocks {
				fmt.Fprintf(&b, " skip=%d", e.cost-e.blocks)
			}
		} else {
			fmt.Fprintf(&b, " keys=%d", len(j.open.keys))
		}
		b.WriteString("\n")
	}
	if seq, pins, ok := j.oldestPinnedLocked(); ok {
		fmt.Fprintf(&b, "oldest pinned: %d (%d pins)\n", seq, pins)
	} else {
		b.WriteString("oldest pinned: none\n")
	}
	return b.String()
}

func errString(err error) string {
	if err == nil {
		return "ok"
	}
	return "error: " + err.Error()
}

var errInjected = errors.New("injected device error")
