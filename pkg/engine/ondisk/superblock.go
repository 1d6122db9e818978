package ondisk

// Superblock format, version 1. One 4 KiB block, written to both copies (A at
// 4 KiB, then B at 8 KiB, with a sync in between) on every update, with Seq
// bumped each time. All integers are little-endian.
//
//	offset  field               size
//	     0  magic               u64   SuperblockMagic
//	     8  csum                u32   crc32c of bytes [12, 4096)
//	    12  version             u32   1
//	    16  set uuid            [16]byte
//	    32  set magic           u64   random, != 0
//	    40  seq                 u64   bumped on every write
//	    48  created             i64   unix seconds
//	    56  device size         u64
//	    64  block size          u32   4096
//	    68  bucket size         u32
//	    72  nbuckets            u32
//	    76  max volumes         u32
//	    80  flags               u32   SuperblockClean
//	    84  reserved            u32   0
//	    88  next volume id      u64
//	    96  vol table offset    u64   copy A; copy B follows it
//	   104  vol table size      u64   one copy
//	   112  gens offset         u64   copy A; copy B follows it
//	   120  gens size           u64   one copy
//	   128  journal offset      u64
//	   136  journal size        u64
//	   144  buckets offset      u64
//	   152  reserved            zero up to 4096
//
// The checksum is the crc32c of bytes [12, 4096): everything after the csum field,
// reserved bytes included (which must be zero). Besides magic, version and
// checksum, the decoder checks every field against the others: the areas must be
// exactly the layout ComputeLayout gives for (device size, bucket size, journal
// size, max volumes), which keeps them aligned, ordered, non-overlapping and
// inside the device.

import (
	"crypto/rand"
	"fmt"
	"time"
)

// SuperblockVersion is the superblock format version this package reads and writes.
const SuperblockVersion = 1

// Superblock flags.
const (
	// SuperblockClean is set by a clean shutdown and cleared when the cache set is
	// opened for writing.
	SuperblockClean uint32 = 1 << 0

	superblockFlags = SuperblockClean // all known flags
)

const superblockEnd = 152 // end of the fields; the rest of the block is zero

// Superblock is the root of a cache set's metadata.
type Superblock struct {
	Version      uint32 // set by DecodeSuperblock; EncodeSuperblock writes SuperblockVersion
	SetUUID      [16]byte
	SetMagic     uint64 // random; mixed into every other structure's magic
	Seq          uint64 // bumped on every write
	CreatedUnix  int64
	DeviceSize   int64
	BlockSize    uint32
	BucketSize   uint32
	NBuckets     uint32
	MaxVolumes   uint32
	Flags        uint32
	NextVolumeID uint64 // volume ids are never reused

	VolTableOffset, VolTableSize int64 // copy A, and the size of one copy
	GensOffset, GensSize         int64 // copy A, and the size of one copy
	JournalOffset, JournalSize   int64
	BucketsOffset                int64
}

// NewSuperblock returns the superblock of a new cache set laid out as l, with a
// random SetUUID and SetMagic, Seq 1 and NextVolumeID 1.
func NewSuperblock(l Layout, created time.Time) Superblock {
	sb := Superblock{
		Version:      SuperblockVersion,
		Seq:          1,
		CreatedUnix:  created.Unix(),
		NextVolumeID: 1,
	}
	sb.SetLayout(l)
	rand.Read(sb.SetUUID[:])
	sb.SetUUID[6] = sb.SetUUID[6]&0x0f | 0x40 // RFC 9562 version 4
	sb.SetUUID[8] = sb.SetUUID[8]&0x3f | 0x80
	for !ValidSetMagic(sb.SetMagic) {
		var m [8]byte
		rand.Read(m[:])
		sb.SetMagic = le.Uint64(m[:])
	}
	return sb
}

// SetLayout copies the geometry of l into sb.
func (sb *Superblock) SetLayout(l Layout) {
	sb.DeviceSize = l.DeviceSize
	sb.BlockSize = BlockSize
	sb.BucketSize = l.BucketSize
	sb.NBuckets = l.NBuckets
	sb.MaxVolumes = uint32(l.MaxVolumes)
	sb.VolTableOffset, sb.VolTableSize = VolTableOffset, l.VolTableSize
	sb.GensOffset, sb.GensSize = l.GensOffset, l.GensSize
	sb.JournalOffset, sb.JournalSize = l.JournalOffset, l.JournalSize
	sb.BucketsOffset = l.BucketsOffset
}

// Layout recomputes the layout described by sb. The superblock decoder has
// checked that it matches the stored offsets.
func (sb *Superblock) Layout() (Layout, error) {
	return ComputeLayout(sb.DeviceSize, sb.BucketSize, sb.JournalSize, int(sb.MaxVolumes))
}

// EncodeSuperblock returns the 4 KiB block of sb. It panics if sb would not
// decode: an invalid superblock is a bug of the caller, and must not reach disk.
func EncodeSuperblock(sb Superblock) []byte {
	if why := sb.check(); why != "" {
		panic("ondisk: EncodeSuperblock: " + why)
	}
	return encodeSuperblock(sb)
}

