package ondisk

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func testVolumes() []VolumeRecord {
	return []VolumeRecord{
		{ID: 3, Name: "pvc-5f2a1c9e-0d7b-4e8a-9c61-3b2f8e4d7a10", SizeBytes: 10 << 30, CacheMode: CacheWriteback,
			Backing: BackingFile, BackingPath: "/var/lib/csi-cache/backing/3.img", SeqCutoff: 4 << 20, CreatedUnix: 1700000100},
		{ID: 1, Name: "scratch", SizeBytes: 1 << 30, CacheMode: CacheWritethrough, Backing: BackingNone, CreatedUnix: 1700000000},
		{ID: 2, Name: "scratch", SizeBytes: 512, CacheMode: CacheNone, Backing: BackingBlockDev, BackingPath: "/dev/sdb",
			Flags: VolumeDeleted, CreatedUnix: 1700000050},
		{ID: 9, Name: strings.Repeat("n", MaxVolumeNameLen), SizeBytes: 4096, CacheMode: CacheWritearound,
			Backing: BackingFile, BackingPath: "/" + strings.Repeat("p", MaxBackingPathLen-1)},
	}
}

func TestVolTableRoundTrip(t *testing.T) {
	area := VolTableAreaSize(8)
	for _, vols := range [][]VolumeRecord{nil, testVolumes()} {
		b, err := EncodeVolTable(VolTable{Seq: 11, Volumes: vols}, testSetMagic, area)
		if err != nil {
			t.Fatal(err)
		}
		if len(b)%BlockSize != 0 {
			t.Fatalf("encoded %d bytes", len(b))
		}
		// Decode from the whole area, with garbage after the table.
		buf := append(b, make([]byte, area-int64(len(b)))...)
		for i := len(b); i < len(buf); i++ {
			buf[i] = byte(i)
		}
		got, err := DecodeVolTable(buf, 1<<20, testSetMagic)
		if err != nil {
			t.Fatal(err)
		}
		if got.Seq != 11 || len(got.Volumes) != len(vols) {
			t.Fatalf("decoded %+v", got)
		}
		for i, r := range got.Volumes {
			if i > 0 && got.Volumes[i-1].ID >= r.ID {
				t.Fatalf("volumes not sorted: %v", got.Volumes)
			}
			var want VolumeRecord
			for _, v := range vols {
				if v.ID == r.ID {
					want = v
				}
			}
			if !reflect.DeepEqual(r, want) {
				t.Fatalf("volume %d\n got %+v\nwant %+v", r.ID, r, want)
			}
		}
	}
	if _, err := DecodeVolTable(make([]byte, BlockSize), 0, testSetMagic); !IsCorruption(err) {
		t.Fatalf("zeroed table decoded: %v", err)
	}
}

func TestEncodeVolTableErrors(t *testing.T) {
	good := testVolumes()
	tests := []struct {
		name   string
		mutate func([]VolumeRecord) []VolumeRecord
		area   int64
		err    error
		want   string
	}{
		{"full", nil, BlockSize, ErrVolTableFull, "4 volumes need"},
		{"zero id", func(v []VolumeRecord) []VolumeRecord { v[0].ID = 0; return v }, 0, ErrInvalidVolume, "id is zero"},
		{"duplicate id", func(v []VolumeRecord) []VolumeRecord { v[0].ID = 1; return v }, 0, ErrInvalidVolume, "ids not increasing"},
		{"duplicate live name", func(v []VolumeRecord) []VolumeRecord { v[2].Flags = 0; return v }, 0, ErrInvalidVolume, `same name "scratch"`},
		{"long name", func(v []VolumeRecord) []VolumeRecord { v[0].Name += strings.Repeat("x", 253); return v }, 0, ErrInvalidVolume, "name length"},
		{"long path", func(v []VolumeRecord) []VolumeRecord { v[3].BackingPath += "x"; return v }, 0, ErrInvalidVolume, "backing path length 4097"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			vols := append([]VolumeRecord(nil), good...)
			if tt.mutate != nil {
				vols = tt.mutate(vols)
			}
			area := tt.area
			if area == 0 {
				area = VolTableAreaSize(8)
			}
			_, err := EncodeVolTable(VolTable{Volumes: vols}, testSetMagic, area)
			if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %v naming %q", err, tt.err, tt.want)
			}
		})
	}
}

