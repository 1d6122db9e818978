package journal

import "github.com/csi-cache/csi-cache/pkg/engine/invariants"

// Commit returns when entry seq is durable: its jset, or a later one, is written
// flushed (after a preflush of everything written to the device before it) and
// synced. Concurrent committers share that write and its syncs. Commit of the open
// entry closes it and has it written even if it has no keys (that persists Root
// and NextVolumeID alone); so does Commit of an entry written unflushed when no
// later entry is on its way. Commit of a seq that is already durable returns nil
// at once, closed or not.
func (j *Journal) Commit(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if seq <= j.durableSeq {
			return nil
		}
		if err := j.usableLocked(); err != nil {
			return err
		}
		open := j.openSeqLocked()
		if seq > open {
			return errorf(ErrInvalid, "commit of seq %d, the open entry is %d", seq, open)
		}
		want := seq
		if seq <= j.writtenSeq && len(j.pending) == 0 {
			// Written unflushed, and nothing closed after it: the open entry's
			// flushed jset will make it durable.
			want = open
		}
		if want == open && len(j.open.keys) == 0 && !j.open.force {
			if err := j.admitLocked(0, want); err != nil {
				return err
			}
			continue
		}
		if j.commitWanted < want {
			j.commitWanted = want
			j.kick()
		}
		j.waitLocked()
	}
}

// WaitWritten returns when the jset of entry seq has been written to the device,
// flushed or not, synced or not: the entry survives a crash of this process (not
// yet a power loss, which Commit covers). Concurrent callers share the write. The
// data path acknowledges writes with it, so that a killed and restarted process
// finds every acknowledged write.
func (j *Journal) WaitWritten(seq uint64) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	for {
		if seq <= j.writtenSeq || seq <= j.durableSeq {
			return nil
		}
		if err := j.usableLocked(); err != nil {
			return err
		}
		if open := j.openSeqLocked(); seq > open {
			return errorf(ErrInvalid, "wait for seq %d, the open entry is %d", seq, open)
		}
		if j.writtenWanted < seq {
			j.writtenWanted = seq
			j.kick()
		}
		j.waitLocked()
	}
}

// Flush commits every key added so far: it is Commit of the open entry if it has
// keys, else of the newest closed one.
func (j *Journal) Flush() error {
	j.mu.Lock()
	seq := j.openSeqLocked()
	if len(j.open.keys) == 0 && !j.open.force {
		seq--
	}
	j.mu.Unlock()
	if seq == 0 {
		return nil
	}
	return j.Commit(seq)
}

// run is the writer goroutine: it writes one jset at a time, until Close.
func (j *Journal) run() {
	defer close(j.done)
	for {
		for j.writeNext() {
		}
		select {
		case <-j.wake:
		case <-j.closing:
			return
		}
	}
}

// writeNext writes the oldest closed entry, closing the open one first if it is
// due. It reports whether it wrote one. The device IO is done without j.mu: the
// entry's keys and place do not change once it is closed.
func (j *Journal) writeNext() bool {
	j.mu.Lock()
	if j.closed || j.err != nil || len(j.pending) == 0 && !j.closeOpenIfDueLocked() {
		j.mu.Unlock()
		return false
	}
	p := j.pending[0]
	pos := j.entryLocked(p.seq).pos
	js := &Jset{Seq: p.seq, LastSeq: j.lastSeqForLocked(p.seq), Root: j.root, NextVolumeID: j.nextVolID, Keys: p.keys}
	now := j.clock.Now()
	if j.cfg.BootID != (BootID{}) && j.commitWanted <= j.durableSeq && j.spaceWaiters == 0 &&
		j.writtenWanted >= p.seq && now.Before(j.lastFlushed.Add(j.cfg.MaxUnflushed)) {
		// Only written is wanted, and soon enough a flushed jset follows.
		js.Unflushed, js.BootID = true, j.cfg.BootID
	}
	j.mu.Unlock()

	if j.cfg.Root != nil {
		js.Root = j.cfg.Root()
	}
	if j.cfg.NextVolumeID != nil {
		js.NextVolumeID = max(js.NextVolumeID, j.cfg.NextVolumeID())
	}
	syncs, err := j.writeJset(js, pos)

	j.mu.Lock()
	defer j.mu.Unlock()
	j.stats.Syncs += syncs
	if err != nil {
		j.err = err
		j.broadcastLocked()
		return false
	}
	j.stats.Writes++
	j.pending[0] = pendingJset{}
	j.pending = j.pending[1:]
	j.writtenSeq = max(j.writtenSeq, p.seq)
	j.root, j.nextVolID = js.Root, js.NextVolumeID
	if js.Unflushed {
		j.stats.Unflushed++
		j.ents[p.seq-j.base].state = stateWritten
		j.armDurableTimerLocked()
	} else {
		// Its preflush made every entry written before it durable too.
		for seq := max(j.durableSeq+1, j.base); seq <= p.seq; seq++ {
			j.ents[seq-j.base].state = stateDurable
		}
		j.durableSeq = p.seq
		j.lastFlushed = now
		if js.LastSeq > j.lastSeqOnDisk {
			j.lastSeqOnDisk = js.LastSeq
			j.releaseLocked()
		}
	}
	j.broadcastLocked()
	if invariants.Enabled {
		if err := j.checkLocked(); err != nil {
			panic(err)
		}
	}
	return true
}

