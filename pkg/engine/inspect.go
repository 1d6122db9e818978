package engine

// Read-only inspection and offline check of a cache set (csi-cache inspect and
// check; bcache-super-show and fsck in spirit).
//
// Inspect reads the cache device with ReadAt only, never writes, and keeps
// going past anything it cannot decode: each finding becomes a Problem, so a
// cache set in use (whose areas change between the reads) or a damaged one
// still gets a report. It follows the engine's open path without the engine:
//
//	superblock A/B  ondisk.PickSuperblock; the device must be as large as it says
//	volume table    ondisk.PickVolTable
//	gens            ondisk.PickGensPage for every page
//	journal         journal.Open (reads only; the same verdict as the engine's
//	                open), or a tolerant scan of the ring when that fails
//	btree           from the journal's root: every node's log decoded
//	                (ondisk.DecodeNodeLog) and replayed; ranges, levels and child
//	                pointers checked against the parent; then the journal entries
//	                to replay are applied to the leaves as Open would
//	buckets, data   usage recomputed from the leaves: live and dirty bytes per
//	                bucket and per volume, stale pointers, pointers into btree
//	                buckets or past a bucket, data shared by two keys
//
// CheckDevice is Inspect that fails with a *CheckError (IsCorruption) when a
// problem of severity error was found. Hit ratios are not on disk: the hit and
// miss counters live in the running engine (VolumeStats, /metrics).

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/device"
	"github.com/csi-cache/csi-cache/pkg/engine/journal"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// Severity grades a Problem.
type Severity string

// Severities, least severe first.
const (
	// SeverityNote is a state worth knowing that needs nothing (a torn write
	// of the copy being replaced, stale pointers waiting for GC).
	SeverityNote Severity = "note"
	// SeverityWarning is damage the engine works around (one bad copy of a
	// replicated structure).
	SeverityWarning Severity = "warning"
	// SeverityError is corruption: the engine would refuse to open the cache
	// set, or could serve wrong data.
	SeverityError Severity = "error"
)

