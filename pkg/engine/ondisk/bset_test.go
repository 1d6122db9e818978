package ondisk

import (
	"slices"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

func TestKeyRoundTrip(t *testing.T) {
	keys := []bkey.Key{
		{},
		{Vol: 1, Start: 2, Len: 3, Flags: bkey.FlagDirty, Ptr: bkey.Ptr{Bucket: 4, Offset: 5, Gen: 6}},
		{Vol: ^uint64(0), Start: ^uint64(0) - 8, Len: 8, Flags: bkey.FlagWhiteout, Ptr: bkey.Ptr{Bucket: ^uint32(0), Offset: ^uint32(0) - 8, Gen: ^uint32(0)}},
	}
	var b []byte
	for _, k := range keys {
		b = AppendKey(b, k)
	}
	if len(b) != len(keys)*KeySize {
		t.Fatalf("encoded %d bytes", len(b))
	}
	for i, want := range keys {
		got, err := DecodeKey(b[i*KeySize:], 0)
		if err != nil || got != want {
			t.Fatalf("key %d: got %v, %v; want %v", i, got, err, want)
		}
	}
}

func TestKeyCorruption(t *testing.T) {
	good := AppendKey(nil, bkey.Key{Vol: 1, Start: 100, Len: 8, Ptr: bkey.Ptr{Bucket: 2, Offset: 16, Gen: 1}})
	tests := []struct {
		name  string
		bytes func([]byte) []byte
		want  string
	}{
		{"short", func(b []byte) []byte { return b[:KeySize-1] }, "short buffer: 39 bytes"},
		{"flags", func(b []byte) []byte { b[20] = 4; return b }, "unknown flags"},
		{"pad", func(b []byte) []byte { b[22] = 1; return b }, "reserved bytes not zero"},
		{"reserved", func(b []byte) []byte { b[39] = 1; return b }, "reserved bytes not zero"},
		{"end overflow", func(b []byte) []byte { le.PutUint64(b[8:], ^uint64(0)-2); return b }, "end overflows"},
		{"offset overflow", func(b []byte) []byte { le.PutUint32(b[28:], ^uint32(0)-2); return b }, "offset+len overflows"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeKey(tt.bytes(slices.Clone(good)), 640)
			wantCorrupt(t, err, tt.want)
			wantCorrupt(t, err, "bkey at offset 640")
		})
	}
}

const testNodeSeq = 0x9e3779b97f4a7c15

func leafHdr(index uint32, jseq uint64) BsetHeader {
	return BsetHeader{NodeSeq: testNodeSeq, JournalSeq: jseq, MinPos: bkey.Pos{Vol: 1}, MaxPos: bkey.Pos{Vol: 1, LBA: 1 << 20}, Index: index}
}

// leafKeys returns n 8-sector keys from sector start on, every other one dirty.
func leafKeys(n int, start uint64, bucket uint32) []bkey.Key {
	keys := make([]bkey.Key, n)
	for i := range keys {
		keys[i] = bkey.Key{Vol: 1, Start: start + uint64(i)*8, Len: 8, Flags: uint8(i % 2), Ptr: bkey.Ptr{Bucket: bucket, Offset: uint32(i) * 8, Gen: 3}}
	}
	return keys
}