// writeJset writes js at block pos of the area: a flushed jset after a preflush
// and followed by a sync, an unflushed one alone. It returns the number of syncs
// done and an error wrapping ErrIO.
func (j *Journal) writeJset(js *Jset, pos int64) (syncs int64, err error) {
	buf, err := EncodeJset(js, j.cfg.SetMagic)
	if err != nil {
		return 0, errorf(ErrIO, "encode jset %d: %w", js.Seq, err)
	}
	dev := j.cfg.Device
	if !js.Unflushed && (j.cfg.NeedPreflush == nil || j.cfg.NeedPreflush()) {
		syncs++
		if err := dev.Sync(); err != nil {
			return syncs, errorf(ErrIO, "preflush before jset %d: %w", js.Seq, err)
		}
	}
	off := j.cfg.Offset + pos*BlockSize
	if _, err := dev.WriteAt(buf, off); err != nil {
		return syncs, errorf(ErrIO, "write jset %d at %d: %w", js.Seq, off, err)
	}
	if js.Unflushed {
		return syncs, nil
	}
	// Written: a crash of the process can no longer lose it (the kernel or
	// the device holds it); WaitWritten callers go on while it is synced.
	j.mu.Lock()
	j.writtenSeq = max(j.writtenSeq, js.Seq)
	j.broadcastLocked()
	j.mu.Unlock()
	syncs++
	if err := dev.Sync(); err != nil {
		return syncs, errorf(ErrIO, "sync jset %d: %w", js.Seq, err)
	}
	return syncs, nil
}

// armDurableTimerLocked makes sure that what is written unflushed now is durable
// within Config.MaxUnflushed even if nothing else is written: the timer commits
// it (a flushed jset of the open entry, empty if need be).
func (j *Journal) armDurableTimerLocked() {
	if j.durableTimer || j.closed {
		return
	}
	j.durableTimer = true
	j.stopDurableTimer = j.clock.AfterFunc(j.cfg.MaxUnflushed, func() {
		j.mu.Lock()
		j.durableTimer = false
		seq := j.writtenSeq
		need := seq > j.durableSeq && !j.closed && j.err == nil
		j.mu.Unlock()
		if need {
			_ = j.Commit(seq) // an error is the journal's sticky one: every caller sees it
		}
	})
}

// closeOpenIfDueLocked closes the open entry if it is to be written now: a
// committer waits for it, it has been open for the delay, or space waiters need
// the last_seq it would record. An empty entry is closed (into the spare block) only
// for space waiters, and only if that releases more blocks than it takes.
func (j *Journal) closeOpenIfDueLocked() bool {
	o := &j.open
	switch {
	case len(o.keys) > 0 || o.force:
		due := j.commitWanted >= j.openSeqLocked() || j.writtenWanted >= j.openSeqLocked() || j.spaceWaiters > 0 ||
			len(o.keys) > 0 && j.delay > 0 && !j.clock.Now().Before(o.openedAt.Add(j.delay))
		if !due {
			j.armTimerLocked()
			return false
		}
	case j.spaceWaiters > 0 && j.reclaimableLocked() > 1 && j.used+1 <= j.nblocks:
	default:
		return false
	}
	j.closeOpenLocked()
	return true
}

// armTimerLocked arms the delay timer for the open entry, once per entry.
func (j *Journal) armTimerLocked() {
	seq := j.openSeqLocked()
	if j.delay < 0 || len(j.open.keys) == 0 || j.timerSeq == seq || j.closed {
		return
	}
	j.timerSeq = seq
	d := j.open.openedAt.Add(j.delay).Sub(j.clock.Now())
	j.stopTimer = j.clock.AfterFunc(d, j.kick)
}
