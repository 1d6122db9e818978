package ondisk

// Magics and the choice between two copies of a structure.
//
// The superblock starts with the fixed SuperblockMagic and carries a random
// SetMagic, drawn when the cache set is formatted. Every other structure starts
// with SetMagic ^ its own constant below, so that metadata left on the device by a
// previous cache set (formatted with another SetMagic) never decodes as ours: it
// fails with "bad magic", like a block that was never written.

import (
	"bytes"
	"encoding/binary"
)

var le = binary.LittleEndian

// Magic constants. The structure magics are xored with the cache set's SetMagic.
const (
	SuperblockMagic uint64 = 0x6568636163697363 // "csicache", little-endian
	MagicVolTable   uint64 = 0x4c4f56a5e1c7b3d1
	MagicGens       uint64 = 0x534e4547b2d4f681
	MagicBset       uint64 = 0x54455342c3e5a792
	MagicJset       uint64 = 0x245235c1a3625032 // = journal.JsetMagic, listed for ValidSetMagic
)

// ValidSetMagic reports whether m may be a cache set's SetMagic. It must not be
// one of the constants, so that no structure magic is zero (a zeroed block must
// never pass a magic check), nor make one equal SuperblockMagic; zero is refused
// as the value of an unset field.
func ValidSetMagic(m uint64) bool {
	for _, c := range [...]uint64{0, MagicVolTable, MagicGens, MagicBset, MagicJset,
		SuperblockMagic ^ MagicVolTable, SuperblockMagic ^ MagicGens, SuperblockMagic ^ MagicBset, SuperblockMagic ^ MagicJset} {
		if m == c {
			return false
		}
	}
	return true
}

// Picked tells which of two copies a Pick function returned, and the state of the
// other copy.
type Picked struct {
	Copy Copy // the copy returned
	// OtherErr is the *CorruptionError of the other copy, or nil if it is valid.
	// A never-written copy (all zeroes) is reported as bad too.
	OtherErr error
	// OtherStale is true if the other copy is valid with a lower sequence number.
	OtherStale bool
}

// choose picks between two decoded copies: the valid one with the higher
// sequence number, copy A on a tie. If both are bad the error names both reasons.
func choose(what string, off int64, errA, errB error, seqA, seqB uint64) (Picked, error) {
	switch {
	case errA != nil && errB != nil:
		return Picked{}, Corruptf(what, off, "both copies bad: A: %v; B: %v", errA, errB)
	case errB != nil:
		return Picked{Copy: CopyA, OtherErr: errB}, nil
	case errA != nil:
		return Picked{Copy: CopyB, OtherErr: errA}, nil
	case seqB > seqA:
		return Picked{Copy: CopyB, OtherStale: true}, nil
	}
	return Picked{Copy: CopyA, OtherStale: seqB < seqA}, nil
}

// checkHeader checks the magic and the length of a structure that starts with
// magic u64 | csum u32 | version u32, and that the version is supported.
func checkHeader(what string, b []byte, off int64, minLen int, magic uint64, version uint32) error {
	if len(b) < minLen {
		return Corruptf(what, off, "short buffer: %d bytes, need %d", len(b), minLen)
	}
	if m := le.Uint64(b[0:]); m != magic {
		if m == 0 && isZero(b[:min(len(b), BlockSize)]) {
			return Corruptf(what, off, "bad magic: block is zeroed (never written)")
		}
		return Corruptf(what, off, "bad magic %#016x, want %#016x", m, magic)
	}
	if v := le.Uint32(b[12:]); v != version {
		return Corruptf(what, off, "unsupported version %d, want %d", v, version)
	}
	return nil
}

// checkSum verifies the crc32c stored at b[8:12] against b[12:end].
func checkSum(what string, b []byte, off int64, end int) error {
	if got, want := Checksum(b[12:end]), le.Uint32(b[8:]); got != want {
		return Corruptf(what, off, "checksum mismatch: stored %#08x, computed %#08x", want, got)
	}
	return nil
}

// putHeader writes magic and version, and reserves the checksum, which sealSum
// fills in once the rest is written.
func putHeader(b []byte, magic uint64, version uint32) {
	le.PutUint64(b[0:], magic)
	le.PutUint32(b[12:], version)
}

func sealSum(b []byte, end int) { le.PutUint32(b[8:], Checksum(b[12:end])) }

var zeroBlock [BlockSize]byte

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
