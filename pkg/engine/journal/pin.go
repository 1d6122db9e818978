package journal

import (
	"errors"
	"fmt"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// Add appends keys to the open entry and returns its seq with one pin reference
// held for the caller. The caller (a btree insert) takes its own reference for the
// dirty node with Pin(seq), then drops Add's with Unpin(seq); Commit(seq) makes the
// keys durable.
//
// At most MaxKeys keys fit in one entry (ErrTooManyKeys): the keys of one Add are
// never split over entries, so replay sees all of them or none. When the ring has
// no room for them, Add applies back-pressure: it asks the writer to write what
// frees space, calls the Flush hook for the oldest pinned entry, and waits until
// space is reclaimed, or returns ErrClosed (wrapping ErrFull) when Close is called.
// A caller must not call Add while it holds the reference of an earlier Add (before
// its Pin and Unpin): if that entry is the oldest, nothing could release it.
func (j *Journal) Add(keys []bkey.Key) (uint64, error) {
	if len(keys) > j.maxKeys {
		return 0, errorf(ErrTooManyKeys, "%d keys, at most %d per entry", len(keys), j.maxKeys)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if err := j.admitLocked(len(keys), 0); err != nil {
		return 0, err
	}
	o := &j.open
	first := len(o.keys) == 0 && len(keys) > 0
	if first {
		o.openedAt = j.clock.Now()
	}
	o.keys = append(o.keys, keys...)
	if first {
		// Arm after the keys are in: armTimerLocked ignores an empty entry.
		j.armTimerLocked()
	}
	j.ents[len(j.ents)-1].pins++
	return j.openSeqLocked(), nil
}

// Pin takes one more reference on entry seq, on which the caller already holds
// one (from Add, from Replay, or an earlier Pin). Without one, the entry may
// already be reclaimed: Pin then fails with ErrBadPin and counts the error (Check
// reports it).
func (j *Journal) Pin(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	e := j.entryLocked(seq)
	if e == nil || e.pins <= 0 {
		return j.pinErrorLocked("pin", seq)
	}
	e.pins++
	return nil
}

// Unpin drops a reference on entry seq. Dropping one that is not held fails with
// ErrBadPin and counts the error; it never makes a count negative.
//
// A btree insert must make its node's pin visible to the Flush hook (flushWrite)
// before it drops Add's reference: a waiter that found nothing to flush looks
// again after an Unpin, not after a Pin.
func (j *Journal) Unpin(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	e := j.entryLocked(seq)
	if e == nil || e.pins <= 0 {
		return j.pinErrorLocked("unpin", seq)
	}
	e.pins--
	if j.spaceWaiters > 0 {
		// A waiter may now get space from a jset that records a newer last_seq,
		// or must flush the next oldest entry, or find a node pin made visible
		// before this Unpin dropped an Add reference: let it look again.
		j.broadcastLocked()
		if e.pins == 0 {
			j.kick()
		}
	}
	return nil
}

func (j *Journal) pinErrorLocked(op string, seq uint64) error {
	j.stats.PinErrors++
	return errorf(ErrBadPin, "%s of seq %d (entries %d..%d held)", op, seq, j.base, j.openSeqLocked())
}

// OldestPinned returns the oldest entry with references and its reference count:
// what the engine's flushWrite must write nodes for. ok is false if no entry is
// pinned.
func (j *Journal) OldestPinned() (seq uint64, pins int64, ok bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.oldestPinnedLocked()
}

func (j *Journal) oldestPinnedLocked() (uint64, int64, bool) {
	for i := range j.ents {
		if p := j.ents[i].pins; p > 0 {
			return j.base + uint64(i), p, true
		}
	}
	return 0, 0, false
}

// lastSeqForLocked is the last_seq of jset seq if it were written now: the oldest
// pinned entry before it, or seq itself. Entries before seq are written (the
// writer writes in order), so unpinned ones are in btree nodes already.
func (j *Journal) lastSeqForLocked(seq uint64) uint64 {
	for i := range j.ents {
		s := j.base + uint64(i)
		if s >= seq {
			break
		}
		if j.ents[i].pins > 0 {
			return s
		}
	}
	return seq
}

// reclaimableLocked is the number of ring blocks a jset written now (the open
// entry) would release.
func (j *Journal) reclaimableLocked() int64 {
	last := j.lastSeqForLocked(j.openSeqLocked())
	var n int64
	for i := 0; j.base+uint64(i) < last; i++ {
		n += j.ents[i].cost
	}
	return n
}

// releaseLocked pops the entries before lastSeqOnDisk: a durable jset says that
// replay no longer needs them, so their blocks may be overwritten.
func (j *Journal) releaseLocked() {
	for len(j.ents) > 1 && j.base < j.lastSeqOnDisk {
		e := &j.ents[0]
		if e.pins != 0 || e.state != stateDurable {
			// lastSeqForLocked never passes such an entry, and Pin cannot revive a
			// zero count; this is a journal bug. Keep the entry, Check reports it.
			return
		}
		j.used -= e.cost
		j.ents[0] = entry{}
		j.ents = j.ents[1:]
		j.base++
	}
}

// placeLocked returns where a jset of blocks blocks written next would go: the
// block its ring space starts at (the head), the block of the jset, and the ring
// blocks it would hold (the tail it skips to wrap to block 0 included).
func (j *Journal) placeLocked(blocks int64) (start, pos, cost int64) {
	if j.head+blocks <= j.nblocks {
		return j.head, j.head, blocks
	}
	return j.head, 0, j.nblocks - j.head + blocks
}

// openCostLocked is the ring space the open entry needs with n more keys.
func (j *Journal) openCostLocked(n int, force bool) int64 {
	nk := len(j.open.keys) + n
	if nk == 0 && !force && !j.open.force {
		return 0
	}
	_, _, cost := j.placeLocked(jsetBlocks(nk))
	return cost
}

// admitLocked reserves ring space for n more keys in the open entry (forceSeq 0),
// or for writing the open entry forceSeq even if it is empty. It closes a full open
// entry and waits for space (see waitSpaceLocked). Called and returns with j.mu
// held; may release it meanwhile.
//
// One block is kept free beyond every reservation, for an empty jset that only
// records a newer last_seq: without it, a ring full of unpinned entries could not
// be reclaimed, since reclaiming takes a jset write.
func (j *Journal) admitLocked(n int, forceSeq uint64) error {
	waited := false
	for {
		if err := j.usableLocked(); err != nil {
			if waited && errors.Is(err, ErrClosed) {
				return fmt.Errorf("%w (waiting for space: %w)", err, ErrFull)
			}
			return err
		}
		if forceSeq != 0 && forceSeq != j.openSeqLocked() {
			return nil // closed meanwhile: it will be written anyway
		}
		if len(j.open.keys)+n > j.maxKeys {
			j.closeOpenLocked()
			j.kick()
			continue
		}
		cost := j.openCostLocked(n, forceSeq != 0)
		if j.used+cost+1 <= j.nblocks {
			j.open.cost = cost
			if forceSeq != 0 {
				j.open.force = true
			}
			return nil
		}
		if !waited {
			waited = true
			j.stats.Stalls++
		}
		j.waitSpaceLocked()
	}
}

// waitSpaceLocked is one round of waiting for ring space. If the writer can free
// some (it has entries to write, or unpinned entries whose release is worth a jset),
// it is kicked and we wait for it. Otherwise the oldest pinned entry must be
// flushed: one waiter at a time calls the Flush hook without j.mu, and only if
// something changed since the last call (so an ineffective hook is not called in a
// loop); the others, and that one afterwards, wait for the next change (a jset
// written, a pin dropped) or Close.
func (j *Journal) waitSpaceLocked() {
	j.spaceWaiters++
	defer func() { j.spaceWaiters-- }()
	if j.writerHasWorkLocked() {
		j.kick()
		j.waitLocked()
		return
	}
	if j.cfg.Flush != nil && !j.flushing && j.flushGen != j.gen {
		if oldest, _, ok := j.oldestPinnedLocked(); ok {
			j.flushing, j.flushGen = true, j.gen
			j.stats.FlushCalls++
			j.mu.Unlock()
			j.cfg.Flush(oldest)
			j.mu.Lock()
			j.flushing = false
			if j.gen != j.flushGen {
				// Others may have slept through changes while we flushed.
				j.broadcastLocked()
			}
			return
		}
	}
	j.waitLocked()
}

// writerHasWorkLocked reports whether the writer, kicked with space waiters, will
// write a jset: a pending entry, the open entry (it has keys or is forced), or an
// empty jset that releases more blocks than it takes.
func (j *Journal) writerHasWorkLocked() bool {
	return len(j.pending) > 0 || len(j.open.keys) > 0 || j.open.force ||
		(j.reclaimableLocked() > 1 && j.used+1 <= j.nblocks)
}

// closeOpenLocked places the open entry in the ring, queues it for the writer and
// opens the next one. The placement is the one its reservation was computed for:
// only closing moves the head.
func (j *Journal) closeOpenLocked() {
	seq := j.openSeqLocked()
	blocks := jsetBlocks(len(j.open.keys))
	start, pos, cost := j.placeLocked(blocks)
	e := &j.ents[len(j.ents)-1]
	e.state, e.start, e.pos, e.blocks, e.cost = stateClosed, start, pos, blocks, cost
	j.used += cost
	j.head = (pos + blocks) % j.nblocks
	j.pending = append(j.pending, pendingJset{seq: seq, keys: j.open.keys})
	j.ents = append(j.ents, entry{})
	j.open = openEntry{}
}

// Check verifies the journal's invariants: no pin error happened, pin counts are
// not negative, the FIFO is open entry last after closed ones after durable ones,
// last_seq on disk is not past the oldest pinned entry, and the ring accounting
// (used blocks, head, reservations) adds up. Tests call it in cleanup.
func (j *Journal) Check() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	err := j.checkLocked()
	if j.stats.PinErrors > 0 {
		err = errors.Join(fmt.Errorf("journal: check: %d pin errors (pin or unpin without a reference)", j.stats.PinErrors), err)
	}
	return err
}

// checkLocked checks the structure (all of Check but the pin error count). With
// the invariants build tag, the writer runs it after every jset.
func (j *Journal) checkLocked() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("journal: check: "+format, args...)) }
	if len(j.ents) == 0 {
		bad("no open entry")
		return errors.Join(errs...)
	}
	var used int64
	var closed []uint64
	end := int64(-1) // end of the previous entry's jset
	for i, e := range j.ents {
		seq := j.base + uint64(i)
		if e.pins < 0 {
			bad("seq %d has %d pins", seq, e.pins)
		}
		if (i == len(j.ents)-1) != (e.state == stateOpen) {
			bad("seq %d state %d at FIFO slot %d of %d", seq, e.state, i, len(j.ents))
		}
		switch e.state {
		case stateOpen:
			continue
		case stateDurable:
			if seq > j.durableSeq {
				bad("seq %d durable, newest durable is %d", seq, j.durableSeq)
			}
		case stateWritten:
			if seq <= j.durableSeq || seq > j.writtenSeq {
				bad("seq %d written unflushed, newest durable is %d, newest written %d", seq, j.durableSeq, j.writtenSeq)
			}
		case stateClosed:
			if seq <= j.durableSeq {
				bad("seq %d not durable, newest durable is %d", seq, j.durableSeq)
			}
			closed = append(closed, seq)
		}
		used += e.cost
		if end >= 0 && e.start != end%j.nblocks {
			bad("seq %d starts at block %d, previous ends at %d", seq, e.start, end)
		}
		wantPos, wantCost := e.start, e.blocks
		if e.start+e.blocks > j.nblocks {
			wantPos, wantCost = 0, j.nblocks-e.start+e.blocks
		}
		if e.blocks < 1 || e.blocks > MaxJsetBlocks || e.pos != wantPos || e.cost != wantCost {
			bad("seq %d at block %d (start %d) with %d blocks, cost %d", seq, e.pos, e.start, e.blocks, e.cost)
		}
		end = e.pos + e.blocks
	}
	if end >= 0 && end%j.nblocks != j.head {
		bad("head %d, newest entry ends at %d", j.head, end)
	}
	if used != j.used {
		bad("used %d blocks, entries hold %d", j.used, used)
	}
	if want := j.openCostLocked(0, false); j.open.cost != want {
		bad("open entry reserves %d blocks, needs %d", j.open.cost, want)
	}
	if j.used+j.open.cost > j.nblocks {
		bad("ring overcommitted: %d + %d of %d blocks", j.used, j.open.cost, j.nblocks)
	}
	if len(closed) != len(j.pending) {
		bad("%d closed entries, %d pending", len(closed), len(j.pending))
	} else {
		for i, p := range j.pending {
			if p.seq != closed[i] {
				bad("pending[%d] is seq %d, want %d", i, p.seq, closed[i])
			}
		}
	}
	if j.durableSeq > 0 && j.base != j.lastSeqOnDisk {
		bad("FIFO starts at %d, last_seq on disk is %d", j.base, j.lastSeqOnDisk)
	}
	if seq, _, ok := j.oldestPinnedLocked(); ok && j.lastSeqOnDisk > seq {
		bad("last_seq on disk %d past the oldest pinned entry %d", j.lastSeqOnDisk, seq)
	}
	return errors.Join(errs...)
}
