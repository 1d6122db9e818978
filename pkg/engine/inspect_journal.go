package engine

import (
	"slices"

	"github.com/csi-cache/csi-cache/pkg/engine/journal"
)

// readJournal finds what a reopen on this boot would replay. journal.Open with
// ReadOnly only reads (the writer starts with Start, which is never called here,
// and dropped unflushed jsets are counted, not erased), so its verdict is the
// engine's; when it fails, a tolerant scan still shows what the ring holds.
func (in *inspector) readJournal() {
	l := &in.layout
	rep := &JournalReport{Offset: l.JournalOffset, Size: l.JournalSize}
	in.r.Journal = rep
	boot, _ := CurrentBootID()
	j, replay, err := journal.Open(journal.Config{
		Device: in.dev, Offset: l.JournalOffset, Size: l.JournalSize, SetMagic: in.sb.SetMagic,
		BootID: journal.BootID(boot), ReadOnly: true,
	})
	if err == nil {
		rep.DroppedUnflushed = replay.Dropped
		used, _ := j.Fill()
		j.Close()
		rep.UsedBytes = used
		in.replay = replay.Entries
		in.root = replay.Root
		rep.NextVolumeID = replay.NextVolumeID
	} else {
		in.corruptProblem(SeverityError, "journal", err)
		rep.Scanned = true
		in.scanJournal(rep)
	}
	if n := len(in.replay); n > 0 {
		rep.LastSeq, rep.NewestSeq = in.replay[0].Seq, in.replay[n-1].Seq
	}
	if rep.Size > 0 {
		rep.Fill = float64(rep.UsedBytes) / float64(rep.Size)
	}
	rep.Entries = len(in.replay)
	for _, e := range in.replay {
		rep.Keys += len(e.Keys)
	}
	rep.RootBucket, rep.RootGen, rep.RootLevel = in.root.Bucket, in.root.Gen, in.root.Level
	switch {
	case len(in.replay) == 0 && in.root == (journal.Root{}) && rep.NextVolumeID == 0:
		in.problem(SeverityError, "journal", l.JournalOffset, "no journal entry names a btree root")
	case in.root.Bucket >= l.NBuckets:
		in.problem(SeverityError, "journal", l.JournalOffset, "root in bucket %d of %d", in.root.Bucket, l.NBuckets)
	default:
		in.haveRoot = true
	}
}

// scanJournal decodes a jset at every block of the ring and keeps the newest
// one's range of entries that are present, in order. It never fails.
func (in *inspector) scanJournal(rep *JournalReport) {
	l := &in.layout
	const chunk = 64 // blocks decoded per read; a jset starting in a chunk ends in the read
	nblocks := l.JournalSize / journal.BlockSize
	buf := make([]byte, (chunk+journal.MaxJsetBlocks-1)*journal.BlockSize)
	bySeq := map[uint64]*journal.Jset{}
	var newest *journal.Jset
	var used int64
	for first := int64(0); first < nblocks; first += chunk {
		n := min(chunk+journal.MaxJsetBlocks-1, nblocks-first)
		b := buf[:n*journal.BlockSize]
		off := l.JournalOffset + first*journal.BlockSize
		if err := in.read(b, off); err != nil {
			in.problem(SeverityError, "journal", off, "read: %v", err)
			continue
		}
		for i := int64(0); i < min(chunk, n); i++ {
			js, err := journal.DecodeJset(b[i*journal.BlockSize:], off+i*journal.BlockSize, in.sb.SetMagic)
			if err != nil {
				continue // torn, stale or never written
			}
			if _, dup := bySeq[js.Seq]; !dup {
				bySeq[js.Seq] = js
			}
			if newest == nil || js.Seq > newest.Seq {
				newest = js
			}
		}
	}
	if newest == nil {
		return
	}
	// The entries the newest one still needs that are there (journal.Open's
	// error says which are not), in order.
	var seqs []uint64
	for seq := range bySeq {
		if seq >= newest.LastSeq {
			seqs = append(seqs, seq)
		}
	}
	slices.Sort(seqs)
	for _, seq := range seqs {
		js := bySeq[seq]
		used += js.Blocks() * journal.BlockSize
		in.replay = append(in.replay, journal.Entry{Seq: js.Seq, Keys: js.Keys, Root: js.Root, NextVolumeID: js.NextVolumeID})
	}
	rep.UsedBytes = used
	in.root = newest.Root
	rep.NextVolumeID = newest.NextVolumeID
}
