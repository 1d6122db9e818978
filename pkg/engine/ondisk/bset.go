package ondisk

// Bset format, version 1. A btree node lives in one bucket. Its contents are a
// log of bsets (sorted sets of keys): the first is written at offset 0 when the
// node is created or rewritten, later ones are appended after it. Each bset starts
// at a multiple of BlockSize inside the bucket and is padded to a multiple of
// BlockSize. All integers are little-endian.
//
//	bucket: | bset 0 | bset 1 | ... | bset n-1 | zero, garbage or an older log |
//
//	 0  magic        u64   SetMagic ^ MagicBset
//	 8  csum         u32   crc32c of bytes [12, 80+nkeys*40)
//	12  version      u32   1
//	16  node seq     u64   random per node incarnation; equal in every bset of the log
//	24  journal seq  u64   newest journal entry whose keys this bset includes
//	32  min pos      vol u64, lba u64
//	48  max pos      vol u64, lba u64
//	64  index        u32   position in the log, 0 for the first bset
//	68  level        u8    0 for leaves
//	69  reserved     [3]byte   zero
//	72  nkeys        u32
//	76  reserved     u32   zero
//	80  keys         nkeys × KeySize (see key.go)
//	    padding to a multiple of BlockSize, not covered by the checksum
//
// The node covers the positions [min pos, max pos). A bset is a log of the updates
// written to the node since the previous bset, in insertion order and not
// necessarily sorted: the reader replays the bsets, and the keys in each, in order,
// later keys winning (bkey.Set.Apply for leaves). Keys of a leaf (level 0) are
// non-empty extents or whiteouts inside the node's range; keys of an interior node
// are child pointers, keyed by their end position, which lies in (min pos, max pos].
//
// The log ends at the first block that does not continue it: a block that is zero,
// has a bad magic, a different node seq (left over from an earlier use of the
// bucket), an index that is not the next one, or a bad checksum (a torn write at
// the tail; the journal still holds those keys). A bset that continues the log
// but disagrees with the first bset about the level or the range, or goes back in
// journal seq, is corruption.