func TestBsetRoundTrip(t *testing.T) {
	interior := BsetHeader{NodeSeq: 1, Level: 2, MinPos: bkey.Pos{Vol: 1, LBA: 100}, MaxPos: bkey.MaxPos}
	// Children in log order: an update of the last child, then a new one before it.
	children := []bkey.Key{{Vol: ^uint64(0), Start: ^uint64(0), Ptr: bkey.Ptr{Bucket: 9, Gen: 1}}, {Vol: 1, Start: 5000, Ptr: bkey.Ptr{Bucket: 8}}}
	// A leaf log of a compare-and-swap: whiteout of the range, then what is there.
	logged := []bkey.Key{{Vol: 1, Start: 0, Len: 64, Flags: bkey.FlagWhiteout}, {Vol: 1, Start: 8, Len: 8}}
	for _, tt := range []struct {
		h    BsetHeader
		keys []bkey.Key
	}{
		{leafHdr(0, 1), nil},
		{leafHdr(3, 1<<50), leafKeys(BsetMaxKeys(BlockSize), 0, 7)},
		{leafHdr(1, 1), leafKeys(BsetMaxKeys(BlockSize)+1, 64, 7)},
		{leafHdr(1, 1), logged},
		{interior, children},
	} {
		b := EncodeBset(tt.h, tt.keys, testSetMagic)
		if len(b) != BsetSize(len(tt.keys)) || len(b)%BlockSize != 0 {
			t.Fatalf("%d keys encoded in %d bytes", len(tt.keys), len(b))
		}
		h, keys, size, err := DecodeBset(append(b, make([]byte, BlockSize)...), 0, testSetMagic)
		if err != nil {
			t.Fatal(err)
		}
		if h != tt.h || !slices.Equal(keys, tt.keys) && len(tt.keys) > 0 || size != len(b) {
			t.Fatalf("round trip: %+v %v %d\nwant %+v %v %d", h, keys, size, tt.h, tt.keys, len(b))
		}
	}
	if BsetSize(BsetMaxKeys(BlockSize)) != BlockSize || BsetSize(BsetMaxKeys(BlockSize)+1) != 2*BlockSize {
		t.Fatal("BsetMaxKeys and BsetSize disagree")
	}
}

func TestBsetCorruption(t *testing.T) {
	keys := leafKeys(10, 0, 7)
	good := func() []byte { return encodeBset(leafHdr(0, 1), keys, testSetMagic) }
	with := func(mut func(*BsetHeader, []bkey.Key)) func() []byte {
		return func() []byte {
			h, ks := leafHdr(0, 1), slices.Clone(keys)
			mut(&h, ks)
			return encodeBset(h, ks, testSetMagic)
		}
	}
	const end = BsetHeaderSize + 10*KeySize
	tests := []struct {
		name   string
		build  func() []byte
		bytes  func([]byte) []byte
		reseal bool
		want   string
	}{
		{name: "short", build: good, bytes: func(b []byte) []byte { return b[:79] }, want: "short buffer: 79 bytes, need 80"},
		{name: "magic", build: good, bytes: func(b []byte) []byte { b[0]++; return b }, want: "bad magic"},
		{name: "zeroed", build: func() []byte { return make([]byte, BlockSize) }, want: "zeroed"},
		{name: "other set", build: func() []byte { return encodeBset(leafHdr(0, 1), keys, 42) }, want: "bad magic"},
		{name: "version", build: good, bytes: func(b []byte) []byte { b[12] = 7; return b }, reseal: true, want: "unsupported version 7"},
		{name: "checksum", build: good, bytes: func(b []byte) []byte { b[end-1] ^= 1; return b }, want: "checksum mismatch"},
		{name: "nkeys", build: good, bytes: func(b []byte) []byte { le.PutUint32(b[72:], 1<<31); return b }, want: "2147483648 keys past the end of the 4096-byte buffer"},
		{name: "unpadded", build: good, bytes: func(b []byte) []byte { return b[:end] }, want: "padded size 4096 past the end of the 480-byte buffer"},
		{name: "reserved", build: good, bytes: func(b []byte) []byte { b[70] = 1; return b }, reseal: true, want: "reserved bytes not zero"},
		{name: "key flags", build: good, bytes: func(b []byte) []byte { b[BsetHeaderSize+3*KeySize+20] = 0x80; return b }, reseal: true, want: "bkey at offset 8392"},
		{name: "level", build: with(func(h *BsetHeader, _ []bkey.Key) { h.Level = MaxLevel }), want: "level 16, max 15"},
		{name: "empty range", build: with(func(h *BsetHeader, _ []bkey.Key) { h.MaxPos = h.MinPos }), want: "empty range"},
		{name: "reversed range", build: with(func(h *BsetHeader, _ []bkey.Key) { h.MinPos.Vol = 2 }), want: "empty range"},
		{name: "empty extent", build: with(func(_ *BsetHeader, ks []bkey.Key) { ks[4].Len = 0 }), want: "key 4 1:[32,32) -> b7+32 g3: empty extent in a leaf"},
		{name: "before range", build: with(func(h *BsetHeader, _ []bkey.Key) { h.MinPos.LBA = 4 }), want: "key 0 1:[0,8) -> b7+0 g3 outside the node range"},
		{name: "after range", build: with(func(h *BsetHeader, _ []bkey.Key) { h.MaxPos.LBA = 79 }), want: "key 9 1:[72,80) -> b7+72 g3 dirty outside the node range"},
		{name: "other volume", build: with(func(_ *BsetHeader, ks []bkey.Key) { ks[2].Vol = 2 }), want: "key 2 2:[16,24)"},
		{name: "child end before range", build: with(func(h *BsetHeader, ks []bkey.Key) { h.Level = 1; ks[0].Len = 0 }), want: "key 0 1:[0,0) -> b7+0 g3: end outside the node range"},
		{name: "child end after range", build: with(func(h *BsetHeader, _ []bkey.Key) { h.Level = 1; h.MaxPos.LBA = 8 }), want: "key 1 1:[8,16) -> b7+8 g3 dirty: end outside the node range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.build()
			if tt.bytes != nil {
				b = tt.bytes(b)
			}
			if tt.reseal {
				sealSum(b, end)
			}
			_, _, _, err := DecodeBset(b, 8192, testSetMagic)
			wantCorrupt(t, err, tt.want)
			if tt.bytes == nil && tt.name != "zeroed" && tt.name != "other set" {
				// What the decoder rejects, the encoder refuses to write.
				h, ks := decodeUnchecked(b)
				defer func() {
					if recover() == nil {
						t.Error("EncodeBset did not panic")
					}
				}()
				EncodeBset(h, ks, testSetMagic)
			}
		})
	}
}

