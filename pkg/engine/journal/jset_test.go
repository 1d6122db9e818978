package journal

import (
	"bytes"
	"encoding/binary"
	"errors"
	"reflect"
	"testing"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/ondisk"
)

func TestJsetRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		name   string
		js     Jset
		blocks int
	}{
		{"empty", Jset{Seq: 1, LastSeq: 1}, 1},
		{"root and volume id", Jset{Seq: 9, LastSeq: 3, Root: Root{Bucket: 7, Gen: 3, Level: 2}, NextVolumeID: 42}, 1},
		{"unflushed", Jset{Seq: 9, LastSeq: 3, Unflushed: true, BootID: BootID{1, 2, 3, 15: 0xff}, Keys: testKeys(1, 0, 3)}, 1},
		{"one block full", Jset{Seq: 5, LastSeq: 5, Keys: testKeys(1, 0, (BlockSize-HeaderSize)/KeySize)}, 1},
		{"two blocks", Jset{Seq: 5, LastSeq: 5, Keys: testKeys(1, 0, (BlockSize-HeaderSize)/KeySize+1)}, 2},
		{"largest", Jset{Seq: 1 << 40, LastSeq: 1<<40 - 100, Keys: testKeys(3, 1<<50, MaxJsetKeys)}, MaxJsetBlocks},
		{"extreme values", Jset{Seq: ^uint64(0), LastSeq: 1, NextVolumeID: ^uint64(0), Keys: []bkey.Key{
			{Vol: ^uint64(0), Start: ^uint64(0), Len: ^uint32(0), Flags: 0xff, Ptr: bkey.Ptr{Bucket: ^uint32(0), Offset: ^uint32(0), Gen: ^uint32(0)}},
		}}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := EncodeJset(&tc.js, testMagic)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != tc.blocks*BlockSize {
				t.Fatalf("encoded to %d bytes, want %d blocks", len(b), tc.blocks)
			}
			got, err := DecodeJset(b, 0, testMagic)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(*got, tc.js) {
				t.Fatalf("decoded %+v\nwant %+v", *got, tc.js)
			}
		})
	}
}

func TestEncodeJsetRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		js   Jset
		want error
	}{
		{"seq 0", Jset{Seq: 0, LastSeq: 0}, ErrInvalid},
		{"last_seq past seq", Jset{Seq: 3, LastSeq: 4}, ErrInvalid},
		{"too many keys", Jset{Seq: 1, LastSeq: 1, Keys: make([]bkey.Key, MaxJsetKeys+1)}, ErrTooManyKeys},
		{"unflushed without boot id", Jset{Seq: 1, LastSeq: 1, Unflushed: true}, ErrInvalid},
		{"boot id without unflushed", Jset{Seq: 1, LastSeq: 1, BootID: BootID{1}}, ErrInvalid},
	} {
		if _, err := EncodeJset(&tc.js, testMagic); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
	}
}

// TestDecodeJsetCorrupt checks that each kind of damage is a corruption error.
func TestDecodeJsetCorrupt(t *testing.T) {
	valid, err := EncodeJset(&Jset{Seq: 7, LastSeq: 2, Keys: testKeys(1, 0, 3)}, testMagic)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	// reseal recomputes the checksum, so that the field under test is what fails.
	reseal := func(b []byte) {
		n := HeaderSize + int(le.Uint32(b[offPayloadLen:]))
		if n <= len(b) {
			le.PutUint32(b[offCsum:], ondisk.Checksum(b[csumStart:n]))
		}
	}
	for _, tc := range []struct {
		name   string
		damage func(b []byte) []byte
	}{
		{"empty", func(b []byte) []byte { return nil }},
		{"short header", func(b []byte) []byte { return b[:HeaderSize-1] }},
		{"zeroes", func(b []byte) []byte { return make([]byte, BlockSize) }},
		{"other set", func(b []byte) []byte { le.PutUint64(b, (testMagic+1)^JsetMagic); return b }},
		{"flipped key bit", func(b []byte) []byte { b[HeaderSize+5] ^= 1; return b }},
		{"flipped csum", func(b []byte) []byte { b[offCsum] ^= 1; return b }},
		{"torn after first sector", func(b []byte) []byte { clear(b[100:]); return b }},
		{"truncated payload", func(b []byte) []byte { return b[:HeaderSize+2*KeySize] }},
		{"nkeys huge", func(b []byte) []byte { le.PutUint32(b[offNKeys:], 1<<31); reseal(b); return b }},
		{"payload mismatch", func(b []byte) []byte { le.PutUint32(b[offPayloadLen:], 3*KeySize+1); reseal(b); return b }},
		{"payload past buffer", func(b []byte) []byte {
			le.PutUint32(b[offNKeys:], 200)
			le.PutUint32(b[offPayloadLen:], 200*KeySize)
			return b
		}},
		{"version", func(b []byte) []byte { le.PutUint32(b[offVersion:], JsetVersion+1); reseal(b); return b }},
		{"old version", func(b []byte) []byte { le.PutUint32(b[offVersion:], 1); reseal(b); return b }},
		{"unknown flag", func(b []byte) []byte { b[offFlags] = 2; reseal(b); return b }},
		{"unflushed without boot id", func(b []byte) []byte { b[offFlags] = JsetUnflushed; reseal(b); return b }},
		{"boot id in a flushed jset", func(b []byte) []byte { b[offBootID+3] = 1; reseal(b); return b }},
		{"seq 0", func(b []byte) []byte { le.PutUint64(b[offSeq:], 0); reseal(b); return b }},
		{"last_seq 0", func(b []byte) []byte { le.PutUint64(b[offLastSeq:], 0); reseal(b); return b }},
		{"last_seq past seq", func(b []byte) []byte { le.PutUint64(b[offLastSeq:], 8); reseal(b); return b }},
		{"header pad", func(b []byte) []byte { b[offPad+1] = 1; reseal(b); return b }},
		{"header reserved", func(b []byte) []byte { b[offReserved] = 1; reseal(b); return b }},
		{"key pad", func(b []byte) []byte { b[HeaderSize+KeySize+22] = 1; reseal(b); return b }},
		{"key reserved", func(b []byte) []byte { b[HeaderSize+2*KeySize+39] = 1; reseal(b); return b }},
	} {
		b := tc.damage(bytes.Clone(valid))
		js, err := DecodeJset(b, 4096, testMagic)
		if err == nil || !ondisk.IsCorruption(err) {
			t.Errorf("%s: got %+v, %v; want a corruption error", tc.name, js, err)
		}
	}
	// Padding after the payload is not checksummed, and a longer buffer is fine.
	b := append(bytes.Clone(valid), 0xff)
	b[len(valid)-1] = 0xff
	if _, err := DecodeJset(b, 0, testMagic); err != nil {
		t.Errorf("garbage after the payload: %v", err)
	}
}

