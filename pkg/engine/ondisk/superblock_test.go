package ondisk

import (
	"bytes"
	"testing"
	"time"
)

func testSuperblock(t testing.TB) Superblock {
	sb := NewSuperblock(testLayout(t), time.Unix(1700000000, 0))
	sb.Seq = 7
	sb.NextVolumeID = 42
	sb.Flags = SuperblockClean
	return sb
}

func TestSuperblockRoundTrip(t *testing.T) {
	sb := testSuperblock(t)
	if !ValidSetMagic(sb.SetMagic) || sb.SetUUID == [16]byte{} || sb.SetUUID[6]>>4 != 4 {
		t.Fatalf("NewSuperblock: magic %#x uuid %x", sb.SetMagic, sb.SetUUID)
	}
	b := EncodeSuperblock(sb)
	if len(b) != BlockSize {
		t.Fatalf("encoded %d bytes", len(b))
	}
	got, err := DecodeSuperblock(b, SuperblockOffsetA)
	if err != nil {
		t.Fatal(err)
	}
	if got != sb {
		t.Fatalf("round trip\n got %+v\nwant %+v", got, sb)
	}
	l, err := got.Layout()
	if err != nil || l != testLayout(t) {
		t.Fatalf("Layout() = %+v, %v", l, err)
	}
}

func TestSuperblockCorruption(t *testing.T) {
	good := testSuperblock(t)
	tests := []struct {
		name   string
		sb     func(*Superblock)   // field to break; the block is encoded unchecked
		bytes  func([]byte) []byte // or bytes to break
		reseal bool                // recompute the checksum after breaking bytes
		want   string
	}{
		{name: "short", bytes: func(b []byte) []byte { return b[:100] }, want: "bad length 100"},
		{name: "long", bytes: func(b []byte) []byte { return append(b, 0) }, want: "bad length 4097"},
		{name: "magic", bytes: func(b []byte) []byte { b[0] ^= 1; return b }, want: "bad magic"},
		{name: "zeroed", bytes: func(b []byte) []byte { return make([]byte, BlockSize) }, want: "zeroed"},
		{name: "version", bytes: func(b []byte) []byte { b[12] = 2; return b }, reseal: true, want: "unsupported version 2"},
		{name: "checksum", bytes: func(b []byte) []byte { b[40] ^= 0x10; return b }, want: "checksum mismatch"},
		{name: "checksum of tail", bytes: func(b []byte) []byte { b[4000] = 1; return b }, want: "checksum mismatch"},
		{name: "reserved tail", bytes: func(b []byte) []byte { b[4000] = 1; return b }, reseal: true, want: "reserved bytes not zero"},
		{name: "reserved field", bytes: func(b []byte) []byte { b[84] = 1; return b }, reseal: true, want: "reserved bytes not zero"},
		{name: "uuid", sb: func(sb *Superblock) { sb.SetUUID = [16]byte{} }, want: "set uuid is zero"},
		{name: "set magic zero", sb: func(sb *Superblock) { sb.SetMagic = 0 }, want: "invalid set magic"},
		{name: "set magic constant", sb: func(sb *Superblock) { sb.SetMagic = MagicBset }, want: "invalid set magic"},
		{name: "seq", sb: func(sb *Superblock) { sb.Seq = 0 }, want: "seq is zero"},
		{name: "next volume id", sb: func(sb *Superblock) { sb.NextVolumeID = 0 }, want: "next volume id is zero"},
		{name: "flags", sb: func(sb *Superblock) { sb.Flags |= 0x80 }, want: "unknown flags 0x80"},
		{name: "block size", sb: func(sb *Superblock) { sb.BlockSize = 512 }, want: "block size 512"},
		{name: "max volumes", sb: func(sb *Superblock) { sb.MaxVolumes = 1 << 20 }, want: "max volumes 1048576"},
		{name: "no volumes", sb: func(sb *Superblock) { sb.MaxVolumes = 0 }, want: "layout: ondisk: invalid layout parameters: max volumes 0"},
		{name: "bucket size", sb: func(sb *Superblock) { sb.BucketSize = 3 << 16 }, want: "layout: ondisk: invalid layout parameters: bucket size"},
		{name: "journal size", sb: func(sb *Superblock) { sb.JournalSize = 1 }, want: "journal size 1"},
		{name: "device size", sb: func(sb *Superblock) { sb.DeviceSize = 1 << 20 }, want: "device too small"},
		{name: "device negative", sb: func(sb *Superblock) { sb.DeviceSize = -1 << 40 }, want: "device size"},
		{name: "nbuckets", sb: func(sb *Superblock) { sb.NBuckets++ }, want: "nbuckets 1016 does not match the layout (1015)"},
		{name: "vol table offset", sb: func(sb *Superblock) { sb.VolTableOffset = 0 }, want: "volume table offset 0 does not match"},
		{name: "vol table size", sb: func(sb *Superblock) { sb.VolTableSize += BlockSize }, want: "volume table size"},
		{name: "gens offset", sb: func(sb *Superblock) { sb.GensOffset -= BlockSize }, want: "gens offset"},
		{name: "gens size", sb: func(sb *Superblock) { sb.GensSize = 0 }, want: "gens size 0"},
		{name: "journal offset", sb: func(sb *Superblock) { sb.JournalOffset += BlockSize }, want: "journal offset"},
		{name: "buckets offset", sb: func(sb *Superblock) { sb.BucketsOffset = 1 << 20 }, want: "buckets offset 1048576"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sb := good
			if tt.sb != nil {
				tt.sb(&sb)
			}
			b := encodeSuperblock(sb)
			if tt.bytes != nil {
				b = tt.bytes(b)
			}
			if tt.reseal {
				sealSum(b, len(b))
			}
			_, err := DecodeSuperblock(b, SuperblockOffsetB)
			wantCorrupt(t, err, tt.want)
			wantCorrupt(t, err, "superblock at offset 8192")
			if tt.sb != nil {
				defer func() {
					if recover() == nil {
						t.Error("EncodeSuperblock did not panic")
					}
				}()
				EncodeSuperblock(sb)
			}
		})
	}
}