// decodeUnchecked reads a bset header and keys without validating them.
func decodeUnchecked(b []byte) (BsetHeader, []bkey.Key) {
	h := BsetHeader{
		NodeSeq:    le.Uint64(b[16:]),
		JournalSeq: le.Uint64(b[24:]),
		MinPos:     bkey.Pos{Vol: le.Uint64(b[32:]), LBA: le.Uint64(b[40:])},
		MaxPos:     bkey.Pos{Vol: le.Uint64(b[48:]), LBA: le.Uint64(b[56:])},
		Index:      le.Uint32(b[64:]),
		Level:      b[68],
	}
	keys := make([]bkey.Key, le.Uint32(b[72:]))
	for i := range keys {
		p := b[BsetHeaderSize+i*KeySize:]
		keys[i] = bkey.Key{Vol: le.Uint64(p), Start: le.Uint64(p[8:]), Len: le.Uint32(p[16:]), Flags: p[20],
			Ptr: bkey.Ptr{Bucket: le.Uint32(p[24:]), Offset: le.Uint32(p[28:]), Gen: le.Uint32(p[32:])}}
	}
	return h, keys
}

// testNodeLog returns a 16-block bucket holding a log of three bsets (1, 2 and 1
// blocks) and the keys of each.
func testNodeLog() (bucket []byte, sets [][]bkey.Key) {
	sets = [][]bkey.Key{
		leafKeys(100, 0, 7),
		leafKeys(150, 400, 8),
		{{Vol: 1, Start: 16, Len: 800, Flags: bkey.FlagWhiteout}, {Vol: 1, Start: 20, Len: 4, Ptr: bkey.Ptr{Bucket: 9}}},
	}
	bucket = make([]byte, 16*BlockSize)
	off := 0
	for i, keys := range sets {
		off += copy(bucket[off:], EncodeBset(leafHdr(uint32(i), uint64(10+i)), keys, testSetMagic))
	}
	return bucket, sets
}

