package ondisk

// Volume table format, version 1. The table is written whole, padded to a
// multiple of BlockSize, alternately into copy A and copy B of its area (always
// the copy not holding the current table), with Seq bumped each time. The reader
// decodes both copies and keeps the valid one with the higher Seq (PickVolTable).
// All integers are little-endian.
//
//	header, 32 bytes
//	 0  magic        u64   SetMagic ^ MagicVolTable
//	 8  csum         u32   crc32c of bytes [12, 32+length)
//	12  version      u32   1
//	16  seq          u64
//	24  count        u32   number of records
//	28  length       u32   bytes of records following the header
//	32  records, back to back, in increasing id order:
//
//	record, 44 bytes + name + backing path
//	 0  id           u64   != 0, never reused
//	 8  size         u64   bytes, a multiple of 512
//	16  seq cutoff   u64   bytes; sequential IO streams longer than this bypass the cache
//	24  created      i64   unix seconds
//	32  flags        u32   VolumeDeleted
//	36  cache mode   u8    CacheWritethrough..CacheNone
//	37  backing      u8    BackingFile, BackingBlockDev, BackingNone
//	38  name len     u16   1..253
//	40  path len     u16   0..4096; 0 if and only if backing is BackingNone
//	42  reserved     u16   0
//	44  name bytes, then backing path bytes
//
// The checksum covers the header after the csum field and the records; the
// padding after them is not covered. Names of volumes not marked deleted are
// unique.

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
)

// VolTableVersion is the volume table format version.
const VolTableVersion = 1

const (
	volTableHeaderSize = 32
	volRecordFixedSize = 44

	MaxVolumeNameLen    = 253  // a CSI volume (PV) name
	MaxBackingPathLen   = 4096 // PATH_MAX
	MaxVolumeRecordSize = volRecordFixedSize + MaxVolumeNameLen + MaxBackingPathLen
)

// Cache modes of a volume.
const (
	CacheWritethrough uint8 = 1 + iota
	CacheWriteback
	CacheWritearound
	CacheNone
)

// Backing stores of a volume.
const (
	BackingFile     uint8 = 1 + iota // a sparse file in the node's backing directory
	BackingBlockDev                  // a block device
	BackingNone                      // cache-only volume
)

// Volume flags.
const (
	VolumeDeleted uint32 = 1 << 0 // deleted; kept so that the id is never reused

	volumeFlags = VolumeDeleted
)

// Errors of EncodeVolTable.
var (
	ErrVolTableFull  = errors.New("ondisk: volume table full")
	ErrInvalidVolume = errors.New("ondisk: invalid volume record")
)

// VolumeRecord is one volume of the cache set.
type VolumeRecord struct {
	ID          uint64
	Name        string // the CSI volume name, <= MaxVolumeNameLen bytes
	SizeBytes   uint64
	CacheMode   uint8
	Backing     uint8
	BackingPath string // <= MaxBackingPathLen bytes; empty for BackingNone
	SeqCutoff   uint64
	Flags       uint32
	CreatedUnix int64
}

// Deleted reports whether the volume is deleted.
func (r *VolumeRecord) Deleted() bool { return r.Flags&VolumeDeleted != 0 }

// VolTable is the table of volumes.
type VolTable struct {
	Seq     uint64
	Volumes []VolumeRecord // in increasing ID order after decoding
}

// VolTableAreaSize is the size of one copy of the volume table area that holds
// maxVolumes records of the largest size.
func VolTableAreaSize(maxVolumes int) int64 {
	return alignUp(volTableHeaderSize+int64(maxVolumes)*MaxVolumeRecordSize, BlockSize)
}

