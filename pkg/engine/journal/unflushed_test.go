package journal

import (
	"testing"
	"time"
)

// processCrash returns a device holding what a crash of the process leaves:
// every write it made, synced or not.
func (d *memDev) processCrash() *memDev {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := newMemDev(int64(len(d.data)))
	copy(c.data, d.data)
	copy(c.durable, d.data)
	return c
}

var (
	bootA = BootID{0xa, 15: 1}
	bootB = BootID{0xb, 15: 2}
)

// bootAConfig is a journal on dev written on boot bootA, without the delay
// timer, on a fake clock.
func bootAConfig(dev *memDev) (Config, *fakeClock) {
	cfg := testConfig(dev)
	cfg.BootID = bootA
	cfg.Delay = -1
	clk := newFakeClock()
	cfg.Clock = clk
	return cfg, clk
}

func replayedSeqs(rp *Replay) []uint64 {
	var seqs []uint64
	for _, e := range rp.Entries {
		if len(e.Keys) > 0 {
			seqs = append(seqs, e.Seq)
		}
	}
	return seqs
}

func sameSeqs(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestUnflushed: entries wanted only written are written unflushed (no preflush,
// no sync), survive a crash of the process, are dropped after a power loss
// unless a later flushed jset made them durable, and Commit makes them durable.
func TestUnflushed(t *testing.T) {
	dev := newMemDev(64 * BlockSize)
	cfg, clk := bootAConfig(dev)
	j, _ := openJournal(t, cfg)

	// The references Add takes are kept: the keys are in no written btree
	// node, so replay needs every entry.
	add := func(i int) uint64 {
		t.Helper()
		seq, err := j.Add(testKeys(1, uint64(i)*64, 1))
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	s0 := add(0)
	if err := j.Commit(s0); err != nil {
		t.Fatal(err)
	}
	w0, y0 := dev.counts()
	s1 := add(1)
	if err := j.WaitWritten(s1); err != nil {
		t.Fatal(err)
	}
	s2 := add(2)
	if err := j.WaitWritten(s2); err != nil {
		t.Fatal(err)
	}
	w, y := dev.counts()
	if w-w0 != 2 || y != y0 {
		t.Fatalf("two written entries took %d writes and %d syncs, want 2 and 0", w-w0, y-y0)
	}
	if st := j.Stats(); st.Unflushed != 2 {
		t.Fatalf("Stats.Unflushed = %d, want 2", st.Unflushed)
	}
	if d := j.DurableSeq(); d != s0 {
		t.Fatalf("DurableSeq %d after unflushed writes, want %d", d, s0)
	}

	reopen := func(d *memDev, boot BootID) *Replay {
		t.Helper()
		c := testConfig(d)
		c.BootID = boot
		j2, rp, err := Open(c)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		j2.Close()
		return rp
	}
	// The process dies; the machine does not reboot: all three are there.
	if rp := reopen(dev.processCrash(), bootA); !sameSeqs(replayedSeqs(rp), []uint64{s0, s1, s2}) || rp.Dropped != 0 {
		t.Fatalf("same boot: replayed %v (dropped %d), want %v", replayedSeqs(rp), rp.Dropped, []uint64{s0, s1, s2})
	}
	// A power loss that happened to keep the unflushed jsets on the device: on
	// the next boot they are not trusted (their data may be gone), and erased.
	lost := dev.processCrash()
	if rp := reopen(lost, bootB); !sameSeqs(replayedSeqs(rp), []uint64{s0}) || rp.Dropped != 2 {
		t.Fatalf("next boot: replayed %v (dropped %d), want [%d] (dropped 2)", replayedSeqs(rp), rp.Dropped, s0)
	}
	if rp := reopen(lost, bootA); !sameSeqs(replayedSeqs(rp), []uint64{s0}) || rp.Dropped != 0 {
		t.Fatalf("after the erase: replayed %v (dropped %d), want [%d] (dropped 0)", replayedSeqs(rp), rp.Dropped, s0)
	}
	// The plain power loss: only what was synced.
	if rp := reopen(dev.crash(), bootB); !sameSeqs(replayedSeqs(rp), []uint64{s0}) {
		t.Fatalf("power loss: replayed %v, want [%d]", replayedSeqs(rp), s0)
	}

	// Commit of a written entry: a flushed jset (of the empty open entry) makes
	// it durable, and an unflushed jset before a flushed one is trusted on any boot.
	if err := j.Commit(s2); err != nil {
		t.Fatal(err)
	}
	if d := j.DurableSeq(); d <= s2 {
		t.Fatalf("DurableSeq %d after Commit(%d)", d, s2)
	}
	if rp := reopen(dev.crash(), bootB); !sameSeqs(replayedSeqs(rp), []uint64{s0, s1, s2}) || rp.Dropped != 0 {
		t.Fatalf("power loss after Commit: replayed %v (dropped %d), want %v", replayedSeqs(rp), rp.Dropped, []uint64{s0, s1, s2})
	}

	// Nothing but a written entry, then silence: the timer makes it durable
	// within MaxUnflushed.
	s3 := add(3)
	if err := j.WaitWritten(s3); err != nil {
		t.Fatal(err)
	}
	if j.DurableSeq() >= s3 {
		t.Fatalf("entry %d durable at once, want written unflushed", s3)
	}
	clk.advance(DefaultMaxUnflushed)
	eventually(t, 5*time.Second, "the unflushed entry becomes durable", func() bool { return j.DurableSeq() >= s3 })
	if rp := reopen(dev.crash(), bootB); !sameSeqs(replayedSeqs(rp), []uint64{s0, s1, s2, s3}) {
		t.Fatalf("power loss after the timer: replayed %v", replayedSeqs(rp))
	}

	// A journal without a boot id writes every entry flushed.
	dev2 := newMemDev(64 * BlockSize)
	j2, _ := openJournal(t, testConfig(dev2))
	seq, err := j2.Add(testKeys(1, 0, 1))
	if err != nil {
		t.Fatal(err)
	}
	j2.Unpin(seq)
	if err := j2.WaitWritten(seq); err != nil {
		t.Fatal(err)
	}
	if st := j2.Stats(); st.Unflushed != 0 {
		t.Fatalf("no boot id: %d unflushed jsets", st.Unflushed)
	}
}

// TestUnflushedAge: under a steady stream of written-only entries, a flushed
// jset goes out at least every MaxUnflushed.
func TestUnflushedAge(t *testing.T) {
	dev := newMemDev(256 * BlockSize)
	cfg, clk := bootAConfig(dev)
	j, _ := openJournal(t, cfg)
	for i := range 40 {
		seq, err := j.Add(testKeys(1, uint64(i)*8, 1))
		if err != nil {
			t.Fatal(err)
		}
		j.Unpin(seq)
		if err := j.WaitWritten(seq); err != nil {
			t.Fatal(err)
		}
		clk.mu.Lock()
		clk.now = clk.now.Add(DefaultMaxUnflushed / 4) // no timers run
		clk.mu.Unlock()
	}
	st := j.Stats()
	if flushed := st.Writes - st.Unflushed; flushed < 40/4-1 {
		t.Fatalf("%d of %d jsets flushed over %v, want one at least every %v", flushed, st.Writes, 10*DefaultMaxUnflushed, DefaultMaxUnflushed)
	}
}

// TestUnflushedTornTail: a power loss may keep some unflushed jsets and tear
// others (they are not ordered by syncs); the next boot drops the whole tail
// past the newest flushed jset instead of calling the gap a corruption.
func TestUnflushedTornTail(t *testing.T) {
	dev := newMemDev(64 * BlockSize)
	cfg, _ := bootAConfig(dev)
	j, _ := openJournal(t, cfg)
	var seqs []uint64
	for i := range 4 {
		seq, err := j.Add(testKeys(1, uint64(i)*64, 1))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			err = j.Commit(seq)
		} else {
			err = j.WaitWritten(seq)
		}
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, seq)
	}
	img := dev.processCrash()
	pos := j.entryLockedForTest(seqs[2])
	clear(img.data[pos*BlockSize : (pos+1)*BlockSize])
	c := testConfig(img)
	c.BootID = bootB
	j2, rp, err := Open(c)
	if err != nil {
		t.Fatalf("Open after a torn unflushed tail: %v", err)
	}
	j2.Close()
	if got := replayedSeqs(rp); !sameSeqs(got, seqs[:1]) || rp.Dropped != 2 {
		t.Fatalf("replayed %v (dropped %d), want %v (dropped 2)", got, rp.Dropped, seqs[:1])
	}
}

// entryLockedForTest returns the block of entry seq's jset.
func (j *Journal) entryLockedForTest(seq uint64) int64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.entryLocked(seq).pos
}