func encodeSuperblock(sb Superblock) []byte {
	b := make([]byte, BlockSize)
	putHeader(b, SuperblockMagic, SuperblockVersion)
	copy(b[16:32], sb.SetUUID[:])
	le.PutUint64(b[32:], sb.SetMagic)
	le.PutUint64(b[40:], sb.Seq)
	le.PutUint64(b[48:], uint64(sb.CreatedUnix))
	le.PutUint64(b[56:], uint64(sb.DeviceSize))
	le.PutUint32(b[64:], sb.BlockSize)
	le.PutUint32(b[68:], sb.BucketSize)
	le.PutUint32(b[72:], sb.NBuckets)
	le.PutUint32(b[76:], sb.MaxVolumes)
	le.PutUint32(b[80:], sb.Flags)
	le.PutUint64(b[88:], sb.NextVolumeID)
	le.PutUint64(b[96:], uint64(sb.VolTableOffset))
	le.PutUint64(b[104:], uint64(sb.VolTableSize))
	le.PutUint64(b[112:], uint64(sb.GensOffset))
	le.PutUint64(b[120:], uint64(sb.GensSize))
	le.PutUint64(b[128:], uint64(sb.JournalOffset))
	le.PutUint64(b[136:], uint64(sb.JournalSize))
	le.PutUint64(b[144:], uint64(sb.BucketsOffset))
	sealSum(b, BlockSize)
	return b
}

// DecodeSuperblock decodes the superblock block b, read from device offset off.
// b must be exactly one block.
func DecodeSuperblock(b []byte, off int64) (Superblock, error) {
	const what = "superblock"
	if len(b) != BlockSize {
		return Superblock{}, Corruptf(what, off, "bad length %d, want %d", len(b), BlockSize)
	}
	if err := checkHeader(what, b, off, BlockSize, SuperblockMagic, SuperblockVersion); err != nil {
		return Superblock{}, err
	}
	if err := checkSum(what, b, off, BlockSize); err != nil {
		return Superblock{}, err
	}
	if le.Uint32(b[84:]) != 0 || !isZero(b[superblockEnd:]) {
		return Superblock{}, Corruptf(what, off, "reserved bytes not zero")
	}
	sb := Superblock{
		Version:        le.Uint32(b[12:]),
		SetMagic:       le.Uint64(b[32:]),
		Seq:            le.Uint64(b[40:]),
		CreatedUnix:    int64(le.Uint64(b[48:])),
		DeviceSize:     int64(le.Uint64(b[56:])),
		BlockSize:      le.Uint32(b[64:]),
		BucketSize:     le.Uint32(b[68:]),
		NBuckets:       le.Uint32(b[72:]),
		MaxVolumes:     le.Uint32(b[76:]),
		Flags:          le.Uint32(b[80:]),
		NextVolumeID:   le.Uint64(b[88:]),
		VolTableOffset: int64(le.Uint64(b[96:])),
		VolTableSize:   int64(le.Uint64(b[104:])),
		GensOffset:     int64(le.Uint64(b[112:])),
		GensSize:       int64(le.Uint64(b[120:])),
		JournalOffset:  int64(le.Uint64(b[128:])),
		JournalSize:    int64(le.Uint64(b[136:])),
		BucketsOffset:  int64(le.Uint64(b[144:])),
	}
	copy(sb.SetUUID[:], b[16:32])
	if why := sb.check(); why != "" {
		return Superblock{}, Corruptf(what, off, "%s", why)
	}
	return sb, nil
}

// check returns what is wrong with sb, or "".
func (sb *Superblock) check() string {
	switch {
	case sb.SetUUID == [16]byte{}:
		return "set uuid is zero"
	case !ValidSetMagic(sb.SetMagic):
		return "invalid set magic"
	case sb.Seq == 0:
		return "seq is zero"
	case sb.NextVolumeID == 0:
		return "next volume id is zero"
	case sb.Flags&^superblockFlags != 0:
		return fmt.Sprintf("unknown flags %#x", sb.Flags&^superblockFlags)
	case sb.BlockSize != BlockSize:
		return fmt.Sprintf("block size %d, want %d", sb.BlockSize, BlockSize)
	case sb.MaxVolumes > MaxVolumes:
		return fmt.Sprintf("max volumes %d, more than %d", sb.MaxVolumes, MaxVolumes)
	}
	l, err := sb.Layout()
	if err != nil {
		return "layout: " + err.Error()
	}
	for _, f := range []struct {
		name      string
		got, want int64
	}{
		{"nbuckets", int64(sb.NBuckets), int64(l.NBuckets)},
		{"volume table offset", sb.VolTableOffset, VolTableOffset},
		{"volume table size", sb.VolTableSize, l.VolTableSize},
		{"gens offset", sb.GensOffset, l.GensOffset},
		{"gens size", sb.GensSize, l.GensSize},
		{"journal offset", sb.JournalOffset, l.JournalOffset},
		{"buckets offset", sb.BucketsOffset, l.BucketsOffset},
	} {
		if f.got != f.want {
			return fmt.Sprintf("%s %d does not match the layout (%d)", f.name, f.got, f.want)
		}
	}
	return ""
}

// PickSuperblock decodes the two superblock copies a (read at SuperblockOffsetA)
// and b (at SuperblockOffsetB) and returns the valid one with the higher Seq. If
// both are bad, the corruption error gives both reasons. If both are valid but
// belong to different cache sets (a format that crashed between the two writes
// of a device not zeroed first), that is a corruption error too: neither copy can
// be trusted to be the current set. Picked reports a bad or stale copy, which the
// engine rewrites.
func PickSuperblock(a, b []byte) (Superblock, Picked, error) {
	sa, errA := DecodeSuperblock(a, SuperblockOffsetA)
	sb, errB := DecodeSuperblock(b, SuperblockOffsetB)
	p, err := choose("superblock", SuperblockOffsetA, errA, errB, sa.Seq, sb.Seq)
	switch {
	case err != nil:
		return Superblock{}, Picked{}, err
	case p.OtherErr == nil && (sa.SetUUID != sb.SetUUID || sa.SetMagic != sb.SetMagic):
		return Superblock{}, Picked{}, Corruptf("superblock", SuperblockOffsetA,
			"copies A and B belong to different cache sets")
	case p.Copy == CopyB:
		return sb, p, nil
	}
	return sa, p, nil
}