func FuzzDecodeJset(f *testing.F) {
	for _, js := range []Jset{
		{Seq: 1, LastSeq: 1},
		{Seq: 77, LastSeq: 70, Root: Root{Bucket: 3, Gen: 9, Level: 1}, NextVolumeID: 12, Keys: testKeys(2, 100, 4)},
		{Seq: 5, LastSeq: 5, Keys: testKeys(1, 0, 120)},
		{Seq: 9, LastSeq: 8, Unflushed: true, BootID: BootID{0xb0, 15: 0x07}, Keys: testKeys(1, 0, 2)},
		{Seq: 6, LastSeq: 2, Version: 1, Keys: testKeys(1, 0, 3)},
	} {
		b, err := EncodeJset(&js, testMagic)
		if err != nil {
			f.Fatal(err)
		}
		n := headerSize(js.Version) + len(js.Keys)*KeySize
		f.Add(b)
		f.Add(b[:n])
		f.Add(b[:n-1])
		f.Add(b[:headerSize(js.Version)])
	}
	f.Add([]byte{})
	f.Add(make([]byte, BlockSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		js, err := DecodeJset(b, 0, testMagic)
		if err != nil {
			if !ondisk.IsCorruption(err) {
				t.Fatalf("error is not a corruption error: %v", err)
			}
			return
		}
		if len(js.Keys)*KeySize > len(b) {
			t.Fatalf("%d keys from %d bytes", len(js.Keys), len(b))
		}
		// A jset that decodes re-encodes to the same checksummed bytes.
		enc, err := EncodeJset(js, testMagic)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		n := headerSize(js.Version) + len(js.Keys)*KeySize
		if !bytes.Equal(enc[:n], b[:n]) {
			t.Fatalf("re-encoded jset differs:\n%x\n%x", enc[:n], b[:n])
		}
	})
}

// TestJsetV1: version 1 jsets (written before unflushed jsets) still decode, as
// flushed ones taking their own (64-byte header) number of blocks.
func TestJsetV1(t *testing.T) {
	js := Jset{Seq: 6, LastSeq: 2, Root: Root{Bucket: 4, Gen: 2, Level: 1}, NextVolumeID: 3, Version: 1, Keys: testKeys(1, 0, (BlockSize-HeaderSizeV1)/KeySize)}
	b, err := EncodeJset(&js, testMagic)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != BlockSize || js.Blocks() != 1 {
		t.Fatalf("a full version 1 block: %d bytes, %d blocks", len(b), js.Blocks())
	}
	got, err := DecodeJset(b, 0, testMagic)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 1 || got.Unflushed || got.Seq != 6 || got.Root != js.Root || len(got.Keys) != len(js.Keys) || got.Blocks() != 1 {
		t.Fatalf("decoded %+v", got)
	}
	if _, err := EncodeJset(&Jset{Seq: 1, LastSeq: 1, Version: 1, Unflushed: true, BootID: BootID{1}}, testMagic); !errors.Is(err, ErrInvalid) {
		t.Fatalf("an unflushed version 1 jset encodes: %v", err)
	}
}
