package ondisk

// The layout of a cache device. Every area starts at a multiple of BlockSize; the
// buckets start at a multiple of the bucket size.
//
//	offset                  +------------------------------------------+
//	0                       | unused (room for a partition label)      | 4 KiB
//	SuperblockOffsetA 4 KiB +------------------------------------------+
//	                        | superblock copy A                        | 4 KiB
//	SuperblockOffsetB 8 KiB +------------------------------------------+
//	                        | superblock copy B                        | 4 KiB
//	VolTableOffset   12 KiB +------------------------------------------+
//	                        | volume table copy A                      | VolTableSize
//	                        +------------------------------------------+
//	                        | volume table copy B                      | VolTableSize
//	GensOffset              +------------------------------------------+
//	                        | bucket-generation table copy A           | GensSize
//	                        +------------------------------------------+
//	                        | bucket-generation table copy B           | GensSize
//	JournalOffset           +------------------------------------------+
//	                        | journal                                  | JournalSize
//	                        +------------------------------------------+
//	                        | padding to a multiple of the bucket size |
//	BucketsOffset           +------------------------------------------+
//	                        | bucket 0 | bucket 1 | ... | NBuckets-1   | NBuckets*BucketSize
//	                        +------------------------------------------+
//	                        | tail shorter than a bucket (unused)      |
//	DeviceSize              +------------------------------------------+
//
// The volume table area holds MaxVolumes records of the largest size (see
// VolTableAreaSize). The generation table holds GensPerPage generations per 4 KiB
// page; page p of copy c is at GensPageOffset(c, p). It has the fewest pages that
// hold the buckets left after it (GensPagesUsed() may still be one less, when
// one page fewer would leave room for more buckets than it can hold).

import (
	"errors"
	"fmt"
	"math"
	"math/bits"
)

// Sizes and limits of the layout.
const (
	BlockSize  = 4096 // unit of every metadata area and write
	SectorSize = 512  // unit of key offsets and lengths

	SuperblockOffsetA = 1 * BlockSize
	SuperblockOffsetB = 2 * BlockSize
	VolTableOffset    = 3 * BlockSize

	MinBucketSize  = 64 << 10
	MaxBucketSize  = 8 << 20
	MinJournalSize = 16 * BlockSize
	MaxVolumes     = 1 << 16 // upper bound of the maxVolumes parameter
	MinBuckets     = 16      // btree root, journal-independent reserves and some data
	MaxDeviceSize  = 1 << 60 // keeps offset arithmetic far from overflow
)

// Copy names one of the two copies of a replicated structure.
type Copy int

// The two copies. Copy A is at the lower offset.
const (
	CopyA Copy = 0
	CopyB Copy = 1
)

// Other returns the other copy.
func (c Copy) Other() Copy { return 1 - c }

func (c Copy) String() string {
	if c == CopyA {
		return "A"
	}
	return "B"
}

// Errors of ComputeLayout. They describe bad parameters, not corruption.
var (
	ErrInvalidLayout  = errors.New("ondisk: invalid layout parameters")
	ErrDeviceTooSmall = errors.New("ondisk: device too small")
)

// Layout is the position of every area of a cache device. All offsets and sizes
// are in bytes; see the diagram at the top of layout.go.
type Layout struct {
	DeviceSize int64
	BucketSize uint32
	MaxVolumes int

	VolTableSize  int64 // size of one copy; copy A at VolTableOffset, B right after
	GensOffset    int64 // copy A; copy B at GensOffset+GensSize
	GensSize      int64 // size of one copy, GensPages*BlockSize
	GensPages     uint32
	JournalOffset int64
	JournalSize   int64
	BucketsOffset int64
	NBuckets      uint32
}

