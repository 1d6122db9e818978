package ondisk

// Key format: every btree key (bkey.Key) in a bset or a journal entry is 40
// bytes, little-endian. Keys are not checksummed on their own: the bset or jset
// that holds them is.
//
//	 0  vol          u64
//	 8  start        u64   sector
//	16  len          u32   sectors; start+len must not overflow
//	20  flags        u8    bkey.FlagDirty, bkey.FlagWhiteout
//	21  pad          [3]byte   zero
//	24  bucket       u32
//	28  offset       u32   sectors into the bucket; offset+len must not overflow u32
//	32  gen          u32
//	36  reserved     u32   zero

import (
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// KeySize is the size of an encoded key.
const KeySize = 40

const keyFlags = bkey.FlagDirty | bkey.FlagWhiteout // all known key flags

// EncodeKey writes k into b[:KeySize].
func EncodeKey(b []byte, k bkey.Key) {
	b = b[:KeySize]
	le.PutUint64(b[0:], k.Vol)
	le.PutUint64(b[8:], k.Start)
	le.PutUint32(b[16:], k.Len)
	b[20] = k.Flags
	b[21], b[22], b[23] = 0, 0, 0
	le.PutUint32(b[24:], k.Ptr.Bucket)
	le.PutUint32(b[28:], k.Ptr.Offset)
	le.PutUint32(b[32:], k.Ptr.Gen)
	le.PutUint32(b[36:], 0)
}

// AppendKey appends the encoding of k to dst.
func AppendKey(dst []byte, k bkey.Key) []byte {
	dst = append(dst, make([]byte, KeySize)...)
	EncodeKey(dst[len(dst)-KeySize:], k)
	return dst
}

// DecodeKey decodes the key at the start of b, read from device offset off. It
// checks the fields a key has on its own (flags, reserved bytes, overflow); the
// bset or jset decoder checks the keys against each other.
func DecodeKey(b []byte, off int64) (bkey.Key, error) {
	if len(b) < KeySize {
		return bkey.Key{}, Corruptf("bkey", off, "short buffer: %d bytes, need %d", len(b), KeySize)
	}
	k := bkey.Key{
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
	if why := checkKey(k); why != "" {
		return bkey.Key{}, Corruptf("bkey", off, "%s", why)
	}
	if b[21]|b[22]|b[23] != 0 || le.Uint32(b[36:]) != 0 {
		return bkey.Key{}, Corruptf("bkey", off, "key %v: reserved bytes not zero", k)
	}
	return k, nil
}

// checkKey returns what is wrong with k on its own, or "".
func checkKey(k bkey.Key) string {
	switch {
	case k.Flags&^keyFlags != 0:
		return "key " + k.String() + ": unknown flags"
	case k.End() < k.Start:
		return "key " + k.String() + ": end overflows"
	case uint64(k.Ptr.Offset)+uint64(k.Len) > 1<<32:
		return "key " + k.String() + ": offset+len overflows"
	}
	return ""
}