func TestPickSuperblock(t *testing.T) {
	sb := testSuperblock(t)
	enc := func(seq uint64) []byte { s := sb; s.Seq = seq; return EncodeSuperblock(s) }
	bad := make([]byte, BlockSize)
	tests := []struct {
		name   string
		a, b   []byte
		seq    uint64
		picked Picked
		bad    bool // other copy bad
		err    string
	}{
		{"equal", enc(5), enc(5), 5, Picked{Copy: CopyA}, false, ""},
		{"A newer", enc(6), enc(5), 6, Picked{Copy: CopyA, OtherStale: true}, false, ""},
		{"B newer", enc(5), enc(6), 6, Picked{Copy: CopyB, OtherStale: true}, false, ""},
		{"A bad", flip(enc(9), 1000), enc(5), 5, Picked{Copy: CopyB}, true, ""},
		{"B bad", enc(5), bad, 5, Picked{Copy: CopyA}, true, ""},
		{"both bad", flip(enc(9), 1000), bad, 0, Picked{}, false, "both copies bad: A: engine: corrupt superblock at offset 4096: checksum mismatch"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, p, err := PickSuperblock(tt.a, tt.b)
			if tt.err != "" {
				wantCorrupt(t, err, tt.err)
				wantCorrupt(t, err, "B: engine: corrupt superblock at offset 8192: bad magic: block is zeroed")
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Seq != tt.seq || p.Copy != tt.picked.Copy || p.OtherStale != tt.picked.OtherStale || (p.OtherErr != nil) != tt.bad {
				t.Fatalf("picked seq %d %+v, want seq %d %+v (other bad %v)", got.Seq, p, tt.seq, tt.picked, tt.bad)
			}
			if tt.bad && !IsCorruption(p.OtherErr) {
				t.Fatalf("OtherErr %v", p.OtherErr)
			}
		})
	}

	other := NewSuperblock(testLayout(t), time.Now())
	_, _, err := PickSuperblock(EncodeSuperblock(sb), EncodeSuperblock(other))
	wantCorrupt(t, err, "different cache sets")
}

func TestValidSetMagic(t *testing.T) {
	for _, m := range []uint64{0, MagicVolTable, MagicGens, MagicBset, MagicJset, SuperblockMagic ^ MagicBset} {
		if ValidSetMagic(m) {
			t.Errorf("ValidSetMagic(%#x)", m)
		}
	}
	if !ValidSetMagic(testSetMagic) {
		t.Error("test set magic invalid")
	}
	if !bytes.Equal(encodeSuperblock(Superblock{})[:8], []byte("csicache")) {
		t.Error("superblock magic does not read csicache")
	}
}
