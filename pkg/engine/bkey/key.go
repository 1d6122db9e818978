// Package bkey defines the keys of the cache engine's btree and the in-memory sorted
// key sets that btree nodes are made of.
//
// A key maps an extent of a volume, (Vol, [Start, Start+Len)) in 512-byte sectors, to
// a pointer into the cache device: (Bucket, Offset in sectors inside the bucket, Gen).
// A pointer is valid only while Gen equals the bucket's current generation: reusing a
// bucket bumps its generation, which makes every old pointer into it stale at once.
//
// Interior btree nodes use the same Key type: the key's end position (Vol, End()) is
// the upper bound (exclusive) of the child it points to, and Ptr names the child
// node's bucket and generation.
package bkey

import "fmt"

// Key flags.
const (
	// FlagDirty marks an extent whose data is in the cache only (writeback mode) and
	// has not been written to the backing store yet.
	FlagDirty uint8 = 1 << 0
	// FlagWhiteout marks a deletion: the range has no data in the cache. Whiteouts
	// exist in node logs and journal entries so that a later set can delete keys
	// written by an earlier one; compaction drops them.
	FlagWhiteout uint8 = 1 << 1
)

// Ptr points at data (or a child btree node) in the cache device.
type Ptr struct {
	Bucket uint32 // bucket index
	Offset uint32 // offset inside the bucket, in sectors
	Gen    uint32 // generation of the bucket when the pointer was made
}

// Key is one btree key: an extent of a volume and where its data lives.
type Key struct {
	Vol   uint64 // volume id (never reused)
	Start uint64 // first sector of the extent
	Len   uint32 // length in sectors; zero only for interior-node sentinels
	Flags uint8
	Ptr   Ptr
}

// End is the first sector after the extent.
func (k Key) End() uint64 { return k.Start + uint64(k.Len) }

// Dirty reports whether the extent is dirty.
func (k Key) Dirty() bool { return k.Flags&FlagDirty != 0 }

// Whiteout reports whether the key is a deletion.
func (k Key) Whiteout() bool { return k.Flags&FlagWhiteout != 0 }

func (k Key) String() string {
	s := fmt.Sprintf("%d:[%d,%d) -> b%d+%d g%d", k.Vol, k.Start, k.End(), k.Ptr.Bucket, k.Ptr.Offset, k.Ptr.Gen)
	if k.Dirty() {
		s += " dirty"
	}
	if k.Whiteout() {
		s += " whiteout"
	}
	return s
}

// Pos is a position in the key space: a sector of a volume.
type Pos struct {
	Vol uint64
	LBA uint64
}

// Less orders positions by volume, then sector.
func (p Pos) Less(q Pos) bool {
	if p.Vol != q.Vol {
		return p.Vol < q.Vol
	}
	return p.LBA < q.LBA
}

// Cmp returns -1, 0 or +1.
func (p Pos) Cmp(q Pos) int {
	switch {
	case p.Less(q):
		return -1
	case q.Less(p):
		return 1
	}
	return 0
}

// StartPos and EndPos are the key's bounds as positions.
func (k Key) StartPos() Pos { return Pos{k.Vol, k.Start} }

// EndPos is the (exclusive) end of the key as a position.
func (k Key) EndPos() Pos { return Pos{k.Vol, k.End()} }

// MaxPos is greater than every position.
var MaxPos = Pos{^uint64(0), ^uint64(0)}
