package journal

import (
	"fmt"

	"github.com/csi-cache/csi-cache/pkg/engine/device"

	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// Format zeroes the journal area [off, off+size) of dev and syncs it, for a new
// cache set. (Jsets of an older cache set would be ignored anyway for their magic;
// zeroing makes the area read as empty whatever the magic.)
func Format(dev device.Device, off, size int64) error {
	if off < 0 || off%BlockSize != 0 || size%BlockSize != 0 || size < MinBlocks*BlockSize || off > dev.Size()-size {
		return errorf(ErrInvalid, "format: area [%d, +%d) on a device of %d bytes", off, size, dev.Size())
	}
	zero := make([]byte, min(size, 1<<20))
	for done := int64(0); done < size; {
		n := min(int64(len(zero)), size-done)
		if _, err := dev.WriteAt(zero[:n], off+done); err != nil {
			return errorf(ErrIO, "format: %w", err)
		}
		done += n
	}
	if err := dev.Sync(); err != nil {
		return errorf(ErrIO, "format: sync: %w", err)
	}
	return nil
}

// Open reads the journal area and returns a Journal ready to Start and what to
// replay. It takes the newest valid jset (by seq) and returns the entries from its
// last_seq to its seq; a block that does not decode (bad magic, bad checksum: a
// torn or stale write) is skipped, but a missing or misplaced entry in that range
// is a corruption error (ondisk.IsCorruption). An area with no valid jset (new, or
// Format-ed) gives an empty replay, and the first entry is seq 1.
//
// Unflushed jsets (see jset.go) are trusted if Config.BootID wrote them: the
// machine has not rebooted since, so every write made before them is on the
// device. Any other unflushed jset is trusted only if a trusted jset with a larger
// seq exists (a flushed jset's preflush made everything before it durable). The
// rest, the unflushed tail of a boot that ended in a power loss, is dropped as if
// never written, and erased (zeroed and synced, unless Config.ReadOnly) so that
// the entries written next, which take the same sequence numbers, never meet it.
// A newest jset that is unflushed but trusted (a process crashed on this boot) is
// made flushed before the journal continues from it (promote).
//
// The journal continues after the newest jset: the next entry is seq+1 and is
// written after it in the ring. See Replay for the references replayed entries hold.
func Open(cfg Config) (*Journal, *Replay, error) {
	j, err := newJournal(cfg)
	if err != nil {
		return nil, nil, err
	}
	found, err := j.scan()
	if err != nil {
		return nil, nil, err
	}
	found, dropped := j.dropUntrusted(found)
	if len(dropped) > 0 && !cfg.ReadOnly {
		if err := j.erase(dropped); err != nil {
			return nil, nil, err
		}
	}
	if !cfg.ReadOnly {
		if err := j.promote(found); err != nil {
			return nil, nil, err
		}
	}
	rp, err := j.recover(found)
	if err != nil {
		return nil, nil, err
	}
	rp.Dropped = len(dropped)
	return j, rp, nil
}

// dropUntrusted splits the jsets found into those replay may trust and the
// unflushed ones of another boot past the newest trusted jset.
func (j *Journal) dropUntrusted(found []foundJset) (kept, dropped []foundJset) {
	trusted := func(js *Jset) bool {
		return !js.Unflushed || j.cfg.BootID != (BootID{}) && js.BootID == j.cfg.BootID
	}
	var newest uint64
	for _, f := range found {
		if trusted(f.js) {
			newest = max(newest, f.js.Seq)
		}
	}
	for _, f := range found {
		if trusted(f.js) || f.js.Seq < newest {
			kept = append(kept, f)
		} else {
			dropped = append(dropped, f)
		}
	}
	return kept, dropped
}

// promote makes the newest jset flushed if it is not (the unflushed tail of a
// process that crashed on this boot): it syncs the device, which makes that
// process's writes durable, and rewrites the jset in place without the flag.
// The journal then continues from a durable state: its last_seq, root and
// newest seq hold after a power loss too. A torn rewrite loses only that jset,
// whose entries were never flushed, and nothing the flushed jsets before it
// need has been overwritten yet.
func (j *Journal) promote(found []foundJset) error {
	ni := -1
	for i, f := range found {
		if ni < 0 || f.js.Seq > found[ni].js.Seq {
			ni = i
		}
	}
	if ni < 0 || !found[ni].js.Unflushed {
		return nil
	}
	f := &found[ni]
	if err := j.cfg.Device.Sync(); err != nil {
		return errorf(ErrIO, "sync before flushing jset %d: %w", f.js.Seq, err)
	}
	js := *f.js
	js.Unflushed, js.BootID = false, BootID{}
	buf, err := EncodeJset(&js, j.cfg.SetMagic)
	if err != nil {
		return errorf(ErrIO, "encode jset %d: %w", js.Seq, err)
	}
	off := j.cfg.Offset + f.pos*BlockSize
	if _, err := j.cfg.Device.WriteAt(buf, off); err != nil {
		return errorf(ErrIO, "rewrite jset %d at %d as flushed: %w", js.Seq, off, err)
	}
	if err := j.cfg.Device.Sync(); err != nil {
		return errorf(ErrIO, "sync jset %d: %w", js.Seq, err)
	}
	f.js = &js
	return nil
}

// erase zeroes the blocks of dropped jsets and syncs.
func (j *Journal) erase(dropped []foundJset) error {
	for _, f := range dropped {
		off := j.cfg.Offset + f.pos*BlockSize
		if _, err := j.cfg.Device.WriteAt(make([]byte, f.blocks*BlockSize), off); err != nil {
			return errorf(ErrIO, "erase unflushed jset %d at %d: %w", f.js.Seq, off, err)
		}
	}
	if err := j.cfg.Device.Sync(); err != nil {
		return errorf(ErrIO, "erase unflushed jsets: sync: %w", err)
	}
	return nil
}

// foundJset is a valid jset found by scan.
type foundJset struct {
	pos    int64 // block
	blocks int64
	js     *Jset
}

// scanChunk is how many blocks scan reads at a time.
const scanChunk = 64

// scan decodes a jset at every block of the area. Jsets do not wrap, so one that
// starts in a chunk ends at most MaxJsetBlocks-1 blocks past it: each read takes
// that much more. Called before the journal is shared: no lock.
func (j *Journal) scan() ([]foundJset, error) {
	var found []foundJset
	buf := make([]byte, (scanChunk+MaxJsetBlocks-1)*BlockSize)
	for first := int64(0); first < j.nblocks; first += scanChunk {
		n := min(scanChunk+MaxJsetBlocks-1, j.nblocks-first)
		b := buf[:n*BlockSize]
		off := j.cfg.Offset + first*BlockSize
		if _, err := j.cfg.Device.ReadAt(b, off); err != nil {
			return nil, errorf(ErrIO, "read journal at %d: %w", off, err)
		}
		for i := int64(0); i < min(scanChunk, n); i++ {
			js, err := DecodeJset(b[i*BlockSize:], off+i*BlockSize, j.cfg.SetMagic)
			if err != nil {
				continue // torn, stale or never written
			}
			found = append(found, foundJset{pos: first + i, blocks: js.Blocks(), js: js})
		}
	}
	return found, nil
}

// recover sets up the FIFO and the ring from the jsets found and returns the replay.
func (j *Journal) recover(found []foundJset) (*Replay, error) {
	rp := &Replay{}
	j.base = 1
	if len(found) == 0 {
		j.ents = []entry{{}}
		return rp, nil
	}
	newest := found[0]
	bySeq := make(map[uint64]foundJset, len(found))
	var dups []foundJset
	for _, f := range found {
		if f.js.Seq > newest.js.Seq {
			newest = f
		}
		if _, ok := bySeq[f.js.Seq]; ok {
			dups = append(dups, f)
			continue
		}
		bySeq[f.js.Seq] = f
	}
	first, last := newest.js.LastSeq, newest.js.Seq
	corrupt := func(format string, args ...any) error {
		return ondisk.Corruptf("journal", j.cfg.Offset, "newest jset %d (last_seq %d): %s", last, first, fmt.Sprintf(format, args...))
	}
	if last-first >= uint64(j.nblocks) {
		return nil, corrupt("more entries than the ring has blocks (%d)", j.nblocks)
	}
	for _, d := range dups {
		if d.js.Seq >= first {
			return nil, corrupt("jset %d at blocks %d and %d", d.js.Seq, bySeq[d.js.Seq].pos, d.pos)
		}
	}
	end := int64(-1)
	for seq := first; seq <= last; seq++ {
		f, ok := bySeq[seq]
		if !ok {
			return nil, corrupt("jset %d is missing", seq)
		}
		e := entry{pins: 1, state: stateDurable, start: f.pos, pos: f.pos, blocks: f.blocks, cost: f.blocks}
		if end >= 0 {
			e.start = end % j.nblocks
			switch {
			case f.pos == e.start:
			case f.pos == 0 && e.start+f.blocks > j.nblocks:
				e.cost = j.nblocks - e.start + f.blocks
			default:
				return nil, corrupt("jset %d at block %d, expected after jset %d ending at block %d", seq, f.pos, seq-1, end)
			}
		}
		end = f.pos + f.blocks
		j.used += e.cost
		j.ents = append(j.ents, e)
		rp.Entries = append(rp.Entries, Entry{Seq: seq, Keys: f.js.Keys, Root: f.js.Root, NextVolumeID: f.js.NextVolumeID})
	}
	if j.used > j.nblocks {
		return nil, corrupt("entries take %d blocks of a %d-block ring", j.used, j.nblocks)
	}
	j.ents = append(j.ents, entry{})
	j.base = first
	j.head = end % j.nblocks
	j.durableSeq = last
	j.lastSeqOnDisk = first
	j.root, j.nextVolID = newest.js.Root, newest.js.NextVolumeID
	rp.Root, rp.NextVolumeID = j.root, j.nextVolID
	return rp, nil
}
