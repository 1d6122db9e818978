package ondisk

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// The fuzz targets check that every decoder rejects bad input with a corruption
// error, never a panic, and that what it accepts encodes back to the same bytes.
// Each decodes the input as is, and again with its checksum fixed up, so that the
// fuzzer reaches the field checks behind the checksum.

// Seeds: valid encodings, which the tests also commit under testdata/fuzz (see
// TestWriteFuzzCorpus).
func seedSuperblock() []byte {
	sb := NewSuperblock(testLayoutFor(1<<30), time.Unix(1700000000, 0))
	sb.SetUUID = [16]byte{0: 1, 15: 2}
	sb.SetMagic = testSetMagic
	return EncodeSuperblock(sb)
}

func testLayoutFor(dev int64) Layout {
	l, err := ComputeLayout(dev, 1<<20, 8<<20, 64)
	if err != nil {
		panic(err)
	}
	return l
}

func seedVolTable() []byte {
	b, err := EncodeVolTable(VolTable{Seq: 3, Volumes: testVolumes()[:3]}, testSetMagic, 1<<20)
	if err != nil {
		panic(err)
	}
	return b
}

func seedGensPage() []byte {
	return EncodeGensPage(testGensPage(GensPerPage, 100, 2), testSetMagic)
}

func seedBset() []byte {
	return EncodeBset(leafHdr(0, 5), leafKeys(20, 0, 7), testSetMagic)
}

func seedInteriorBset() []byte {
	h := BsetHeader{NodeSeq: 5, Level: 1, MinPos: bkey.Pos{Vol: 1}, MaxPos: bkey.MaxPos}
	return EncodeBset(h, []bkey.Key{{Vol: 3, Start: 8, Ptr: bkey.Ptr{Bucket: 2}}, {Vol: 2, Start: 9, Ptr: bkey.Ptr{Bucket: 3}}}, testSetMagic)
}

// seedNodeLog is a 3-block bucket: two bsets and a zero block.
func seedNodeLog() []byte {
	b := make([]byte, 3*BlockSize)
	copy(b, EncodeBset(leafHdr(0, 5), leafKeys(5, 0, 7), testSetMagic))
	copy(b[BlockSize:], EncodeBset(leafHdr(1, 6), []bkey.Key{{Vol: 1, Start: 4, Len: 30, Flags: bkey.FlagWhiteout}}, testSetMagic))
	return b
}

func seedKey() []byte {
	return AppendKey(nil, bkey.Key{Vol: 1, Start: 2, Len: 3, Flags: bkey.FlagDirty, Ptr: bkey.Ptr{Bucket: 4, Offset: 5, Gen: 6}})
}

// addSeeds adds b and damaged variants of it.
func addSeeds(f *testing.F, bs ...[]byte) {
	for _, b := range bs {
		f.Add(b)
		f.Add(b[:len(b)/2])
		f.Add(b[:min(len(b), 90)])
		f.Add(flip(b, 8*20+3))
		f.Add(flip(b, 8*len(b)-1))
	}
}

// withSum returns a copy of b with the checksum at b[8:12] set over [12, end), or
// nil if b is too short.
func withSum(b []byte, end int) []byte {
	if len(b) < 12 || end < 12 || end > len(b) {
		return nil
	}
	c := slices.Clone(b)
	sealSum(c, end)
	return c
}

func mustCorrupt(t *testing.T, err error) {
	t.Helper()
	if !IsCorruption(err) {
		t.Fatalf("error %v is not a corruption error", err)
	}
}

func FuzzDecodeSuperblock(f *testing.F) {
	addSeeds(f, seedSuperblock())
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range [][]byte{data, withSum(data, len(data))} {
			sb, err := DecodeSuperblock(b, 0)
			if err != nil {
				mustCorrupt(t, err)
				continue
			}
			if enc := EncodeSuperblock(sb); !bytes.Equal(enc, b) {
				t.Fatalf("decoded %+v, which encodes differently", sb)
			}
		}
	})
}

