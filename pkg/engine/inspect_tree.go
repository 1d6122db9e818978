package engine

import (
	"fmt"
	"maps"
	"math"
	"slices"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/journal"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// inspectedNode is a node as the walk decoded it (the tests use it to find
// what to corrupt).
type inspectedNode struct {
	Bucket, Gen uint32
	Level       uint8
	Min, Max    bkey.Pos
	NodeSeq     uint64
	JournalSeq  uint64 // of the newest bset
	Bsets       int
	LogEnd      int        // bytes of log: where the next bset goes
	Keys        []bkey.Key // leaf: its extents before the journal; interior: its children
}

// walkState is the state of the btree walk and the accounting of the data.
type walkState struct {
	buf     []byte
	levels  []LevelReport // by level
	usage   []bucketUsage // by bucket
	sectors []uint64      // bitmap of the live sectors of every bucket; nil if too large
	sweep   journalSweep
	// Per volume id: extents found for volumes the table does not list, and
	// extents past the end of a volume.
	unknownVol map[uint64]int
	pastEnd    map[uint64]int
	staleDirty int
	aliased    int
	firstAlias string
}

type bucketUsage struct{ live, dirty uint32 }

// maxSectorBitmap bounds the memory of the shared-data check: one bit per
// sector of the cache, checked for caches up to 256 GiB.
const maxSectorBitmap = 64 << 20

// pendingNode is a child pointer to visit, with the range its parent gives it.
type pendingNode struct {
	ptr      bkey.Ptr
	min, max bkey.Pos
}

// walkTree reads the btree level by level from the root, so that every node's
// bucket is known before the leaves' data pointers are checked against them,
// and the leaves come in key order (for the journal sweep).
func (in *inspector) walkTree() {
	if !in.haveRoot {
		return
	}
	l := &in.layout
	if in.root.Level >= ondisk.MaxLevel {
		in.problem(SeverityError, "btree", -1, "root level %d, at most %d", in.root.Level, ondisk.MaxLevel-1)
		return
	}
	bt := &BtreeReport{RootBucket: in.root.Bucket, RootGen: in.root.Gen, Depth: int(in.root.Level) + 1}
	in.r.Btree = bt
	in.r.Buckets = &BucketReport{Buckets: l.NBuckets, BucketSize: l.BucketSize}
	w := &walkState{
		buf:        make([]byte, l.BucketSize),
		levels:     make([]LevelReport, bt.Depth),
		usage:      make([]bucketUsage, l.NBuckets),
		unknownVol: map[uint64]int{},
		pastEnd:    map[uint64]int{},
	}
	if bits := uint64(l.NBuckets) * uint64(l.BucketSize/ondisk.SectorSize); bits/8 <= maxSectorBitmap {
		w.sectors = make([]uint64, (bits+63)/64)
	}
	w.sweep = newJournalSweep(in.replay, in.isStale)
	in.treeNodes = make([]bool, l.NBuckets)
	for i := range w.levels {
		w.levels[i].Level = i
	}

	cur := []pendingNode{{ptr: bkey.Ptr{Bucket: in.root.Bucket, Gen: in.root.Gen}, min: bkey.Pos{}, max: bkey.MaxPos}}
	in.claimNode(cur[0].ptr, "the journal's root")
	for level := int(in.root.Level); level >= 0 && len(cur) > 0; level-- {
		var next []pendingNode
		for _, p := range cur {
			if level > 0 {
				next = in.visitInterior(w, p, uint8(level), next)
			} else {
				in.visitLeaf(w, p)
			}
		}
		cur = next
	}
	for i := len(w.levels) - 1; i >= 0; i-- {
		bt.Levels = append(bt.Levels, w.levels[i])
		bt.Nodes += w.levels[i].Nodes
	}
	in.finishData(w)
}

// claimNode marks ptr's bucket as a node's; false (with a problem) if the
// pointer is out of range or the bucket already holds a node.
func (in *inspector) claimNode(ptr bkey.Ptr, from string) bool {
	l := &in.layout
	switch {
	case ptr.Bucket >= l.NBuckets:
		in.problem(SeverityError, "btree", -1, "%s points to bucket %d of %d", from, ptr.Bucket, l.NBuckets)
		return false
	case in.treeNodes[ptr.Bucket]:
		in.problem(SeverityError, "btree", l.BucketOffset(ptr.Bucket), "%s points to bucket %d, which already holds a node", from, ptr.Bucket)
		return false
	}
	in.treeNodes[ptr.Bucket] = true
	if in.gensKnown[ptr.Bucket] && in.gens[ptr.Bucket] != ptr.Gen {
		in.problem(SeverityError, "btree", l.BucketOffset(ptr.Bucket),
			"%s points to bucket %d with generation %d, but the bucket has generation %d (it was reused)",
			from, ptr.Bucket, ptr.Gen, in.gens[ptr.Bucket])
	}
	return true
}

// readNode reads and decodes the node p names; ok is false (with a problem) if
// it cannot be used.
func (in *inspector) readNode(w *walkState, p pendingNode, level uint8) (n inspectedNode, sets [][]bkey.Key, ok bool) {
	l := &in.layout
	off := l.BucketOffset(p.ptr.Bucket)
	what := fmt.Sprintf("level %d node in bucket %d", level, p.ptr.Bucket)
	if err := in.read(w.buf, off); err != nil {
		in.problem(SeverityError, "btree", off, "%s: read: %v", what, err)
		in.r.Btree.BadNodes++
		return n, nil, false
	}
	hdr, sets, end, err := ondisk.DecodeNodeLog(w.buf, off, in.sb.SetMagic)
	if err != nil {
		in.corruptProblem(SeverityError, "btree", fmt.Errorf("%s: %w", what, err))
		in.r.Btree.BadNodes++
		return n, nil, false
	}
	if hdr.Level != level {
		in.problem(SeverityError, "btree", off, "%s has level %d", what, hdr.Level)
		in.r.Btree.BadNodes++
		return n, nil, false
	}
	if hdr.MinPos != p.min || hdr.MaxPos != p.max {
		in.problem(SeverityError, "btree", off, "%s covers [%s, %s), its parent gives it [%s, %s)",
			what, posText(hdr.MinPos), posText(hdr.MaxPos), posText(p.min), posText(p.max))
	}
	lastStart := end - ondisk.BsetSize(len(sets[len(sets)-1]))
	last, _, _, err := ondisk.DecodeBset(w.buf[lastStart:end], off+int64(lastStart), in.sb.SetMagic)
	if err != nil { // DecodeNodeLog decoded it; a bug if this fails
		in.corruptProblem(SeverityError, "btree", err)
	}
	n = inspectedNode{
		Bucket: p.ptr.Bucket, Gen: p.ptr.Gen, Level: level, Min: hdr.MinPos, Max: hdr.MaxPos,
		NodeSeq: hdr.NodeSeq, JournalSeq: last.JournalSeq, Bsets: len(sets), LogEnd: end,
	}
	lr := &w.levels[level]
	lr.Nodes++
	lr.Bsets += len(sets)
	lr.LogBytes += int64(end)
	return n, sets, true
}

// visitInterior reads an interior node and appends its children to next.
func (in *inspector) visitInterior(w *walkState, p pendingNode, level uint8, next []pendingNode) []pendingNode {
	n, sets, ok := in.readNode(w, p, level)
	if !ok {
		return next
	}
	var children []bkey.Key
	for _, keys := range sets {
		for _, k := range keys {
			children = insertChild(children, k)
		}
	}
	w.levels[level].Keys += len(children)
	n.Keys = children
	if in.onNode != nil {
		in.onNode(n)
	}
	off := in.layout.BucketOffset(p.ptr.Bucket)
	if len(children) == 0 || children[len(children)-1].EndPos() != n.Max {
		in.problem(SeverityError, "btree", off, "level %d node in bucket %d does not cover up to its max %s", level, p.ptr.Bucket, posText(n.Max))
	}
	// The children split the range the parent gives (not what the node says,
	// which was checked against it), so the leaves come in order.
	lo := p.min
	for _, k := range children {
		end := k.EndPos()
		if !lo.Less(end) || p.max.Less(end) {
			in.problem(SeverityError, "btree", off, "level %d node in bucket %d: child ending at %s outside (%s, %s]",
				level, p.ptr.Bucket, posText(end), posText(lo), posText(p.max))
			continue
		}
		if in.claimNode(k.Ptr, fmt.Sprintf("level %d node in bucket %d", level, p.ptr.Bucket)) {
			next = append(next, pendingNode{ptr: k.Ptr, min: lo, max: end})
		}
		lo = end
	}
	return next
}

// visitLeaf reads a leaf, applies the journal entries to replay to its range,
// and accounts its extents.
func (in *inspector) visitLeaf(w *walkState, p pendingNode) {
	n, sets, ok := in.readNode(w, p, 0)
	if !ok {
		return
	}
	var set bkey.Set
	for _, keys := range sets {
		set.Apply(keys)
	}
	w.levels[0].Keys += set.Len()
	if in.onNode != nil {
		n.Keys = set.Keys()
		in.onNode(n)
	}
	w.sweep.apply(&set, p.min, p.max)
	for i := 0; i < set.Len(); i++ {
		in.accountKey(w, set.At(i))
	}
}

// accountKey checks one extent of a leaf (the journal applied) and adds it to
// its bucket's and its volume's usage.
func (in *inspector) accountKey(w *walkState, k bkey.Key) {
	l := &in.layout
	in.r.Btree.LeafKeys++
	v := in.vols[k.Vol]
	switch {
	case v == nil && in.volsKnown:
		w.unknownVol[k.Vol]++
	case v == nil:
	case !v.Deleted && k.End() > v.Size/ondisk.SectorSize:
		w.pastEnd[k.Vol]++
	}
	b := k.Ptr.Bucket
	switch {
	case b >= l.NBuckets:
		in.problem(SeverityError, "btree", -1, "extent %v points past the last bucket (%d)", k, l.NBuckets)
		return
	case !in.gensKnown[b]:
		return // reported with the gens page
	case k.Ptr.Gen > in.gens[b]:
		in.problem(SeverityError, "btree", l.BucketOffset(b), "extent %v has a generation newer than its bucket's (%d)", k, in.gens[b])
		return
	case k.Ptr.Gen != in.gens[b]:
		// Dead: the bucket was reused. Dirty ones too: a bucket with dirty
		// data is never invalidated, so that data was written back first.
		in.r.Buckets.StaleKeys++
		if k.Dirty() {
			w.staleDirty++
		}
		return
	}
	bucketSectors := uint64(l.BucketSize / ondisk.SectorSize)
	if uint64(k.Ptr.Offset)+uint64(k.Len) > bucketSectors {
		in.problem(SeverityError, "btree", l.BucketOffset(b), "extent %v runs past the end of its bucket (%d sectors)", k, bucketSectors)
		return
	}
	u := &w.usage[b]
	u.live = addSat(u.live, k.Len)
	if k.Dirty() {
		u.dirty = addSat(u.dirty, k.Len)
	}
	if v != nil {
		v.CachedBytes += uint64(k.Len) * ondisk.SectorSize
		v.Extents++
		if k.Dirty() {
			v.DirtyBytes += uint64(k.Len) * ondisk.SectorSize
		}
	}
	if w.sectors != nil {
		first := uint64(b)*bucketSectors + uint64(k.Ptr.Offset)
		for s := first; s < first+uint64(k.Len); s++ {
			word, bit := s/64, uint64(1)<<(s%64)
			if w.sectors[word]&bit != 0 {
				if w.aliased == 0 {
					w.firstAlias = k.String()
				}
				w.aliased++
				break
			}
			w.sectors[word] |= bit
		}
	}
}

// posText formats a key position as volume:sector.
func posText(p bkey.Pos) string {
	if p == bkey.MaxPos {
		return "max"
	}
	return fmt.Sprintf("%d:%d", p.Vol, p.LBA)
}

func addSat(a, b uint32) uint32 {
	if a > math.MaxUint32-b {
		return math.MaxUint32
	}
	return a + b
}

// finishData turns the usage into the bucket and volume reports.
func (in *inspector) finishData(w *walkState) {
	l := &in.layout
	br := in.r.Buckets
	bucketSectors := l.BucketSize / ondisk.SectorSize
	for b := uint32(0); b < l.NBuckets; b++ {
		u := w.usage[b]
		switch {
		case in.treeNodes[b]:
			br.Btree++
			if u.live > 0 {
				in.problem(SeverityError, "buckets", l.BucketOffset(b), "bucket %d holds a btree node and %d sectors of live data", b, u.live)
			}
			continue
		case u.live == 0:
			br.Empty++
			continue
		case u.live > bucketSectors:
			in.problem(SeverityError, "buckets", l.BucketOffset(b), "bucket %d: extents claim %d sectors of a %d-sector bucket", b, u.live, bucketSectors)
		}
		br.Data++
		br.LiveBytes += uint64(u.live) * ondisk.SectorSize
		br.DirtyBytes += uint64(u.dirty) * ondisk.SectorSize
		if u.dirty > 0 {
			br.DirtyBuckets++
		}
		br.Fill[min(3, (uint64(u.live)*4-1)/uint64(bucketSectors))]++
	}
	if w.aliased > 0 {
		in.problem(SeverityError, "buckets", -1, "%d extents share cache sectors with another extent (first: %s)", w.aliased, w.firstAlias)
	}
	for _, id := range slices.Sorted(maps.Keys(w.unknownVol)) {
		in.problem(SeverityError, "volumes", -1, "%d extents of volume id %d, which the volume table does not list", w.unknownVol[id], id)
	}
	for _, id := range slices.Sorted(maps.Keys(w.pastEnd)) {
		v := in.vols[id]
		in.problem(SeverityError, "volumes", -1, "%d extents of volume %q (id %d) lie past its end (%d bytes)", w.pastEnd[id], v.Name, id, v.Size)
	}
	if br.StaleKeys > 0 {
		in.problem(SeverityNote, "buckets", -1, "%d extents point into reused buckets (%d of them dirty, written back before the reuse): dead, dropped by GC",
			br.StaleKeys, w.staleDirty)
	}
}

// journalSweep applies the keys of the journal entries to replay to the
// leaves, visited in key order: each leaf gets, in journal order, the parts of
// the keys that overlap its range, as the engine's replay inserts them.
type journalSweep struct {
	keys   []bkey.Key // in journal order
	byPos  []int      // indices of keys, by start position
	next   int        // next index of byPos not yet active
	active []int      // keys starting before the current leaf's end
}

func newJournalSweep(entries []journal.Entry, isStale func(bucket, gen uint32) bool) journalSweep {
	var s journalSweep
	for _, e := range entries {
		for _, k := range e.Keys {
			// As replay: a key whose bucket was reused since is a whiteout.
			if !k.Whiteout() && isStale(k.Ptr.Bucket, k.Ptr.Gen) {
				k.Flags, k.Ptr = bkey.FlagWhiteout, bkey.Ptr{}
			}
			if k.Len > 0 {
				s.keys = append(s.keys, k)
			}
		}
	}
	s.byPos = make([]int, len(s.keys))
	for i := range s.byPos {
		s.byPos[i] = i
	}
	slices.SortStableFunc(s.byPos, func(a, b int) int { return s.keys[a].StartPos().Cmp(s.keys[b].StartPos()) })
	return s
}

// apply inserts into set the journal keys overlapping [min, max). Calls come
// with increasing, non-overlapping ranges.
func (s *journalSweep) apply(set *bkey.Set, min, max bkey.Pos) {
	for s.next < len(s.byPos) && s.keys[s.byPos[s.next]].StartPos().Less(max) {
		s.active = append(s.active, s.byPos[s.next])
		s.next++
	}
	s.active = slices.DeleteFunc(s.active, func(i int) bool { return !min.Less(s.keys[i].EndPos()) })
	if len(s.active) == 0 {
		return
	}
	overlap := slices.Clone(s.active)
	slices.Sort(overlap) // journal order
	for _, i := range overlap {
		k := s.keys[i]
		lo, hi := uint64(0), uint64(math.MaxUint64)
		if k.Vol == min.Vol {
			lo = min.LBA
		}
		if k.Vol == max.Vol {
			hi = max.LBA
		}
		if k.Vol < min.Vol || k.Vol > max.Vol || k.Start >= hi || k.End() <= lo {
			continue
		}
		set.Insert(clipKey(k, lo, hi))
	}
}
