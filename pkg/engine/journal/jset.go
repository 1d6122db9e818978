package journal

// The on-disk journal entry: a jset (bcache's struct jset).
//
// A jset starts at a BlockSize-aligned offset of the journal area and is padded with
// zeroes to a multiple of BlockSize. It never wraps around the end of the area: a jset
// that would not fit before the end is written at block 0 instead (see journal.go).
// All integers are little-endian. Version 2:
//
//	offset  size
//	     0     8  magic         setMagic ^ JsetMagic (per cache set: a jset of another
//	                            cache set, or of an older format, is not one of ours)
//	     8     4  csum          crc32c of bytes [12, HeaderSize+payload_len)
//	    12     4  version       JsetVersion
//	    16     8  seq           sequence number of this entry, >= 1
//	    24     8  last_seq      oldest entry still needed when this one was written,
//	                            1 <= last_seq <= seq
//	    32     8  next_vol_id   next volume id to hand out (ids are never reused)
//	    40     4  root_bucket   btree root: bucket,
//	    44     4  root_gen      generation of that bucket,
//	    48     1  root_level    and level (0 = the root is a leaf)
//	    49     1  flags         JsetUnflushed or 0
//	    50     2  pad           zero
//	    52     4  nkeys         number of keys
//	    56     4  payload_len   nkeys * KeySize
//	    60     4  reserved      zero
//	    64    16  boot_id       with JsetUnflushed: the kernel boot id of the machine
//	                            that wrote it; zero otherwise
//	    80        keys          nkeys keys of KeySize bytes each:
//
//	              offset size
//	                   0    8  vol
//	                   8    8  start   first sector
//	                  16    4  len     sectors
//	                  20    1  flags   bkey.FlagDirty, bkey.FlagWhiteout
//	                  21    3  pad     zero
//	                  24    4  bucket
//	                  28    4  offset  sectors inside the bucket
//	                  32    4  gen
//	                  36    4  reserved zero
//
//	    HeaderSize+payload_len  zero padding to a multiple of BlockSize (not checksummed)
//
// A jset is at most MaxJsetSize bytes, so at most MaxJsetKeys keys; a journal on a
// small area allows fewer (Journal.MaxKeys). The checksum covers the header after
// itself and the keys; the magic is checked first, so a zeroed or stale block (another
// set's magic) reads as "bad magic" and a torn write as "checksum mismatch".
//
// Version 1 (written before unflushed jsets existed) is version 2 with a 64-byte
// header: no flags (pad at 49..51), no boot id, keys at 64. It is still read, as a
// flushed jset, so that a cache set written by an older release opens; it is
// written only when Jset.Version asks for it (tests).
//
// An unflushed jset (JsetUnflushed) was written without the preflush that makes the
// data and nodes it refers to durable, and without a sync of its own: it survives a
// crash of the process (the kernel has every write the process made), not a power
// loss. Replay trusts it only on the boot that wrote it, or when a later flushed
// jset was found (whose preflush made it and its data durable); see Open.