import (
	"fmt"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// BsetVersion is the bset format version.
const BsetVersion = 1

// BsetHeaderSize is the size of a bset header.
const BsetHeaderSize = 80

// MaxLevel bounds the level of a btree node.
const MaxLevel = 16

// BsetHeader is the header of a bset.
type BsetHeader struct {
	NodeSeq    uint64
	JournalSeq uint64
	MinPos     bkey.Pos
	MaxPos     bkey.Pos
	Index      uint32
	Level      uint8
}

// BsetSize is the on-disk size of a bset of n keys, padding included.
func BsetSize(n int) int { return int(alignUp(int64(BsetHeaderSize+n*KeySize), BlockSize)) }

// BsetMaxKeys is the number of keys a bset of at most space bytes holds.
func BsetMaxKeys(space int) int { return max(space-BsetHeaderSize, 0) / KeySize }

// checkBset returns what is wrong with a bset, or "".
func checkBset(h *BsetHeader, keys []bkey.Key) string {
	switch {
	case h.Level >= MaxLevel:
		return fmt.Sprintf("level %d, max %d", h.Level, MaxLevel-1)
	case !h.MinPos.Less(h.MaxPos):
		return fmt.Sprintf("empty range [%v, %v)", h.MinPos, h.MaxPos)
	}
	for i, k := range keys {
		if why := checkKey(k); why != "" {
			return fmt.Sprintf("key %d: %s", i, why)
		}
		if h.Level == 0 {
			switch {
			case k.Len == 0:
				return fmt.Sprintf("key %d %v: empty extent in a leaf", i, k)
			case k.StartPos().Less(h.MinPos) || h.MaxPos.Less(k.EndPos()):
				return fmt.Sprintf("key %d %v outside the node range [%v, %v)", i, k, h.MinPos, h.MaxPos)
			}
		} else if !h.MinPos.Less(k.EndPos()) || h.MaxPos.Less(k.EndPos()) {
			return fmt.Sprintf("key %d %v: end outside the node range (%v, %v]", i, k, h.MinPos, h.MaxPos)
		}
	}
	return ""
}

// EncodeBset encodes a bset of keys, padded to a multiple of BlockSize. It panics
// if the bset would not decode: writing it would make the node unreadable.
func EncodeBset(h BsetHeader, keys []bkey.Key, setMagic uint64) []byte {
	if why := checkBset(&h, keys); why != "" {
		panic("ondisk: EncodeBset: " + why)
	}
	return encodeBset(h, keys, setMagic)
}

func encodeBset(h BsetHeader, keys []bkey.Key, setMagic uint64) []byte {
	b := make([]byte, BsetSize(len(keys)))
	putHeader(b, setMagic^MagicBset, BsetVersion)
	le.PutUint64(b[16:], h.NodeSeq)
	le.PutUint64(b[24:], h.JournalSeq)
	le.PutUint64(b[32:], h.MinPos.Vol)
	le.PutUint64(b[40:], h.MinPos.LBA)
	le.PutUint64(b[48:], h.MaxPos.Vol)
	le.PutUint64(b[56:], h.MaxPos.LBA)
	le.PutUint32(b[64:], h.Index)
	b[68] = h.Level
	le.PutUint32(b[72:], uint32(len(keys)))
	for i, k := range keys {
		EncodeKey(b[BsetHeaderSize+i*KeySize:], k)
	}
	sealSum(b, BsetHeaderSize+len(keys)*KeySize)
	return b
}

// DecodeBset decodes the bset at the start of b, read from device offset off. b
// may extend past the bset (the rest of the bucket). It returns the bset's size
// on disk, padding included.
func DecodeBset(b []byte, off int64, setMagic uint64) (h BsetHeader, keys []bkey.Key, size int, err error) {
	const what = "bset"
	if err := checkHeader(what, b, off, BsetHeaderSize, setMagic^MagicBset, BsetVersion); err != nil {
		return BsetHeader{}, nil, 0, err
	}
	nkeys := le.Uint32(b[72:])
	if int64(nkeys) > int64(BsetMaxKeys(len(b))) {
		return BsetHeader{}, nil, 0, Corruptf(what, off, "%d keys past the end of the %d-byte buffer", nkeys, len(b))
	}
	end := BsetHeaderSize + int(nkeys)*KeySize
	if size = BsetSize(int(nkeys)); size > len(b) {
		return BsetHeader{}, nil, 0, Corruptf(what, off, "padded size %d past the end of the %d-byte buffer", size, len(b))
	}
	if err := checkSum(what, b, off, end); err != nil {
		return BsetHeader{}, nil, 0, err
	}
	if b[69]|b[70]|b[71] != 0 || le.Uint32(b[76:]) != 0 {
		return BsetHeader{}, nil, 0, Corruptf(what, off, "reserved bytes not zero")
	}
	h = BsetHeader{
		NodeSeq:    le.Uint64(b[16:]),
		JournalSeq: le.Uint64(b[24:]),
		MinPos:     bkey.Pos{Vol: le.Uint64(b[32:]), LBA: le.Uint64(b[40:])},
		MaxPos:     bkey.Pos{Vol: le.Uint64(b[48:]), LBA: le.Uint64(b[56:])},
		Index:      le.Uint32(b[64:]),
		Level:      b[68],
	}
	keys = make([]bkey.Key, nkeys)
	for i := range keys {
		koff := BsetHeaderSize + i*KeySize
		if keys[i], err = DecodeKey(b[koff:], off+int64(koff)); err != nil {
			return BsetHeader{}, nil, 0, err
		}
	}
	if why := checkBset(&h, keys); why != "" {
		return BsetHeader{}, nil, 0, Corruptf(what, off, "%s", why)
	}
	return h, keys, size, nil
}

// DecodeNodeLog decodes the log of bsets of the btree node in bucket, read from
// device offset off. The first bset must be valid, with index 0; the log ends at
// the first block that does not continue it (see the format above). It returns
// the header of the first bset, the keys of each bset in log order, and the
// offset in bucket where the log ends, where the next bset is to be appended.
func DecodeNodeLog(bucket []byte, off int64, setMagic uint64) (hdr0 BsetHeader, sets [][]bkey.Key, end int, err error) {
	hdr0, keys, end, err := DecodeBset(bucket, off, setMagic)
	if err != nil {
		return BsetHeader{}, nil, 0, err
	}
	if hdr0.Index != 0 {
		return BsetHeader{}, nil, 0, Corruptf("btree node", off, "first bset has index %d", hdr0.Index)
	}
	sets = [][]bkey.Key{keys}
	prev := hdr0
	for end < len(bucket) {
		h, keys, size, err := DecodeBset(bucket[end:], off+int64(end), setMagic)
		if err != nil || h.NodeSeq != hdr0.NodeSeq || h.Index != prev.Index+1 {
			break
		}
		switch {
		case h.Level != hdr0.Level || h.MinPos != hdr0.MinPos || h.MaxPos != hdr0.MaxPos:
			return BsetHeader{}, nil, 0, Corruptf("btree node", off+int64(end),
				"bset %d: level %d range [%v, %v), but bset 0: level %d range [%v, %v)",
				h.Index, h.Level, h.MinPos, h.MaxPos, hdr0.Level, hdr0.MinPos, hdr0.MaxPos)
		case h.JournalSeq < prev.JournalSeq:
			return BsetHeader{}, nil, 0, Corruptf("btree node", off+int64(end),
				"bset %d: journal seq %d before bset %d's %d", h.Index, h.JournalSeq, prev.Index, prev.JournalSeq)
		}
		sets = append(sets, keys)
		end += size
		prev = h
	}
	return hdr0, sets, end, nil
}