// check returns what is wrong with r, or "".
func (r *VolumeRecord) check() string {
	switch {
	case r.ID == 0:
		return "id is zero"
	case len(r.Name) == 0 || len(r.Name) > MaxVolumeNameLen:
		return fmt.Sprintf("name length %d not in [1, %d]", len(r.Name), MaxVolumeNameLen)
	case len(r.BackingPath) > MaxBackingPathLen:
		return fmt.Sprintf("backing path length %d, more than %d", len(r.BackingPath), MaxBackingPathLen)
	case r.SizeBytes == 0 || r.SizeBytes%SectorSize != 0:
		return fmt.Sprintf("size %d is not a positive multiple of %d", r.SizeBytes, SectorSize)
	case r.CacheMode < CacheWritethrough || r.CacheMode > CacheNone:
		return fmt.Sprintf("unknown cache mode %d", r.CacheMode)
	case r.Backing < BackingFile || r.Backing > BackingNone:
		return fmt.Sprintf("unknown backing type %d", r.Backing)
	case (r.Backing == BackingNone) != (r.BackingPath == ""):
		return fmt.Sprintf("backing type %d with backing path %q", r.Backing, r.BackingPath)
	case r.Flags&^volumeFlags != 0:
		return fmt.Sprintf("unknown flags %#x", r.Flags&^volumeFlags)
	}
	return ""
}

// EncodeVolTable encodes t, its records sorted by ID, padded to a multiple of
// BlockSize. It fails with ErrInvalidVolume for a record that would not decode
// (or duplicate ids or live names), and with ErrVolTableFull if the encoding is
// larger than areaSize.
func EncodeVolTable(t VolTable, setMagic uint64, areaSize int64) ([]byte, error) {
	vols := slices.SortedFunc(slices.Values(t.Volumes), func(a, b VolumeRecord) int { return cmp.Compare(a.ID, b.ID) })
	n := volTableHeaderSize
	for i := range vols {
		if why := vols[i].check(); why != "" {
			return nil, fmt.Errorf("%w: volume %d: %s", ErrInvalidVolume, vols[i].ID, why)
		}
		n += volRecordFixedSize + len(vols[i].Name) + len(vols[i].BackingPath)
	}
	if why := checkVolumeSet(vols); why != "" {
		return nil, fmt.Errorf("%w: %s", ErrInvalidVolume, why)
	}
	if size := alignUp(int64(n), BlockSize); size > areaSize {
		return nil, fmt.Errorf("%w: %d volumes need %d bytes, area is %d", ErrVolTableFull, len(vols), size, areaSize)
	}
	return encodeVolTable(t.Seq, vols, setMagic), nil
}

// encodeVolTable encodes vols as they are, valid or not.
func encodeVolTable(seq uint64, vols []VolumeRecord, setMagic uint64) []byte {
	n := volTableHeaderSize
	for i := range vols {
		n += volRecordFixedSize + len(vols[i].Name) + len(vols[i].BackingPath)
	}
	b := make([]byte, alignUp(int64(n), BlockSize))
	putHeader(b, setMagic^MagicVolTable, VolTableVersion)
	le.PutUint64(b[16:], seq)
	le.PutUint32(b[24:], uint32(len(vols)))
	le.PutUint32(b[28:], uint32(n-volTableHeaderSize))
	p := b[volTableHeaderSize:]
	for _, r := range vols {
		le.PutUint64(p[0:], r.ID)
		le.PutUint64(p[8:], r.SizeBytes)
		le.PutUint64(p[16:], r.SeqCutoff)
		le.PutUint64(p[24:], uint64(r.CreatedUnix))
		le.PutUint32(p[32:], r.Flags)
		p[36] = r.CacheMode
		p[37] = r.Backing
		le.PutUint16(p[38:], uint16(len(r.Name)))
		le.PutUint16(p[40:], uint16(len(r.BackingPath)))
		p = p[volRecordFixedSize:]
		p = p[copy(p, r.Name):]
		p = p[copy(p, r.BackingPath):]
	}
	sealSum(b, n)
	return b
}