func TestDecodeNodeLog(t *testing.T) {
	bucket, sets := testNodeLog()
	h, got, end, err := DecodeNodeLog(bucket, 5<<20, testSetMagic)
	if err != nil {
		t.Fatal(err)
	}
	if h != leafHdr(0, 10) || end != 4*BlockSize || len(got) != 3 {
		t.Fatalf("DecodeNodeLog = %+v, %d sets, end %d", h, len(got), end)
	}
	for i := range sets {
		if !slices.Equal(got[i], sets[i]) {
			t.Fatalf("bset %d: %v", i, got[i])
		}
	}
	// Replaying the log gives the node's keys.
	var s, want bkey.Set
	for _, keys := range got {
		s.Apply(keys)
	}
	want.Apply(slices.Concat(sets...))
	if err := s.Check(); err != nil || !slices.Equal(s.Keys(), want.Keys()) || s.Len() != 101 {
		t.Fatalf("replayed %d keys: %v", s.Len(), err)
	}

	// Logs that end early: each continues up to bset 0 or 1.
	old := func(nodeSeq uint64, index uint32) []byte {
		h := leafHdr(index, 11)
		h.NodeSeq = nodeSeq
		return EncodeBset(h, leafKeys(3, 0, 1), testSetMagic)
	}
	tests := []struct {
		name  string
		patch func(b []byte)
		sets  int
		end   int
	}{
		{"zero after bset 0", func(b []byte) { clear(b[BlockSize:]) }, 1, BlockSize},
		{"torn bset 1", func(b []byte) { b[2*BlockSize+100] ^= 1 }, 1, BlockSize},
		{"torn bset 2", func(b []byte) { b[3*BlockSize+100] ^= 1 }, 2, 3 * BlockSize},
		{"bset 2 of an earlier node", func(b []byte) { copy(b[3*BlockSize:], old(testNodeSeq+1, 2)) }, 2, 3 * BlockSize},
		{"index skips", func(b []byte) { copy(b[3*BlockSize:], old(testNodeSeq, 3)) }, 2, 3 * BlockSize},
		{"index repeats", func(b []byte) { copy(b[3*BlockSize:], old(testNodeSeq, 1)) }, 2, 3 * BlockSize},
		{"magic", func(b []byte) { b[BlockSize] ^= 1 }, 1, BlockSize},
		{"bset 3 of an earlier node", func(b []byte) { copy(b[4*BlockSize:], old(testNodeSeq+1, 3)) }, 3, 4 * BlockSize},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := testNodeLog()
			tt.patch(b)
			_, got, end, err := DecodeNodeLog(b, 0, testSetMagic)
			if err != nil || len(got) != tt.sets || end != tt.end {
				t.Fatalf("DecodeNodeLog = %d sets, end %d, %v; want %d sets, end %d", len(got), end, err, tt.sets, tt.end)
			}
		})
	}

	// A log that fills the bucket ends at its end.
	full := slices.Clone(bucket[:4*BlockSize])
	if _, got, end, err := DecodeNodeLog(full, 0, testSetMagic); err != nil || len(got) != 3 || end != len(full) {
		t.Fatalf("full bucket: %d sets, end %d, %v", len(got), end, err)
	}
}

func TestDecodeNodeLogCorruption(t *testing.T) {
	bset := func(h BsetHeader) []byte { return EncodeBset(h, leafKeys(2, 0, 1), testSetMagic) }
	tests := []struct {
		name  string
		patch func(b []byte)
		want  string
	}{
		{"first bset torn", func(b []byte) { b[100] ^= 1 }, "bset at offset 65536: checksum mismatch"},
		{"first bset zero", func(b []byte) { clear(b) }, "zeroed"},
		{"first index", func(b []byte) { h := leafHdr(1, 1); copy(b, bset(h)) }, "btree node at offset 65536: first bset has index 1"},
		{"level changes", func(b []byte) { h := leafHdr(2, 12); h.Level = 1; copy(b[3*BlockSize:], bset(h)) }, "bset 2: level 1 range"},
		{"range changes", func(b []byte) { h := leafHdr(1, 12); h.MaxPos.LBA++; copy(b[BlockSize:], bset(h)) }, "bset 1: level 0 range"},
		{"journal seq goes back", func(b []byte) { copy(b[3*BlockSize:], bset(leafHdr(2, 10))) }, "btree node at offset 77824: bset 2: journal seq 10 before bset 1's 11"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, _ := testNodeLog()
			tt.patch(b)
			_, _, _, err := DecodeNodeLog(b, 1<<16, testSetMagic)
			wantCorrupt(t, err, tt.want)
		})
	}
}