func FuzzPickSuperblock(f *testing.F) {
	a := seedSuperblock()
	sb, _ := DecodeSuperblock(a, 0)
	sb.Seq++
	b := EncodeSuperblock(sb)
	f.Add(a, b)
	f.Add(b, a)
	f.Add(flip(a, 1000), b)
	f.Add(a, make([]byte, BlockSize))
	f.Add(a[:10], b[:4095])
	f.Fuzz(func(t *testing.T, a, b []byte) {
		sb, p, err := PickSuperblock(a, b)
		if err != nil {
			mustCorrupt(t, err)
			return
		}
		chosen, other := a, b
		if p.Copy == CopyB {
			chosen, other = b, a
		}
		want, err := DecodeSuperblock(chosen, 0)
		if err != nil || want != sb {
			t.Fatalf("picked %+v, copy %v decodes to %+v, %v", sb, p.Copy, want, err)
		}
		o, err := DecodeSuperblock(other, 0)
		if (err != nil) != (p.OtherErr != nil) || (err == nil && (o.Seq > sb.Seq || (o.Seq < sb.Seq) != p.OtherStale)) {
			t.Fatalf("picked %v seq %d, other seq %d err %v, picked %+v", p.Copy, sb.Seq, o.Seq, err, p)
		}
	})
}

func FuzzDecodeVolTable(f *testing.F) {
	addSeeds(f, seedVolTable(), encodeVolTable(1, nil, testSetMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		var resealed []byte
		if len(data) >= volTableHeaderSize {
			resealed = withSum(data, volTableHeaderSize+int(le.Uint32(data[28:])))
		}
		for _, b := range [][]byte{data, resealed} {
			vt, err := DecodeVolTable(b, 0, testSetMagic)
			if err != nil {
				mustCorrupt(t, err)
				continue
			}
			enc, err := EncodeVolTable(vt, testSetMagic, 1<<40)
			if err != nil {
				t.Fatalf("decoded %+v, which does not encode: %v", vt, err)
			}
			end := volTableHeaderSize + int(le.Uint32(b[28:]))
			if !bytes.Equal(enc[:end], b[:end]) || !isZero(enc[end:]) {
				t.Fatalf("decoded %+v, which encodes differently", vt)
			}
		}
	})
}

func FuzzDecodeGensPage(f *testing.F) {
	addSeeds(f, seedGensPage(), EncodeGensPage(testGensPage(0, GensPerPage, 1), testSetMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range [][]byte{data, withSum(data, len(data))} {
			p, err := DecodeGensPage(b, 0, testSetMagic)
			if err != nil {
				mustCorrupt(t, err)
				continue
			}
			if enc := EncodeGensPage(p, testSetMagic); !bytes.Equal(enc, b) {
				t.Fatalf("decoded %+v, which encodes differently", p)
			}
		}
	})
}

// bsetEnd is the end of the checksummed part of the bset at the start of b, or 0.
func bsetEnd(b []byte) int {
	if len(b) < BsetHeaderSize {
		return 0
	}
	return min(BsetHeaderSize+int(min(le.Uint32(b[72:]), 1<<20))*KeySize, len(b)+1)
}

// checkBsetEncoding fails unless the bset at the start of b encodes back to it.
func checkBsetEncoding(t *testing.T, b []byte, h BsetHeader, keys []bkey.Key, size int) {
	t.Helper()
	enc := EncodeBset(h, keys, testSetMagic)
	end := bsetEnd(b)
	if size != len(enc) || size > len(b) || !bytes.Equal(enc[:end], b[:end]) {
		t.Fatalf("decoded %+v %v (size %d), which encodes differently", h, keys, size)
	}
}

func FuzzDecodeBset(f *testing.F) {
	addSeeds(f, seedBset(), seedInteriorBset(), EncodeBset(leafHdr(0, 0), nil, testSetMagic))
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, b := range [][]byte{data, withSum(data, bsetEnd(data))} {
			h, keys, size, err := DecodeBset(b, 0, testSetMagic)
			if err != nil {
				mustCorrupt(t, err)
				continue
			}
			checkBsetEncoding(t, b, h, keys, size)
		}
	})
}