// Problem is one finding of Inspect.
type Problem struct {
	Severity Severity `json:"severity"`
	// Area is the structure: superblock, volume table, gens, journal, btree,
	// buckets or volumes.
	Area string `json:"area"`
	// Offset is the byte offset on the device, -1 if none applies.
	Offset  int64  `json:"offset"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	if p.Offset >= 0 {
		return fmt.Sprintf("%s: %s at offset %d: %s", p.Severity, p.Area, p.Offset, p.Message)
	}
	return fmt.Sprintf("%s: %s: %s", p.Severity, p.Area, p.Message)
}

// Inspection describes a cache set as found on its device.
type Inspection struct {
	DeviceSize  int64             `json:"device_size"`
	Superblock  *SuperblockReport `json:"superblock"`
	VolumeTable *VolTableReport   `json:"volume_table"`
	Gens        *GensReport       `json:"gens"`
	Journal     *JournalReport    `json:"journal"`
	Btree       *BtreeReport      `json:"btree"`
	Buckets     *BucketReport     `json:"buckets"`
	Volumes     []VolumeReport    `json:"volumes"`
	Problems    []Problem         `json:"problems"`
}

// Errors reports whether the inspection found a problem of severity error.
func (r *Inspection) Errors() int {
	n := 0
	for _, p := range r.Problems {
		if p.Severity == SeverityError {
			n++
		}
	}
	return n
}

// CopyState describes one copy of a replicated structure.
type CopyState struct {
	// State is "current" (the copy used), "ok" (valid, same seq), "stale"
	// (valid, older), "bad" (does not decode) or "blank" (never written: all
	// zeroes).
	State string `json:"state"`
	Seq   uint64 `json:"seq,omitempty"`
	Error string `json:"error,omitempty"`
}

// SuperblockReport is the superblock in use and the state of both copies.
type SuperblockReport struct {
	CopyA        CopyState `json:"copy_a"`
	CopyB        CopyState `json:"copy_b"`
	Version      uint32    `json:"version"`
	UUID         string    `json:"uuid"`
	Seq          uint64    `json:"seq"`
	Created      time.Time `json:"created"`
	Clean        bool      `json:"clean"`
	DeviceSize   int64     `json:"device_size"`
	BucketSize   uint32    `json:"bucket_size"`
	Buckets      uint32    `json:"buckets"`
	MaxVolumes   uint32    `json:"max_volumes"`
	NextVolumeID uint64    `json:"next_volume_id"`

	VolTableOffset int64 `json:"vol_table_offset"`
	VolTableSize   int64 `json:"vol_table_size"`
	GensOffset     int64 `json:"gens_offset"`
	GensSize       int64 `json:"gens_size"`
	JournalOffset  int64 `json:"journal_offset"`
	JournalSize    int64 `json:"journal_size"`
	BucketsOffset  int64 `json:"buckets_offset"`
}

// VolTableReport is the volume table in use.
type VolTableReport struct {
	CopyA   CopyState `json:"copy_a"`
	CopyB   CopyState `json:"copy_b"`
	Seq     uint64    `json:"seq"`
	Records int       `json:"records"`
	Deleted int       `json:"deleted"` // records of deletions a crash interrupted
}

// GensReport summarizes the bucket-generation table.
type GensReport struct {
	Pages uint32 `json:"pages"`
	// OtherBad counts pages whose copy not in use is bad (a torn update);
	// Unreadable those with both copies bad.
	OtherBad   int    `json:"other_bad"`
	Unreadable int    `json:"unreadable"`
	MaxGen     uint32 `json:"max_gen"`
}

// JournalReport describes the journal ring and what a reopen would replay.
type JournalReport struct {
	Offset    int64   `json:"offset"`
	Size      int64   `json:"size"`
	UsedBytes int64   `json:"used_bytes"`
	Fill      float64 `json:"fill"`
	// NewestSeq is the newest valid entry; Open replays LastSeq..NewestSeq.
	NewestSeq    uint64 `json:"newest_seq"`
	LastSeq      uint64 `json:"last_seq"`
	Entries      int    `json:"entries"`
	Keys         int    `json:"keys"`
	RootBucket   uint32 `json:"root_bucket"`
	RootGen      uint32 `json:"root_gen"`
	RootLevel    uint8  `json:"root_level"`
	NextVolumeID uint64 `json:"next_volume_id"`
	// DroppedUnflushed counts entries written without a flush on an earlier
	// boot that a reopen would drop (writes never flushed before a power loss).
	DroppedUnflushed int `json:"dropped_unflushed,omitempty"`
	// Scanned is true when the entries come from a tolerant scan because the
	// engine's journal open failed (see Problems).
	Scanned bool `json:"scanned,omitempty"`
}

// BtreeReport describes the btree.
type BtreeReport struct {
	RootBucket uint32        `json:"root_bucket"`
	RootGen    uint32        `json:"root_gen"`
	Depth      int           `json:"depth"`
	Nodes      int           `json:"nodes"`
	Levels     []LevelReport `json:"levels"` // root level first
	// LeafKeys counts the extents in the leaves once the journal is applied.
	LeafKeys int `json:"leaf_keys"`
	// BadNodes counts nodes that could not be read or decoded.
	BadNodes int `json:"bad_nodes"`
}

// LevelReport describes the nodes of one btree level.
type LevelReport struct {
	Level int `json:"level"`
	Nodes int `json:"nodes"`
	// Keys counts children (interior levels) or extents as stored in the
	// node logs, before the journal is applied (leaves).
	Keys     int   `json:"keys"`
	Bsets    int   `json:"bsets"`
	LogBytes int64 `json:"log_bytes"`
}

// BucketReport is the bucket usage recomputed from the btree.
type BucketReport struct {
	Buckets    uint32 `json:"buckets"`
	BucketSize uint32 `json:"bucket_size"`
	Btree      int    `json:"btree"`
	// Data counts buckets with live data; DirtyBuckets those with dirty data.
	Data         int    `json:"data"`
	DirtyBuckets int    `json:"dirty_buckets"`
	Empty        int    `json:"empty"`
	LiveBytes    uint64 `json:"live_bytes"`
	DirtyBytes   uint64 `json:"dirty_bytes"`
	// Fill counts data buckets by live share: up to 25%, 50%, 75%, 100%.
	Fill [4]int `json:"fill"`
	// StaleKeys are extents pointing into a bucket reused since: dead data
	// that GC drops.
	StaleKeys int `json:"stale_keys"`
}

// VolumeReport is one volume of the volume table with the data the btree
// holds for it.
type VolumeReport struct {
	ID          uint64    `json:"id"`
	Name        string    `json:"name"`
	Size        uint64    `json:"size"`
	Mode        string    `json:"mode"`
	Backing     string    `json:"backing"`
	BackingPath string    `json:"backing_path,omitempty"`
	SeqCutoff   uint64    `json:"seq_cutoff"`
	Created     time.Time `json:"created"`
	// Deleted: a deletion that a crash interrupted; the next open finishes it.
	Deleted     bool   `json:"deleted,omitempty"`
	CachedBytes uint64 `json:"cached_bytes"`
	DirtyBytes  uint64 `json:"dirty_bytes"`
	Extents     int    `json:"extents"`
}

// CheckError is the error of CheckDevice when it finds corruption: the
// problems of severity error. IsCorruption holds for it.
type CheckError struct {
	Problems []Problem
}

func (e *CheckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "engine: check: %d problem", len(e.Problems))
	if len(e.Problems) != 1 {
		b.WriteString("s")
	}
	for i, p := range e.Problems {
		if i == 3 {
			fmt.Fprintf(&b, "; ... (%d more)", len(e.Problems)-i)
			break
		}
		b.WriteString("; ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrCorrupt) true.
func (e *CheckError) Is(target error) bool { return target == ErrCorrupt }

// ErrNotCacheSet is returned by Inspect and CheckDevice for a device whose
// superblock copies are both unreadable: there is nothing more to read.
// IsCorruption holds for it too.
var ErrNotCacheSet = fmt.Errorf("engine: not a csi-cache cache set (no valid superblock): %w", ErrCorrupt)

// CheckDevice checks the cache set on dev offline, without writing: the
// superblock, volume table, generations, journal and every btree node, and the
// data pointers against each other (see Inspect). It returns the inspection
// and nil when it found no problem of severity error; otherwise a *CheckError
// listing them, ErrNotCacheSet, or the device's read error.
func CheckDevice(dev device.Device) (*Inspection, error) {
	r, err := Inspect(dev)
	if err != nil {
		return r, err
	}
	var bad []Problem
	for _, p := range r.Problems {
		if p.Severity == SeverityError {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		return r, &CheckError{Problems: bad}
	}
	return r, nil
}

// Inspect reads the cache set on dev without writing to it and describes it.
// Whatever it cannot decode or finds inconsistent is a Problem in the report;
// on a cache set in use, updates in flight between its reads can show up as
// problems that are not there. The error is ErrNotCacheSet when neither
// superblock copy decodes, or a read error of the superblock; the report is
// never nil.
func Inspect(dev device.Device) (*Inspection, error) {
	in := &inspector{dev: dev, r: &Inspection{DeviceSize: dev.Size(), Volumes: []VolumeReport{}, Problems: []Problem{}}}
	err := in.run()
	return in.r, err
}

// inspector holds the state of one Inspect.
type inspector struct {
	dev      device.Device
	r        *Inspection
	sb       ondisk.Superblock
	layout   ondisk.Layout
	layoutOK bool // the superblock decoded and fits the device

	gens      []uint32
	gensKnown []bool // per bucket: its gens page was readable

	vols      map[uint64]*VolumeReport
	volsKnown bool // the volume table decoded

	replay    []journal.Entry
	root      journal.Root
	haveRoot  bool
	treeNodes []bool // per bucket: holds a node reached by the walk

	// onNode, if set, sees every node the walk decodes (tests).
	onNode func(inspectedNode)
}

func (in *inspector) problem(sev Severity, area string, off int64, format string, args ...any) {
	in.r.Problems = append(in.r.Problems, Problem{Severity: sev, Area: area, Offset: off, Message: fmt.Sprintf(format, args...)})
}

// corruptProblem records err, using a corruption error's offset.
func (in *inspector) corruptProblem(sev Severity, area string, err error) {
	var ce *ondisk.CorruptionError
	if errors.As(err, &ce) {
		in.problem(sev, area, ce.Offset, "%s: %s", ce.What, ce.Reason)
		return
	}
	in.problem(sev, area, -1, "%v", err)
}

func (in *inspector) read(p []byte, off int64) error {
	if off < 0 || off+int64(len(p)) > in.dev.Size() {
		return fmt.Errorf("engine: read [%d,+%d) past the end of the %d-byte device", off, len(p), in.dev.Size())
	}
	_, err := in.dev.ReadAt(p, off)
	return err
}

func (in *inspector) run() error {
	if err := in.readSuperblock(); err != nil {
		return err
	}
	if !in.layoutOK {
		return nil // the layout does not fit the device: nothing else to read
	}
	in.readVolTable()
	in.readGens()
	in.readJournal()
	in.walkTree()
	in.finish()
	return nil
}

// finish lists the volumes in id order.
func (in *inspector) finish() {
	for _, id := range slices.Sorted(maps.Keys(in.vols)) {
		in.r.Volumes = append(in.r.Volumes, *in.vols[id])
	}
}

// copyState describes a copy from its decode error and the Picked result.
// otherBuf is the raw bytes of the copy not picked (to tell a blank copy from a
// damaged one).
func copyState(which ondisk.Copy, p ondisk.Picked, seq, otherSeq uint64, otherBuf []byte) CopyState {
	if which == p.Copy {
		return CopyState{State: "current", Seq: seq}
	}
	switch {
	case p.OtherErr == nil && !p.OtherStale:
		return CopyState{State: "ok", Seq: otherSeq}
	case p.OtherErr == nil:
		return CopyState{State: "stale", Seq: otherSeq}
	case allZero(otherBuf):
		return CopyState{State: "blank"}
	}
	return CopyState{State: "bad", Error: p.OtherErr.Error()}
}

func (in *inspector) readSuperblock() error {
	a, b := make([]byte, ondisk.BlockSize), make([]byte, ondisk.BlockSize)
	for _, x := range []struct {
		buf []byte
		c   ondisk.Copy
	}{{a, ondisk.CopyA}, {b, ondisk.CopyB}} {
		if err := in.read(x.buf, ondisk.SuperblockOffset(x.c)); err != nil {
			in.problem(SeverityError, "superblock", ondisk.SuperblockOffset(x.c), "read: %v", err)
			return fmt.Errorf("engine: inspect: read superblock %s: %w", x.c, err)
		}
	}
	sb, picked, err := ondisk.PickSuperblock(a, b)
	if err != nil {
		in.corruptProblem(SeverityError, "superblock", err)
		return ErrNotCacheSet
	}
	other, _ := ondisk.DecodeSuperblock(ofCopy(picked.Copy.Other(), a, b),
		ondisk.SuperblockOffset(picked.Copy.Other()))
	in.sb = sb
	rep := &SuperblockReport{
		Version:        sb.Version,
		UUID:           formatUUID(sb.SetUUID),
		Seq:            sb.Seq,
		Created:        time.Unix(sb.CreatedUnix, 0).UTC(),
		Clean:          sb.Flags&ondisk.SuperblockClean != 0,
		DeviceSize:     sb.DeviceSize,
		BucketSize:     sb.BucketSize,
		Buckets:        sb.NBuckets,
		MaxVolumes:     sb.MaxVolumes,
		NextVolumeID:   sb.NextVolumeID,
		VolTableOffset: sb.VolTableOffset,
		VolTableSize:   sb.VolTableSize,
		GensOffset:     sb.GensOffset,
		GensSize:       sb.GensSize,
		JournalOffset:  sb.JournalOffset,
		JournalSize:    sb.JournalSize,
		BucketsOffset:  sb.BucketsOffset,
	}
	rep.CopyA = copyState(ondisk.CopyA, picked, sb.Seq, other.Seq, ofCopy(picked.Copy.Other(), a, b))
	rep.CopyB = copyState(ondisk.CopyB, picked, sb.Seq, other.Seq, ofCopy(picked.Copy.Other(), a, b))
	// Format writes both copies and nothing rewrites them: a bad one is damage.
	for _, cs := range []struct {
		c ondisk.Copy
		s CopyState
	}{{ondisk.CopyA, rep.CopyA}, {ondisk.CopyB, rep.CopyB}} {
		switch cs.s.State {
		case "bad", "blank":
			in.problem(SeverityWarning, "superblock", ondisk.SuperblockOffset(cs.c), "copy %s is %s (copy %s is used): %s",
				cs.c, cs.s.State, picked.Copy, orNone(cs.s.Error))
		case "stale":
			in.problem(SeverityNote, "superblock", ondisk.SuperblockOffset(cs.c), "copy %s is older (seq %d, copy %s has %d)",
				cs.c, cs.s.Seq, picked.Copy, sb.Seq)
		}
	}
	if sb.DeviceSize > in.dev.Size() {
		in.problem(SeverityError, "superblock", ondisk.SuperblockOffset(picked.Copy),
			"formatted for %d bytes, the device has %d", sb.DeviceSize, in.dev.Size())
		in.r.Superblock = rep
		return nil
	}
	l, err := sb.Layout()
	if err != nil { // the decoder checked the layout; this is a bug
		in.problem(SeverityError, "superblock", ondisk.SuperblockOffset(picked.Copy), "layout: %v", err)
		in.r.Superblock = rep
		return nil
	}
	in.layout, in.layoutOK = l, true
	in.r.Superblock = rep
	return nil
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

// ofCopy returns a if c is copy A, else b.
func ofCopy[T any](c ondisk.Copy, a, b T) T {
	if c == ondisk.CopyA {
		return a
	}
	return b
}

func orNone(s string) string {
	if s == "" {
		return "all zeroes"
	}
	return s
}

func formatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

func (in *inspector) readVolTable() {
	l := &in.layout
	in.vols = map[uint64]*VolumeReport{}
	a, b := make([]byte, l.VolTableSize), make([]byte, l.VolTableSize)
	offA, offB := l.VolTableCopyOffset(ondisk.CopyA), l.VolTableCopyOffset(ondisk.CopyB)
	if err := in.read(a, offA); err != nil {
		in.problem(SeverityError, "volume table", offA, "read: %v", err)
		return
	}
	if err := in.read(b, offB); err != nil {
		in.problem(SeverityError, "volume table", offB, "read: %v", err)
		return
	}
	t, picked, err := ondisk.PickVolTable(a, b, offA, offB, in.sb.SetMagic)
	if err != nil {
		in.corruptProblem(SeverityError, "volume table", err)
		return
	}
	var otherSeq uint64
	if picked.OtherErr == nil {
		ob := ofCopy(picked.Copy.Other(), a, b)
		ot, _ := ondisk.DecodeVolTable(ob, l.VolTableCopyOffset(picked.Copy.Other()), in.sb.SetMagic)
		otherSeq = ot.Seq
	}
	rep := &VolTableReport{Seq: t.Seq, Records: len(t.Volumes)}
	rep.CopyA = copyState(ondisk.CopyA, picked, t.Seq, otherSeq, ofCopy(picked.Copy.Other(), a, b))
	rep.CopyB = copyState(ondisk.CopyB, picked, t.Seq, otherSeq, ofCopy(picked.Copy.Other(), a, b))
	if picked.OtherErr != nil {
		if st := ofCopy(picked.Copy.Other(), rep.CopyA, rep.CopyB); st.State == "bad" {
			// Each update goes to the copy not in use: a torn update leaves
			// the older table readable, as designed.
			in.problem(SeverityNote, "volume table", l.VolTableCopyOffset(picked.Copy.Other()),
				"copy %s does not decode (a torn update?); copy %s (seq %d) is used: %s", picked.Copy.Other(), picked.Copy, t.Seq, st.Error)
		}
	}
	for _, rec := range t.Volumes {
		v := &VolumeReport{
			ID: rec.ID, Name: rec.Name, Size: rec.SizeBytes,
			Mode: CacheMode(rec.CacheMode).String(), Backing: BackingKind(rec.Backing).String(),
			BackingPath: rec.BackingPath, SeqCutoff: rec.SeqCutoff,
			Created: time.Unix(rec.CreatedUnix, 0).UTC(), Deleted: rec.Deleted(),
		}
		if v.Deleted {
			rep.Deleted++
			in.problem(SeverityNote, "volumes", -1, "volume %q (id %d) is marked deleted: the next open finishes the deletion", rec.Name, rec.ID)
		}
		in.vols[rec.ID] = v
	}
	in.volsKnown = true
	in.r.VolumeTable = rep
}

func (in *inspector) readGens() {
	l := &in.layout
	in.gens = make([]uint32, l.NBuckets)
	in.gensKnown = make([]bool, l.NBuckets)
	rep := &GensReport{Pages: l.GensPagesUsed()}
	a, b := make([]byte, ondisk.BlockSize), make([]byte, ondisk.BlockSize)
	for p := uint32(0); p < rep.Pages; p++ {
		offA, offB := l.GensPageOffset(ondisk.CopyA, p), l.GensPageOffset(ondisk.CopyB, p)
		if err := in.read(a, offA); err != nil {
			in.problem(SeverityError, "gens", offA, "read page %d: %v", p, err)
			rep.Unreadable++
			continue
		}
		if err := in.read(b, offB); err != nil {
			in.problem(SeverityError, "gens", offB, "read page %d: %v", p, err)
			rep.Unreadable++
			continue
		}
		page, picked, err := ondisk.PickGensPage(a, b, l, p, in.sb.SetMagic)
		if err != nil {
			in.corruptProblem(SeverityError, "gens", err)
			rep.Unreadable++
			continue
		}
		if picked.OtherErr != nil && !allZero(ofCopy(picked.Copy.Other(), a, b)) {
			rep.OtherBad++
		}
		for i, g := range page.Gens {
			in.gens[page.First+uint32(i)] = g
			in.gensKnown[page.First+uint32(i)] = true
			rep.MaxGen = max(rep.MaxGen, g)
		}
	}
	if rep.OtherBad > 0 {
		in.problem(SeverityNote, "gens", -1, "%d page(s) have a copy that does not decode (a torn update?); the other copy is used", rep.OtherBad)
	}
	in.r.Gens = rep
}

// isStale reports whether a pointer's generation is not its bucket's: the
// allocator's IsStale on the generations read from the device. Buckets whose
// generation is unknown count as live.
func (in *inspector) isStale(bucket, gen uint32) bool {
	if bucket >= in.layout.NBuckets {
		return true
	}
	return in.gensKnown[bucket] && in.gens[bucket] != gen
}