// TestUnflushedRestartThenPowerLoss: a process crash leaves an unflushed jset whose
// last_seq is past the newest flushed jset's. The restarted process (same boot)
// takes its last_seq as the ring's tail and reuses the blocks of the entries the
// flushed jset needs, so Open must make that jset flushed first (promote): else
// a power loss before the new process's first flushed jset drops it on the next
// boot, and replay from the flushed jset finds its entries overwritten.
// (Found in review.)
func TestUnflushedRestartThenPowerLoss(t *testing.T) {
	dev := newMemDev(16 * BlockSize)
	cfg, _ := bootAConfig(dev)
	j, _ := openJournal(t, cfg)
	var pinned []uint64
	for i := range 3 { // flushed jsets 1..3, all with last_seq 1
		seq, err := j.Add(testKeys(1, uint64(i)*64, 1))
		if err != nil {
			t.Fatal(err)
		}
		if err := j.Commit(seq); err != nil {
			t.Fatal(err)
		}
		pinned = append(pinned, seq)
	}
	for _, s := range pinned { // their keys reach btree nodes
		j.Unpin(s)
	}
	seq, err := j.Add(testKeys(1, 1000, 1))
	if err != nil {
		t.Fatal(err)
	}
	j.Unpin(seq)
	if err := j.WaitWritten(seq); err != nil { // unflushed jset 4, last_seq 4
		t.Fatal(err)
	}
	// kill -9; restart on the same boot.
	dev2 := dev.processCrash()
	cfg2, _ := bootAConfig(dev2)
	j2, rp, err := Open(cfg2)
	if err != nil {
		t.Fatal(err)
	}
	j2.Start()
	defer j2.Close()
	unpinReplay(t, j2, rp)
	for i := range 13 { // acknowledged writes of the new process, unflushed
		seq, err := j2.Add(testKeys(2, uint64(i)*64, 1))
		if err != nil {
			t.Fatal(err)
		}
		j2.Unpin(seq)
		if err := j2.WaitWritten(seq); err != nil {
			t.Fatal(err)
		}
	}
	// Power loss that happened to keep every write; next boot.
	img := dev2.processCrash()
	cfg3 := testConfig(img)
	cfg3.BootID = bootB
	j3, rp3, err := Open(cfg3)
	if err != nil {
		t.Fatalf("Open after restart + power loss: %v", err)
	}
	j3.Close()
	t.Logf("replayed %v dropped %d", replayedSeqs(rp3), rp3.Dropped)
}