// ComputeLayout lays out a device of deviceSize bytes with buckets of bucketSize
// bytes (a power of two from 64 KiB to 8 MiB), a journal of journalSize bytes (a
// multiple of BlockSize, at least MinJournalSize) and room for maxVolumes volume
// records (1 to MaxVolumes). The errors wrap ErrInvalidLayout or ErrDeviceTooSmall.
func ComputeLayout(deviceSize int64, bucketSize uint32, journalSize int64, maxVolumes int) (Layout, error) {
	switch {
	case bucketSize < MinBucketSize || bucketSize > MaxBucketSize || bits.OnesCount32(bucketSize) != 1:
		return Layout{}, fmt.Errorf("%w: bucket size %d is not a power of two between %d and %d",
			ErrInvalidLayout, bucketSize, MinBucketSize, MaxBucketSize)
	case journalSize < MinJournalSize || journalSize%BlockSize != 0:
		return Layout{}, fmt.Errorf("%w: journal size %d is not a multiple of %d of at least %d",
			ErrInvalidLayout, journalSize, BlockSize, MinJournalSize)
	case maxVolumes < 1 || maxVolumes > MaxVolumes:
		return Layout{}, fmt.Errorf("%w: max volumes %d not in [1, %d]", ErrInvalidLayout, maxVolumes, MaxVolumes)
	case deviceSize < 0 || deviceSize > MaxDeviceSize:
		return Layout{}, fmt.Errorf("%w: device size %d not in [0, %d]", ErrInvalidLayout, deviceSize, int64(MaxDeviceSize))
	case journalSize > deviceSize:
		return Layout{}, fmt.Errorf("%w: %d bytes, journal alone needs %d", ErrDeviceTooSmall, deviceSize, journalSize)
	}
	l := Layout{
		DeviceSize:   deviceSize,
		BucketSize:   bucketSize,
		MaxVolumes:   maxVolumes,
		VolTableSize: VolTableAreaSize(maxVolumes),
		JournalSize:  journalSize,
	}
	bs := int64(bucketSize)
	l.GensOffset = VolTableOffset + 2*l.VolTableSize
	maxBuckets := (deviceSize - alignUp(l.GensOffset+journalSize, bs)) / bs
	if maxBuckets < MinBuckets {
		return Layout{}, fmt.Errorf("%w: %d bytes leave room for %d buckets of %d bytes, need %d",
			ErrDeviceTooSmall, deviceSize, max(maxBuckets, 0), bucketSize, MinBuckets)
	}
	if maxBuckets > math.MaxUint32 {
		return Layout{}, fmt.Errorf("%w: %d buckets of %d bytes, more than 2^32; use larger buckets",
			ErrInvalidLayout, maxBuckets, bucketSize)
	}
	// The table for maxBuckets is large enough; shrink it while a smaller one
	// still holds the buckets left once it is smaller.
	buckets := func(pages int64) int64 {
		return (deviceSize - alignUp(l.GensOffset+2*pages*BlockSize+journalSize, bs)) / bs
	}
	pages := (maxBuckets + GensPerPage - 1) / GensPerPage
	for pages > 1 && (pages-1)*GensPerPage >= buckets(pages-1) {
		pages--
	}
	nb := buckets(pages)
	if nb < MinBuckets {
		return Layout{}, fmt.Errorf("%w: %d bytes leave room for %d buckets of %d bytes, need %d",
			ErrDeviceTooSmall, deviceSize, max(nb, 0), bucketSize, MinBuckets)
	}
	l.GensPages = uint32(pages)
	l.GensSize = pages * BlockSize
	l.JournalOffset = l.GensOffset + 2*l.GensSize
	l.BucketsOffset = alignUp(l.JournalOffset+journalSize, bs)
	l.NBuckets = uint32(nb)
	return l, nil
}

func alignUp(x, a int64) int64 { return (x + a - 1) / a * a }

// VolTableCopyOffset is the offset of copy c of the volume table.
func (l *Layout) VolTableCopyOffset(c Copy) int64 {
	return VolTableOffset + int64(c)*l.VolTableSize
}

// GensPageOffset is the offset of page p of copy c of the generation table.
func (l *Layout) GensPageOffset(c Copy, p uint32) int64 {
	return l.GensOffset + int64(c)*l.GensSize + int64(p)*BlockSize
}

// BucketOffset is the offset of bucket b.
func (l *Layout) BucketOffset(b uint32) int64 {
	return l.BucketsOffset + int64(b)*int64(l.BucketSize)
}

// SuperblockOffset is the offset of copy c of the superblock.
func SuperblockOffset(c Copy) int64 { return SuperblockOffsetA + int64(c)*BlockSize }

// Check verifies that the areas of l are aligned, in the documented order, do not
// overlap, and fit in the device. A Layout from ComputeLayout always passes.
func (l *Layout) Check() error {
	type area struct {
		name      string
		off, size int64
	}
	areas := []area{
		{"superblock A", SuperblockOffsetA, BlockSize},
		{"superblock B", SuperblockOffsetB, BlockSize},
		{"volume table A", l.VolTableCopyOffset(CopyA), l.VolTableSize},
		{"volume table B", l.VolTableCopyOffset(CopyB), l.VolTableSize},
		{"gens A", l.GensPageOffset(CopyA, 0), l.GensSize},
		{"gens B", l.GensPageOffset(CopyB, 0), l.GensSize},
		{"journal", l.JournalOffset, l.JournalSize},
		{"buckets", l.BucketsOffset, int64(l.NBuckets) * int64(l.BucketSize)},
	}
	end := int64(SuperblockOffsetA)
	for _, a := range areas {
		switch {
		case a.off%BlockSize != 0 || a.size%BlockSize != 0 || a.size <= 0:
			return fmt.Errorf("ondisk: layout: %s [%d,+%d) not block aligned", a.name, a.off, a.size)
		case a.off < end:
			return fmt.Errorf("ondisk: layout: %s at %d overlaps the previous area ending at %d", a.name, a.off, end)
		case a.size > l.DeviceSize-a.off:
			return fmt.Errorf("ondisk: layout: %s [%d,+%d) past the device end %d", a.name, a.off, a.size, l.DeviceSize)
		}
		end = a.off + a.size
	}
	if l.BucketSize == 0 || l.BucketsOffset%int64(l.BucketSize) != 0 {
		return fmt.Errorf("ondisk: layout: buckets at %d not aligned to the bucket size %d", l.BucketsOffset, l.BucketSize)
	}
	if uint64(l.GensPages)*GensPerPage < uint64(l.NBuckets) || int64(l.GensPages)*BlockSize != l.GensSize {
		return fmt.Errorf("ondisk: layout: %d gens pages cannot hold %d buckets", l.GensPages, l.NBuckets)
	}
	return nil
}