import (
	"encoding/binary"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

// Format constants of a jset.
const (
	// JsetMagic is xored with the cache set's magic to make a jset's magic
	// (bcache's JSET_MAGIC).
	JsetMagic uint64 = 0x245235c1a3625032
	// JsetVersion is the version written and the only one read.
	JsetVersion = 2
	// BlockSize is the unit of the journal area: jsets start on and are padded to it.
	BlockSize = 4096
	// HeaderSize is the size of a jset's header.
	HeaderSize = 80
	// HeaderSizeV1 is the size of a version 1 header.
	HeaderSizeV1 = 64
	// KeySize is the size of an encoded key.
	KeySize = ondisk.KeySize
	// MaxJsetSize bounds a jset, so that the decoder never trusts a length field for
	// more than this, and a journal entry never takes more than MaxJsetBlocks.
	MaxJsetSize   = 64 << 10
	MaxJsetBlocks = MaxJsetSize / BlockSize
	// MaxJsetKeys is the number of keys of the largest jset.
	MaxJsetKeys = (MaxJsetSize - HeaderSize) / KeySize
)

// Header field offsets.
const (
	offMagic      = 0
	offCsum       = 8
	offVersion    = 12
	offSeq        = 16
	offLastSeq    = 24
	offNextVolID  = 32
	offRootBucket = 40
	offRootGen    = 44
	offRootLevel  = 48
	offFlags      = 49
	offPad        = 50
	offNKeys      = 52
	offPayloadLen = 56
	offReserved   = 60
	offBootID     = 64
	csumStart     = offVersion
)

// JsetUnflushed is the flag of a jset written without preflush and sync.
const JsetUnflushed = 1

// BootID identifies one boot of a machine's kernel (Linux:
// /proc/sys/kernel/random/boot_id). The zero value is "unknown".
type BootID [16]byte

// Root names the btree root recorded in a jset.
type Root struct {
	Bucket uint32
	Gen    uint32
	Level  uint8
}

// Jset is a decoded journal entry.
type Jset struct {
	Seq          uint64
	LastSeq      uint64 // oldest entry still needed when this one was written
	Root         Root
	NextVolumeID uint64
	Keys         []bkey.Key
	// Unflushed marks a jset written without preflush and sync, on boot BootID
	// (non-zero). A flushed jset has a zero BootID.
	Unflushed bool
	BootID    BootID
	// Version is the format it was read in; 0 means JsetVersion. EncodeJset
	// writes version 1 when asked (a flushed jset only).
	Version int
}

// headerSize is the header size of format version v.
func headerSize(v int) int {
	if v == 1 {
		return HeaderSizeV1
	}
	return HeaderSize
}

// Blocks is the number of blocks j takes on disk, in its format version.
func (j *Jset) Blocks() int64 {
	return (int64(headerSize(j.Version)+len(j.Keys)*KeySize) + BlockSize - 1) / BlockSize
}

// jsetBlocks is the number of blocks a jset of nkeys keys takes on disk.
func jsetBlocks(nkeys int) int64 {
	return (int64(HeaderSize+nkeys*KeySize) + BlockSize - 1) / BlockSize
}

// maxKeysIn is the number of keys of a jset of at most blocks blocks.
func maxKeysIn(blocks int64) int {
	return int((blocks*BlockSize - HeaderSize) / KeySize)
}

// EncodeJset returns j encoded for the cache set setMagic, padded to a multiple of
// BlockSize. It fails (with ErrTooManyKeys or ErrInvalid) for a jset DecodeJset would
// reject.
func EncodeJset(j *Jset, setMagic uint64) ([]byte, error) {
	if len(j.Keys) > MaxJsetKeys {
		return nil, errorf(ErrTooManyKeys, "jset %d has %d keys, at most %d", j.Seq, len(j.Keys), MaxJsetKeys)
	}
	if j.Seq == 0 || j.LastSeq == 0 || j.LastSeq > j.Seq {
		return nil, errorf(ErrInvalid, "jset seq %d last_seq %d", j.Seq, j.LastSeq)
	}
	if j.Unflushed == (j.BootID == BootID{}) {
		return nil, errorf(ErrInvalid, "jset %d: unflushed %v with boot id %x", j.Seq, j.Unflushed, j.BootID)
	}
	version, hs := JsetVersion, HeaderSize
	switch j.Version {
	case 0, JsetVersion:
	case 1:
		if j.Unflushed {
			return nil, errorf(ErrInvalid, "jset %d: version 1 has no unflushed jsets", j.Seq)
		}
		version, hs = 1, HeaderSizeV1
	default:
		return nil, errorf(ErrInvalid, "jset %d: version %d", j.Seq, j.Version)
	}
	payload := len(j.Keys) * KeySize
	b := make([]byte, (int64(hs+payload)+BlockSize-1)/BlockSize*BlockSize)
	le := binary.LittleEndian
	le.PutUint64(b[offMagic:], setMagic^JsetMagic)
	le.PutUint32(b[offVersion:], uint32(version))
	le.PutUint64(b[offSeq:], j.Seq)
	le.PutUint64(b[offLastSeq:], j.LastSeq)
	le.PutUint64(b[offNextVolID:], j.NextVolumeID)
	le.PutUint32(b[offRootBucket:], j.Root.Bucket)
	le.PutUint32(b[offRootGen:], j.Root.Gen)
	b[offRootLevel] = j.Root.Level
	if j.Unflushed {
		b[offFlags] = JsetUnflushed
		copy(b[offBootID:], j.BootID[:])
	}
	le.PutUint32(b[offNKeys:], uint32(len(j.Keys)))
	le.PutUint32(b[offPayloadLen:], uint32(payload))
	for i, k := range j.Keys {
		ondisk.EncodeKey(b[hs+i*KeySize:], k)
	}
	le.PutUint32(b[offCsum:], ondisk.Checksum(b[csumStart:hs+payload]))
	return b, nil
}

// DecodeJset decodes the jset at the start of b, which was read at byte offset off of
// the device (for error messages). b may extend past the jset. Every failure is an
// *ondisk.CorruptionError; DecodeJset never panics and allocates at most len(b) worth
// of keys, whatever the length fields say.
func DecodeJset(b []byte, off int64, setMagic uint64) (*Jset, error) {
	n, version, err := jsetLen(b, off, setMagic)
	if err != nil {
		return nil, err
	}
	le := binary.LittleEndian
	if got, want := le.Uint32(b[offCsum:]), ondisk.Checksum(b[csumStart:n]); got != want {
		return nil, ondisk.Corruptf("jset", off, "checksum mismatch: stored %#08x, computed %#08x", got, want)
	}
	hs := headerSize(version)
	j := &Jset{
		Seq:          le.Uint64(b[offSeq:]),
		LastSeq:      le.Uint64(b[offLastSeq:]),
		NextVolumeID: le.Uint64(b[offNextVolID:]),
		Root: Root{
			Bucket: le.Uint32(b[offRootBucket:]),
			Gen:    le.Uint32(b[offRootGen:]),
			Level:  b[offRootLevel],
		},
	}
	if j.Seq == 0 || j.LastSeq == 0 || j.LastSeq > j.Seq {
		return nil, ondisk.Corruptf("jset", off, "seq %d with last_seq %d", j.Seq, j.LastSeq)
	}
	if b[offPad] != 0 || b[offPad+1] != 0 || le.Uint32(b[offReserved:]) != 0 {
		return nil, ondisk.Corruptf("jset", off, "nonzero padding in header")
	}
	if version == 1 {
		j.Version = 1
		if b[offFlags] != 0 {
			return nil, ondisk.Corruptf("jset", off, "nonzero padding in header")
		}
	} else {
		copy(j.BootID[:], b[offBootID:offBootID+16])
	}
	switch b[offFlags] {
	case 0:
		if j.BootID != (BootID{}) {
			return nil, ondisk.Corruptf("jset", off, "boot id in a flushed jset")
		}
	case JsetUnflushed:
		if j.BootID == (BootID{}) {
			return nil, ondisk.Corruptf("jset", off, "unflushed jset without a boot id")
		}
		j.Unflushed = true
	default:
		return nil, ondisk.Corruptf("jset", off, "unknown flags %#02x", b[offFlags])
	}
	nkeys := (n - hs) / KeySize
	if nkeys > 0 {
		j.Keys = make([]bkey.Key, nkeys)
	}
	for i := range j.Keys {
		k, ok := decodeKey(b[hs+i*KeySize:])
		if !ok {
			return nil, ondisk.Corruptf("jset", off, "key %d: nonzero padding", i)
		}
		j.Keys[i] = k
	}
	return j, nil
}

// jsetLen checks the magic, the version and the length fields of the jset at the
// start of b and returns the length of its checksummed part (header and keys),
// which lies in b, and its version. (The version is read before the checksum is
// checked, since it decides the header size; a wrong one fails the checksum.)
func jsetLen(b []byte, off int64, setMagic uint64) (int, int, error) {
	if len(b) < HeaderSizeV1 {
		return 0, 0, ondisk.Corruptf("jset", off, "short: %d bytes", len(b))
	}
	le := binary.LittleEndian
	if m := le.Uint64(b[offMagic:]); m != setMagic^JsetMagic {
		return 0, 0, ondisk.Corruptf("jset", off, "bad magic %#016x", m)
	}
	v := le.Uint32(b[offVersion:])
	if v != JsetVersion && v != 1 {
		return 0, 0, ondisk.Corruptf("jset", off, "version %d, want %d (or 1)", v, JsetVersion)
	}
	hs := headerSize(int(v))
	if len(b) < hs {
		return 0, 0, ondisk.Corruptf("jset", off, "short: %d bytes", len(b))
	}
	nkeys, payload := le.Uint32(b[offNKeys:]), le.Uint32(b[offPayloadLen:])
	switch {
	case nkeys > MaxJsetKeys:
		return 0, 0, ondisk.Corruptf("jset", off, "%d keys, at most %d", nkeys, MaxJsetKeys)
	case payload != nkeys*KeySize:
		return 0, 0, ondisk.Corruptf("jset", off, "payload length %d for %d keys", payload, nkeys)
	case hs+int(payload) > len(b):
		return 0, 0, ondisk.Corruptf("jset", off, "truncated: needs %d bytes, have %d", hs+int(payload), len(b))
	}
	return hs + int(payload), int(v), nil
}

// decodeKey reads a key written by ondisk.EncodeKey; ok is false if its padding
// is not zero. Unlike ondisk.DecodeKey it does not judge the flags: a jset carries
// keys as the engine journaled them.
func decodeKey(b []byte) (k bkey.Key, ok bool) {
	le := binary.LittleEndian
	_ = b[KeySize-1]
	k = bkey.Key{
		Vol:   le.Uint64(b[0:]),
		Start: le.Uint64(b[8:]),
		Len:   le.Uint32(b[16:]),
		Flags: b[20],
		Ptr: bkey.Ptr{
			Bucket: le.Uint32(b[24:]),
			Offset: le.Uint32(b[28:]),
			Gen:    le.Uint32(b[32:]),
		},
	}
	return k, b[21]|b[22]|b[23] == 0 && le.Uint32(b[36:]) == 0
}