// checkVolumeSet checks that the ids of vols, sorted by id, are unique and that
// the names of live volumes are unique.
func checkVolumeSet(vols []VolumeRecord) string {
	names := make(map[string]uint64, len(vols))
	for i := range vols {
		r := &vols[i]
		if i > 0 && vols[i-1].ID >= r.ID {
			return fmt.Sprintf("volume ids not increasing: %d after %d", r.ID, vols[i-1].ID)
		}
		if r.Deleted() {
			continue
		}
		if id, dup := names[r.Name]; dup {
			return fmt.Sprintf("volumes %d and %d have the same name %q", id, r.ID, r.Name)
		}
		names[r.Name] = r.ID
	}
	return ""
}

// DecodeVolTable decodes a volume table copy read from device offset off. b may be
// the whole area copy; only its used prefix is read.
func DecodeVolTable(b []byte, off int64, setMagic uint64) (VolTable, error) {
	const what = "volume table"
	if err := checkHeader(what, b, off, volTableHeaderSize, setMagic^MagicVolTable, VolTableVersion); err != nil {
		return VolTable{}, err
	}
	count, length := le.Uint32(b[24:]), le.Uint32(b[28:])
	if int64(length) > int64(len(b)-volTableHeaderSize) {
		return VolTable{}, Corruptf(what, off, "records length %d exceeds the %d bytes after the header", length, len(b)-volTableHeaderSize)
	}
	end := volTableHeaderSize + int(length)
	if err := checkSum(what, b, off, end); err != nil {
		return VolTable{}, err
	}
	if count > length/volRecordFixedSize {
		return VolTable{}, Corruptf(what, off, "count %d too large for %d bytes of records", count, length)
	}
	t := VolTable{Seq: le.Uint64(b[16:]), Volumes: make([]VolumeRecord, 0, count)}
	p := b[volTableHeaderSize:end]
	for i := range count {
		roff := off + int64(end-len(p))
		if len(p) < volRecordFixedSize {
			return VolTable{}, Corruptf(what, roff, "record %d truncated", i)
		}
		nlen, plen := int(le.Uint16(p[38:])), int(le.Uint16(p[40:]))
		if le.Uint16(p[42:]) != 0 {
			return VolTable{}, Corruptf(what, roff, "record %d: reserved bytes not zero", i)
		}
		if len(p) < volRecordFixedSize+nlen+plen {
			return VolTable{}, Corruptf(what, roff, "record %d: name and path (%d+%d bytes) past the end of the records", i, nlen, plen)
		}
		r := VolumeRecord{
			ID:          le.Uint64(p[0:]),
			SizeBytes:   le.Uint64(p[8:]),
			SeqCutoff:   le.Uint64(p[16:]),
			CreatedUnix: int64(le.Uint64(p[24:])),
			Flags:       le.Uint32(p[32:]),
			CacheMode:   p[36],
			Backing:     p[37],
			Name:        string(p[volRecordFixedSize : volRecordFixedSize+nlen]),
			BackingPath: string(p[volRecordFixedSize+nlen : volRecordFixedSize+nlen+plen]),
		}
		if why := r.check(); why != "" {
			return VolTable{}, Corruptf(what, roff, "volume %d: %s", r.ID, why)
		}
		t.Volumes = append(t.Volumes, r)
		p = p[volRecordFixedSize+nlen+plen:]
	}
	if len(p) != 0 {
		return VolTable{}, Corruptf(what, off, "%d trailing bytes after %d records", len(p), count)
	}
	if why := checkVolumeSet(t.Volumes); why != "" {
		return VolTable{}, Corruptf(what, off, "%s", why)
	}
	return t, nil
}

// PickVolTable decodes the two copies of the volume table, read at offA and offB,
// and returns the valid one with the higher Seq. The next table is written to
// Picked.Copy.Other().
func PickVolTable(a, b []byte, offA, offB int64, setMagic uint64) (VolTable, Picked, error) {
	ta, errA := DecodeVolTable(a, offA, setMagic)
	tb, errB := DecodeVolTable(b, offB, setMagic)
	p, err := choose("volume table", offA, errA, errB, ta.Seq, tb.Seq)
	switch {
	case err != nil:
		return VolTable{}, Picked{}, err
	case p.Copy == CopyB:
		return tb, p, nil
	}
	return ta, p, nil
}