func FuzzDecodeNodeLog(f *testing.F) {
	addSeeds(f, seedNodeLog())
	f.Fuzz(func(t *testing.T, data []byte) {
		// Also try with the checksum of every block-aligned bset fixed up.
		resealed := slices.Clone(data)
		for off := 0; off < len(resealed); off += BlockSize {
			if b := resealed[off:]; bsetEnd(b) >= 12 && bsetEnd(b) <= len(b) {
				sealSum(b, bsetEnd(b))
			}
		}
		for _, b := range [][]byte{data, resealed} {
			h0, sets, end, err := DecodeNodeLog(b, 0, testSetMagic)
			if err != nil {
				mustCorrupt(t, err)
				continue
			}
			if len(sets) == 0 || end > len(b) || end%BlockSize != 0 {
				t.Fatalf("%d sets, end %d of %d", len(sets), end, len(b))
			}
			off := 0
			for i, keys := range sets {
				h, _, size, err := DecodeBset(b[off:], 0, testSetMagic)
				if err != nil || h.Index != uint32(i) || h.NodeSeq != h0.NodeSeq || h.Level != h0.Level {
					t.Fatalf("bset %d at %d: %+v, %v", i, off, h, err)
				}
				checkBsetEncoding(t, b[off:], h, keys, size)
				off += size
			}
			if off != end {
				t.Fatalf("bsets end at %d, log at %d", off, end)
			}
		}
	})
}

func FuzzDecodeKey(f *testing.F) {
	k := seedKey()
	f.Add(k)
	f.Add(k[:39])
	f.Add(flip(k, 20*8+7))
	f.Add(AppendKey(nil, bkey.Key{Vol: 1, Start: ^uint64(0) - 1, Len: 1}))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := DecodeKey(data, 0)
		if err != nil {
			mustCorrupt(t, err)
			return
		}
		if enc := AppendKey(nil, k); !bytes.Equal(enc, data[:KeySize]) {
			t.Fatalf("decoded %v, which encodes differently", k)
		}
	})
}

// TestWriteFuzzCorpus writes the committed seed corpus under testdata/fuzz. It
// runs only with CSI_CACHE_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("CSI_CACHE_WRITE_CORPUS") != "1" {
		t.Skip("set CSI_CACHE_WRITE_CORPUS=1 to rewrite testdata/fuzz")
	}
	sb2 := func() []byte {
		sb, _ := DecodeSuperblock(seedSuperblock(), 0)
		sb.Seq = 9
		return EncodeSuperblock(sb)
	}()
	corpus := map[string][][][]byte{
		"FuzzDecodeSuperblock": {{seedSuperblock()}, {flip(seedSuperblock(), 8*100)}},
		"FuzzPickSuperblock":   {{seedSuperblock(), sb2}, {sb2[:100], flip(seedSuperblock(), 8*300+1)}},
		"FuzzDecodeVolTable":   {{seedVolTable()}, {flip(seedVolTable(), 8*200)}},
		"FuzzDecodeGensPage":   {{seedGensPage()}, {flip(seedGensPage(), 8*28)}},
		"FuzzDecodeBset":       {{seedBset()}, {seedInteriorBset()}, {flip(seedBset(), 8*72+4)}},
		"FuzzDecodeNodeLog":    {{seedNodeLog()}, {flip(seedNodeLog(), 8*(BlockSize+90))}},
		"FuzzDecodeKey":        {{seedKey()}, {flip(seedKey(), 8*21)}},
	}
	for target, inputs := range corpus {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, args := range inputs {
			var buf bytes.Buffer
			buf.WriteString("go test fuzz v1\n")
			for _, a := range args {
				fmt.Fprintf(&buf, "[]byte(%s)\n", strconv.Quote(string(a)))
			}
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("seed%d", i)), buf.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}