func TestVolTableCorruption(t *testing.T) {
	rec := VolumeRecord{ID: 5, Name: "v", SizeBytes: 1 << 20, CacheMode: CacheWritethrough, Backing: BackingFile, BackingPath: "/b"}
	one := func(mut func(*VolumeRecord)) func() []byte {
		return func() []byte {
			r := rec
			mut(&r)
			return encodeVolTable(1, []VolumeRecord{r}, testSetMagic)
		}
	}
	plain := one(func(*VolumeRecord) {})
	// length of the records of plain: 44 + 1 + 2
	const n = volTableHeaderSize + 47
	tests := []struct {
		name   string
		build  func() []byte
		bytes  func([]byte) []byte
		reseal int // if not 0, recompute the checksum over [12, reseal)
		want   string
	}{
		{name: "short", build: plain, bytes: func(b []byte) []byte { return b[:20] }, want: "short buffer: 20 bytes"},
		{name: "magic", build: plain, bytes: func(b []byte) []byte { b[7] ^= 0x80; return b }, want: "bad magic"},
		{name: "other set", build: func() []byte { return encodeVolTable(1, nil, testSetMagic+1) }, want: "bad magic"},
		{name: "version", build: plain, bytes: func(b []byte) []byte { b[13] = 1; return b }, reseal: n, want: "unsupported version 257"},
		{name: "checksum", build: plain, bytes: func(b []byte) []byte { b[n-1] ^= 1; return b }, want: "checksum mismatch"},
		{name: "length", build: plain, bytes: func(b []byte) []byte { le.PutUint32(b[28:], 1<<30); return b }, want: "records length 1073741824 exceeds"},
		{name: "count", build: plain, bytes: func(b []byte) []byte { le.PutUint32(b[24:], 2); return b }, reseal: n, want: "count 2 too large"},
		{name: "truncated record", build: plain, bytes: func(b []byte) []byte {
			le.PutUint32(b[24:], 2)
			le.PutUint32(b[28:], 47+43)
			return b
		}, reseal: n + 43, want: "record 1 truncated"},
		{name: "trailing", build: plain, bytes: func(b []byte) []byte { le.PutUint32(b[28:], 48); return b }, reseal: n + 1, want: "1 trailing bytes"},
		{name: "name past end", build: plain, bytes: func(b []byte) []byte { le.PutUint16(b[32+38:], 100); return b }, reseal: n, want: "name and path (100+2 bytes) past the end"},
		{name: "record reserved", build: plain, bytes: func(b []byte) []byte { b[32+43] = 1; return b }, reseal: n, want: "reserved bytes not zero"},
		{name: "id", build: one(func(r *VolumeRecord) { r.ID = 0 }), want: "id is zero"},
		{name: "empty name", build: one(func(r *VolumeRecord) { r.Name = "" }), want: "name length 0"},
		{name: "size", build: one(func(r *VolumeRecord) { r.SizeBytes = 1000 }), want: "size 1000 is not a positive multiple of 512"},
		{name: "cache mode", build: one(func(r *VolumeRecord) { r.CacheMode = 0 }), want: "unknown cache mode 0"},
		{name: "backing", build: one(func(r *VolumeRecord) { r.Backing = 9 }), want: "unknown backing type 9"},
		{name: "backing none with path", build: one(func(r *VolumeRecord) { r.Backing = BackingNone }), want: `backing type 3 with backing path "/b"`},
		{name: "file without path", build: one(func(r *VolumeRecord) { r.BackingPath = "" }), want: `backing type 1 with backing path ""`},
		{name: "flags", build: one(func(r *VolumeRecord) { r.Flags = 6 }), want: "unknown flags 0x6"},
		{name: "duplicate ids", build: func() []byte { return encodeVolTable(1, []VolumeRecord{rec, rec}, testSetMagic) }, want: "volume ids not increasing: 5 after 5"},
		{name: "duplicate names", build: func() []byte {
			r := rec
			r.ID++
			return encodeVolTable(1, []VolumeRecord{rec, r}, testSetMagic)
		}, want: `volumes 5 and 6 have the same name "v"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.build()
			if tt.bytes != nil {
				b = tt.bytes(b)
			}
			if tt.reseal != 0 {
				sealSum(b, tt.reseal)
			}
			_, err := DecodeVolTable(b, 12288, testSetMagic)
			wantCorrupt(t, err, tt.want)
			wantCorrupt(t, err, "volume table at offset 12")
		})
	}
}

func TestPickVolTable(t *testing.T) {
	enc := func(seq uint64) []byte {
		b, err := EncodeVolTable(VolTable{Seq: seq, Volumes: testVolumes()[:2]}, testSetMagic, BlockSize)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	l := testLayout(t)
	offA, offB := l.VolTableCopyOffset(CopyA), l.VolTableCopyOffset(CopyB)
	vt, p, err := PickVolTable(enc(3), enc(4), offA, offB, testSetMagic)
	if err != nil || vt.Seq != 4 || p.Copy != CopyB || !p.OtherStale || p.Copy.Other() != CopyA {
		t.Fatalf("PickVolTable = seq %d %+v %v", vt.Seq, p, err)
	}
	vt, p, err = PickVolTable(enc(3), flip(enc(4), 300), offA, offB, testSetMagic)
	if err != nil || vt.Seq != 3 || p.Copy != CopyA || !IsCorruption(p.OtherErr) {
		t.Fatalf("PickVolTable with B bad = seq %d %+v %v", vt.Seq, p, err)
	}
	_, _, err = PickVolTable(flip(enc(3), 300), nil, offA, offB, testSetMagic)
	wantCorrupt(t, err, "both copies bad")
	wantCorrupt(t, err, "short buffer")
}
