package journal

import (
	"errors"
	"math/rand/v2"
	"reflect"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// TestGroupCommit: concurrent committers share jset writes and device syncs.
func TestGroupCommit(t *testing.T) {
	const goroutines, rounds = 32, 10
	dev := newMemDev(256 * BlockSize)
	dev.syncDelay = 500 * time.Microsecond
	j, _ := openJournal(t, testConfig(dev))

	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for r := range rounds {
				seq, err := j.Add(testKeys(uint64(g+1), uint64(r)*8, 1))
				if err == nil {
					err = j.Commit(seq)
				}
				if err == nil && j.DurableSeq() < seq {
					err = errors.New("Commit returned before the entry was durable")
				}
				if err == nil {
					err = j.Unpin(seq)
				}
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	within(t, 30*time.Second, "group commit", wg.Wait)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	st := j.Stats()
	_, syncs := dev.counts()
	t.Logf("%d commits: %d jsets, %d device syncs", goroutines*rounds, st.Writes, syncs)
	if syncs >= goroutines*rounds {
		t.Errorf("%d syncs for %d commits: no group commit", syncs, goroutines*rounds)
	}
	if int64(syncs) != st.Syncs {
		t.Errorf("device saw %d syncs, journal counted %d", syncs, st.Syncs)
	}

	// Every jset a Commit returned for survives a crash.
	last := j.DurableSeq()
	j.Close()
	j2, rp := openJournal(t, testConfig(dev.crash()))
	if n := len(rp.Entries); n == 0 || rp.Entries[n-1].Seq != last {
		t.Fatalf("replay after crash: %d entries, want the last one %d", n, last)
	}
	unpinReplay(t, j2, rp)
}

// TestPreflush: the writer syncs before a jset only when NeedPreflush says so.
func TestPreflush(t *testing.T) {
	for _, need := range []bool{false, true} {
		dev := newMemDev(64 * BlockSize)
		cfg := testConfig(dev)
		cfg.NeedPreflush = func() bool { return need }
		j, _ := openJournal(t, cfg)
		for i := range 5 {
			seq, err := j.Add(testKeys(1, uint64(i), 1))
			if err != nil {
				t.Fatal(err)
			}
			if err := j.Commit(seq); err != nil {
				t.Fatal(err)
			}
			j.Unpin(seq)
		}
		_, syncs := dev.counts()
		want := 5
		if need {
			want = 10
		}
		if syncs != want {
			t.Errorf("NeedPreflush %v: %d syncs for 5 jsets, want %d", need, syncs, want)
		}
	}
}

// TestDelay: an entry nobody commits is written after Config.Delay.
func TestDelay(t *testing.T) {
	clk := newFakeClock()
	cfg := testConfig(newMemDev(64 * BlockSize))
	cfg.Clock = clk
	cfg.Delay = 5 * time.Millisecond
	j, _ := openJournal(t, cfg)
	seq, err := j.Add(testKeys(1, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	clk.advance(4 * time.Millisecond)
	time.Sleep(10 * time.Millisecond)
	if d := j.DurableSeq(); d != 0 {
		t.Fatalf("entry written before its delay: durable %d", d)
	}
	clk.advance(time.Millisecond)
	eventually(t, 10*time.Second, "delayed commit", func() bool { return j.DurableSeq() == seq })
	j.Unpin(seq)
}

// nodePins is the test's stand-in for the engine's dirty btree nodes: the pins
// they hold per journal entry, released by a flusher goroutine on request.
type nodePins struct {
	mu   sync.Mutex // guards pins
	pins map[uint64]int
}

func (n *nodePins) insert(t testing.TB, j *Journal, keys []bkey.Key) (uint64, error) {
	seq, err := j.Add(keys)
	if err != nil {
		return 0, err
	}
	// Pin for the node, make it visible to the flusher, then drop Add's reference.
	if err := j.Pin(seq); err != nil {
		t.Error(err)
	}
	n.mu.Lock()
	n.pins[seq]++
	n.mu.Unlock()
	if err := j.Unpin(seq); err != nil {
		t.Error(err)
	}
	return seq, nil
}

// flush writes the "nodes" pinning seq: it drops their pins.
func (n *nodePins) flush(t testing.TB, j *Journal, seq uint64) {
	n.mu.Lock()
	c := n.pins[seq]
	delete(n.pins, seq)
	n.mu.Unlock()
	for range c {
		if err := j.Unpin(seq); err != nil {
			t.Error(err)
		}
	}
}

// TestBackPressure: in a tiny ring, Adds block until the Flush hook's work
// releases pins, done in the hook or by another goroutine; nothing deadlocks.
func TestBackPressure(t *testing.T) {
	for _, async := range []bool{false, true} {
		name := map[bool]string{false: "flush in the hook", true: "flush by another goroutine"}[async]
		t.Run(name, func(t *testing.T) { testBackPressure(t, async) })
	}
}

func testBackPressure(t *testing.T, async bool) {
	const adders, perAdder = 4, 150
	nodes := &nodePins{pins: map[uint64]int{}}
	requests := make(chan uint64)
	stop := make(chan struct{})
	var j *Journal
	cfg := testConfig(newMemDev(MinBlocks * BlockSize))
	cfg.Flush = func(oldest uint64) {
		if !async {
			nodes.flush(t, j, oldest)
			return
		}
		select {
		case requests <- oldest:
		case <-stop:
		}
	}
	j, _ = openJournal(t, cfg)
	var flusher sync.WaitGroup
	flusher.Go(func() {
		for {
			select {
			case seq := <-requests:
				time.Sleep(100 * time.Microsecond) // a node write
				nodes.flush(t, j, seq)
			case <-stop:
				return
			}
		}
	})
	var wg sync.WaitGroup
	for a := range adders {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(a), 1))
			for i := range perAdder {
				n := 1 + rng.IntN(j.MaxKeys())
				if _, err := nodes.insert(t, j, testKeys(uint64(a+1), uint64(i)<<20, n)); err != nil {
					t.Error(err)
					return
				}
				if err := j.Check(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	within(t, 60*time.Second, "adds under back-pressure", wg.Wait)
	close(stop)
	flusher.Wait()
	if err := j.Flush(); err != nil {
		t.Fatal(err)
	}
	st := j.Stats()
	t.Logf("stats %+v", st)
	if st.Stalls == 0 || st.FlushCalls == 0 {
		t.Errorf("the ring never filled: %+v", st)
	}
	// Release what is left, as the engine's node writes eventually would.
	nodes.mu.Lock()
	left := nodes.pins
	nodes.pins = map[uint64]int{}
	nodes.mu.Unlock()
	for seq, c := range left {
		for range c {
			j.Unpin(seq)
		}
	}
}

// TestReplayAfterWrap: entries of random sizes wrap a small ring many times; a
// sliding window of them stays pinned. After a clean close and after a crash,
// Open returns exactly the entries from the newest jset's last_seq, with their keys.
func TestReplayAfterWrap(t *testing.T) {
	for _, crash := range []bool{false, true} {
		// The pinned window (3 entries of at most 8 blocks) always fits the ring,
		// so that no Flush hook is needed.
		dev := newMemDev(64 * BlockSize)
		j, _ := openJournal(t, testConfig(dev))
		rng := rand.New(rand.NewPCG(7, 7))
		want := map[uint64][]bkey.Key{}
		var pinned []uint64
		const window = 3
		for i := range 300 {
			keys := testKeys(uint64(i), uint64(i), 1+rng.IntN(j.MaxKeys()/2))
			seq, err := j.Add(keys)
			if err != nil {
				t.Fatal(err)
			}
			want[seq] = append(want[seq], keys...)
			if err := j.Commit(seq); err != nil {
				t.Fatal(err)
			}
			pinned = append(pinned, seq)
			if len(pinned) > window {
				if err := j.Unpin(pinned[0]); err != nil {
					t.Fatal(err)
				}
				pinned = pinned[1:]
			}
		}
		last := j.DurableSeq()
		if head := j.Seq(); head < 250 {
			t.Fatalf("only %d entries written", head)
		}
		if !crash {
			j.Close()
		}
		if crash {
			dev = dev.crash()
		}
		j2, rp := openJournal(t, testConfig(dev))
		if n := len(rp.Entries); n < window || rp.Entries[n-1].Seq != last {
			t.Fatalf("crash %v: replay of %d entries ending at %d, want >= %d ending at %d", crash, n, rp.Entries[n-1].Seq, window, last)
		}
		for i, e := range rp.Entries {
			if i > 0 && e.Seq != rp.Entries[i-1].Seq+1 {
				t.Fatalf("replay out of order: %d after %d", e.Seq, rp.Entries[i-1].Seq)
			}
			if !reflect.DeepEqual(e.Keys, want[e.Seq]) {
				t.Fatalf("crash %v: entry %d has %d keys, want %d", crash, e.Seq, len(e.Keys), len(want[e.Seq]))
			}
		}
		if first := rp.Entries[0].Seq; first > pinned[0] {
			t.Fatalf("replay starts at %d, but %d is still pinned", first, pinned[0])
		}
		unpinReplay(t, j2, rp)
		// The journal continues after the replay and the ring keeps working.
		for i := range 40 {
			seq, err := j2.Add(testKeys(9, uint64(i), 50))
			if err != nil {
				t.Fatal(err)
			}
			if err := j2.Commit(seq); err != nil {
				t.Fatal(err)
			}
			j2.Unpin(seq)
		}
	}
}

// writeRaw writes jsets and finishes by syncing, for tests that build an area.
func writeRaw(t *testing.T, dev *memDev, pos int64, js *Jset) {
	t.Helper()
	b, err := EncodeJset(js, testMagic)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dev.WriteAt(b, pos*BlockSize); err != nil {
		t.Fatal(err)
	}
}

// TestTornJset: a torn or garbage block where the next jset would go is skipped;
// a hole inside the needed range is a corruption error.
func TestTornJset(t *testing.T) {
	build := func(t *testing.T) (*memDev, uint64) {
		dev := newMemDev(32 * BlockSize)
		j, _ := openJournal(t, testConfig(dev))
		for i := range 6 {
			seq, _ := j.Add(testKeys(1, uint64(i), 120)) // 2 blocks each
			if err := j.Commit(seq); err != nil {
				t.Fatal(err)
			}
		}
		j.Close()
		return dev, j.DurableSeq()
	}
	next := func(t *testing.T, seq uint64) []byte {
		b, err := EncodeJset(&Jset{Seq: seq, LastSeq: 1, Keys: testKeys(2, 0, 120)}, testMagic)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name string
		tear func(b []byte) []byte
	}{
		{"first sector only", func(b []byte) []byte { return b[:512] }},
		// 120 keys end in the 10th sector; the padding after them is not checksummed.
		{"last sector of keys lost", func(b []byte) []byte { return b[:9*512] }},
		{"sector in the middle lost", func(b []byte) []byte { clear(b[1024:1536]); return b }},
		{"garbage", func(b []byte) []byte {
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range b {
				b[i] = byte(rng.Uint32())
			}
			return b
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dev, last := build(t)
			if _, err := dev.WriteAt(tc.tear(next(t, last+1)), 12*BlockSize); err != nil {
				t.Fatal(err)
			}
			j, rp := openJournal(t, testConfig(dev))
			if n := len(rp.Entries); n != int(last) || rp.Entries[n-1].Seq != last {
				t.Fatalf("replay of %d entries, want 1..%d", n, last)
			}
			unpinReplay(t, j, rp)
			seq, _ := j.Add(testKeys(3, 0, 1))
			if seq != last+1 {
				t.Fatalf("next seq %d, want %d", seq, last+1)
			}
			if err := j.Commit(seq); err != nil {
				t.Fatal(err)
			}
			j.Unpin(seq)
		})
	}
	t.Run("hole in the needed range", func(t *testing.T) {
		dev, _ := build(t)
		dev.WriteAt(make([]byte, BlockSize), 4*BlockSize) // seq 3's header
		_, _, err := Open(testConfig(dev))
		if !ondisk.IsCorruption(err) {
			t.Fatalf("Open: %v, want a corruption error", err)
		}
		t.Log(err)
	})
	t.Run("misplaced entry", func(t *testing.T) {
		dev := newMemDev(32 * BlockSize)
		writeRaw(t, dev, 0, &Jset{Seq: 1, LastSeq: 1})
		writeRaw(t, dev, 5, &Jset{Seq: 2, LastSeq: 1})
		if _, _, err := Open(testConfig(dev)); !ondisk.IsCorruption(err) {
			t.Fatalf("Open: %v, want a corruption error", err)
		}
	})
	t.Run("stale jsets of another set", func(t *testing.T) {
		dev := newMemDev(32 * BlockSize)
		writeRaw(t, dev, 3, &Jset{Seq: 1000, LastSeq: 1})
		cfg := testConfig(dev)
		cfg.SetMagic++
		_, rp := openJournal(t, cfg)
		if len(rp.Entries) != 0 {
			t.Fatalf("replayed %d entries of another set", len(rp.Entries))
		}
	})
}

// TestSeqNoWrap: sequence numbers past 2^32 in a ring whose positions wrap:
// replay order, pins and reclaim follow seqs, never ring positions.
func TestSeqNoWrap(t *testing.T) {
	const base = 1<<32 - 2
	dev := newMemDev(MinBlocks * BlockSize)
	// seq base at the last block, base+1 at block 0: a ring that just wrapped.
	writeRaw(t, dev, 7, &Jset{Seq: base, LastSeq: base, Keys: testKeys(1, 0, 1)})
	writeRaw(t, dev, 0, &Jset{Seq: base + 1, LastSeq: base, Keys: testKeys(1, 8, 1)})
	writeRaw(t, dev, 1, &Jset{Seq: base - 7, LastSeq: base - 7}) // stale
	j, rp := openJournal(t, testConfig(dev))
	if len(rp.Entries) != 2 || rp.Entries[0].Seq != base || rp.Entries[1].Seq != base+1 {
		t.Fatalf("replay %+v", rp.Entries)
	}
	if seq, pins, ok := j.OldestPinned(); !ok || seq != base || pins != 1 {
		t.Fatalf("oldest pinned %d (%d), want %d: the entry at the highest block", seq, pins, base)
	}
	j.Unpin(base + 1)
	var seqs []uint64
	for i := range 4 {
		seq, err := j.Add(testKeys(2, uint64(i), 1))
		if err != nil {
			t.Fatal(err)
		}
		if err := j.Commit(seq); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	if seqs[0] != base+2 || seqs[3] != 1<<32+3 {
		t.Fatalf("seqs %v", seqs)
	}
	if seq, _, _ := j.OldestPinned(); seq != base {
		t.Fatalf("oldest pinned %d, want %d", seq, base)
	}
	j.Unpin(base)
	j.Unpin(seqs[0])
	if seq, _, _ := j.OldestPinned(); seq != seqs[1] {
		t.Fatalf("oldest pinned %d, want %d", seq, seqs[1])
	}
	seq, _ := j.Add(nil)
	j.Unpin(seq)
	if err := j.Commit(seq); err != nil {
		t.Fatal(err)
	}
	if last := j.LastSeq(); last != seqs[1] {
		t.Fatalf("last_seq %d, want %d", last, seqs[1])
	}
	for _, s := range seqs[1:] {
		j.Unpin(s)
	}
}

// TestCloseWhileAddBlocked: Close interrupts an Add waiting for ring space.
func TestCloseWhileAddBlocked(t *testing.T) {
	cfg := testConfig(newMemDev(MinBlocks * BlockSize))
	flushed := make(chan uint64, 100)
	cfg.Flush = func(oldest uint64) { flushed <- oldest } // never unpins
	j, _, err := Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	j.Start()
	for {
		used, total := j.Fill()
		if total-used < 3*BlockSize {
			break
		}
		if _, err := j.Add(testKeys(1, 0, j.MaxKeys())); err != nil {
			t.Fatal(err)
		}
	}
	errc := make(chan error)
	go func() {
		_, err := j.Add(testKeys(1, 0, j.MaxKeys()))
		errc <- err
	}()
	select {
	case seq := <-flushed:
		t.Logf("Flush(%d) called", seq)
	case err := <-errc:
		t.Fatalf("Add did not block: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("Flush hook not called")
	}
	within(t, 10*time.Second, "Close", func() { j.Close() })
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) || !errors.Is(err, ErrFull) {
			t.Fatalf("blocked Add returned %v, want ErrClosed and ErrFull", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("blocked Add not released by Close")
	}
	if _, err := j.Add(nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v", err)
	}
	if err := j.Commit(j.Seq()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Commit after Close: %v", err)
	}
	if err := j.Commit(j.DurableSeq()); err != nil {
		t.Fatalf("Commit of a durable seq after Close: %v", err)
	}
}

// TestCloseWhileCommitWaits: Close releases a committer whose jset is stuck in a
// sync, then waits for the writer.
func TestCloseWhileCommitWaits(t *testing.T) {
	dev := newMemDev(64 * BlockSize)
	gate := make(chan struct{})
	dev.gate = gate
	j, _, err := Open(testConfig(dev))
	if err != nil {
		t.Fatal(err)
	}
	j.Start()
	seq, _ := j.Add(testKeys(1, 0, 1))
	errc := make(chan error)
	go func() { errc <- j.Commit(seq) }()
	closed := make(chan struct{})
	go func() {
		j.Close()
		close(closed)
	}()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Commit: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Commit not released by Close")
	}
	close(gate)
	within(t, 10*time.Second, "Close", func() { <-closed })
}

// TestStickyError: a device error fails the commit and every later Add and Commit.
func TestStickyError(t *testing.T) {
	for _, failSync := range []bool{false, true} {
		dev := newMemDev(64 * BlockSize)
		j, _ := openJournal(t, testConfig(dev))
		seq, _ := j.Add(testKeys(1, 0, 1))
		if err := j.Commit(seq); err != nil {
			t.Fatal(err)
		}
		dev.mu.Lock()
		if failSync {
			dev.failSync = errInjected
		} else {
			dev.failWrite = errInjected
		}
		dev.mu.Unlock()
		seq2, _ := j.Add(testKeys(1, 8, 1))
		err := j.Commit(seq2)
		if !errors.Is(err, ErrIO) || !errors.Is(err, errInjected) {
			t.Fatalf("Commit: %v, want ErrIO wrapping the device error", err)
		}
		dev.mu.Lock()
		dev.failSync, dev.failWrite = nil, nil
		dev.mu.Unlock()
		if _, err2 := j.Add(nil); err2 != err {
			t.Fatalf("Add after the error: %v", err2)
		}
		if err2 := j.Commit(j.Seq()); err2 != err {
			t.Fatalf("Commit after the error: %v", err2)
		}
		if err := j.Commit(seq); err != nil {
			t.Fatalf("Commit of an entry durable before the error: %v", err)
		}
		j.Unpin(seq)
		j.Unpin(seq2)
	}
}

func TestTooManyKeys(t *testing.T) {
	j, _ := openJournal(t, testConfig(newMemDev(MinBlocks*BlockSize)))
	if _, err := j.Add(make([]bkey.Key, j.MaxKeys()+1)); !errors.Is(err, ErrTooManyKeys) {
		t.Fatalf("Add: %v", err)
	}
	// Two Adds that do not fit one entry go into two.
	a, _ := j.Add(testKeys(1, 0, j.MaxKeys()))
	b, _ := j.Add(testKeys(1, 0, 1))
	if b != a+1 {
		t.Fatalf("seqs %d, %d", a, b)
	}
	if err := j.Commit(b); err != nil {
		t.Fatal(err)
	}
	j.Unpin(a)
	j.Unpin(b)
}

func TestNotStarted(t *testing.T) {
	j, _, err := Open(testConfig(newMemDev(MinBlocks * BlockSize)))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	if _, err := j.Add(nil); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("Add before Start: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	dev := newMemDev(64 * BlockSize)
	for _, cfg := range []Config{
		{Size: 16 * BlockSize},
		{Device: dev, Offset: 100, Size: 16 * BlockSize},
		{Device: dev, Size: 16*BlockSize + 1},
		{Device: dev, Size: (MinBlocks - 1) * BlockSize},
		{Device: dev, Offset: 60 * BlockSize, Size: 16 * BlockSize},
	} {
		if _, _, err := Open(cfg); !errors.Is(err, ErrInvalid) {
			t.Errorf("Open(%+v): %v", cfg, err)
		}
	}
	if err := Format(dev, 8*BlockSize, 16*BlockSize); err != nil {
		t.Fatal(err)
	}
}

// TestOffsetAndHooks: an area that is not at offset 0, with the Root and
// NextVolumeID hooks; the values come back from replay.
func TestOffsetAndHooks(t *testing.T) {
	dev := newMemDev(64 * BlockSize)
	for i := range dev.data {
		dev.data[i] = 0xa5
	}
	cfg := Config{Device: dev, Offset: 16 * BlockSize, Size: 32 * BlockSize, SetMagic: testMagic}
	if err := Format(dev, cfg.Offset, cfg.Size); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	root, nextVol := Root{Bucket: 5, Gen: 2, Level: 1}, uint64(17)
	cfg.Root = func() Root { mu.Lock(); defer mu.Unlock(); return root }
	cfg.NextVolumeID = func() uint64 { mu.Lock(); defer mu.Unlock(); return nextVol }
	j, rp := openJournal(t, cfg)
	if len(rp.Entries) != 0 {
		t.Fatalf("replay of a formatted area: %+v", rp)
	}
	seq := j.Seq()
	if err := j.Commit(seq); err != nil { // an empty entry: only the hooks' values
		t.Fatal(err)
	}
	mu.Lock()
	nextVol = 18
	mu.Unlock()
	if err := j.Commit(j.Seq()); err != nil {
		t.Fatal(err)
	}
	j.Close()
	for i := range 16 * BlockSize {
		if dev.data[i] != 0xa5 || dev.data[48*BlockSize+i] != 0xa5 {
			t.Fatalf("byte %d outside the area written", i)
		}
	}
	cfg.Root, cfg.NextVolumeID = nil, nil
	j2, rp := openJournal(t, cfg)
	if rp.Root != root || rp.NextVolumeID != 18 || len(rp.Entries) != 1 || rp.Entries[0].Seq != seq+1 {
		t.Fatalf("replay %+v", rp)
	}
	unpinReplay(t, j2, rp)
	// Without hooks, the values found are carried forward.
	if err := j2.Commit(j2.Seq()); err != nil {
		t.Fatal(err)
	}
	j2.Close()
	_, rp3 := openJournal(t, cfg)
	if rp3.Root != root || rp3.NextVolumeID != 18 {
		t.Fatalf("replay after a jset without hooks %+v", rp3)
	}
}

// TestNoGoroutineLeak: Close stops everything a journal started.
func TestNoGoroutineLeak(t *testing.T) {
	before := runtime.NumGoroutine()
	for range 10 {
		cfg := testConfig(newMemDev(32 * BlockSize))
		cfg.Delay = time.Microsecond
		j, _, err := Open(cfg)
		if err != nil {
			t.Fatal(err)
		}
		j.Start()
		for i := range 5 {
			seq, _ := j.Add(testKeys(1, uint64(i), 3))
			j.Unpin(seq)
		}
		j.Close()
	}
	eventually(t, 10*time.Second, "goroutines back to the count before", func() bool {
		return runtime.NumGoroutine() <= before
	})
}
