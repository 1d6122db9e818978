package ondisk

import (
	"slices"
	"testing"
)

func testGensPage(first uint32, n int, seq uint64) GensPage {
	p := GensPage{Seq: seq, First: first, Gens: make([]uint32, n)}
	for i := range p.Gens {
		p.Gens[i] = uint32(i*7 + 1)
	}
	return p
}

func TestGensPageRoundTrip(t *testing.T) {
	for _, p := range []GensPage{testGensPage(0, GensPerPage, 1), testGensPage(3*GensPerPage, 1, 9), testGensPage(GensPerPage, 17, 1<<40)} {
		b := EncodeGensPage(p, testSetMagic)
		got, err := DecodeGensPage(b, 0, testSetMagic)
		if err != nil {
			t.Fatal(err)
		}
		if got.Seq != p.Seq || got.First != p.First || !slices.Equal(got.Gens, p.Gens) {
			t.Fatalf("round trip: got %+v", got)
		}
	}
}

func TestGensPageCorruption(t *testing.T) {
	good := func() []byte { return encodeGensPage(testGensPage(0, 10, 5), testSetMagic) }
	tests := []struct {
		name   string
		build  func() []byte
		bytes  func([]byte) []byte
		reseal bool
		want   string
	}{
		{name: "short", build: good, bytes: func(b []byte) []byte { return b[:BlockSize-1] }, want: "bad length 4095"},
		{name: "magic", build: good, bytes: func(b []byte) []byte { b[3]++; return b }, want: "bad magic"},
		{name: "zeroed", build: func() []byte { return make([]byte, BlockSize) }, want: "zeroed"},
		{name: "other set", build: func() []byte { return encodeGensPage(testGensPage(0, 10, 5), testSetMagic^1) }, want: "bad magic"},
		{name: "version", build: good, bytes: func(b []byte) []byte { b[12] = 0; return b }, reseal: true, want: "unsupported version 0"},
		{name: "checksum", build: good, bytes: func(b []byte) []byte { b[40]++; return b }, want: "checksum mismatch"},
		{name: "count zero", build: good, bytes: func(b []byte) []byte { le.PutUint32(b[28:], 0); return b }, reseal: true, want: "count 0 not in [1, 1016]"},
		{name: "count large", build: good, bytes: func(b []byte) []byte { le.PutUint32(b[28:], GensPerPage+1); return b }, reseal: true, want: "count 1017"},
		{name: "tail", build: good, bytes: func(b []byte) []byte { b[BlockSize-1] = 1; return b }, reseal: true, want: "bytes after 10 generations not zero"},
		{name: "first", build: func() []byte { return encodeGensPage(testGensPage(5, 10, 5), testSetMagic) }, want: "first bucket 5 is not a multiple of 1016"},
		{name: "past 2^32", build: func() []byte {
			return encodeGensPage(testGensPage(4227330*GensPerPage, GensPerPage, 5), testSetMagic)
		}, want: "past bucket 2^32"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.build()
			if tt.bytes != nil {
				b = tt.bytes(b)
			}
			if tt.reseal {
				sealSum(b, len(b))
			}
			_, err := DecodeGensPage(b, 77<<12, testSetMagic)
			wantCorrupt(t, err, tt.want)
			wantCorrupt(t, err, "gens page at offset 315392")
		})
	}
}

func TestPickGensPage(t *testing.T) {
	l, err := ComputeLayout(1<<40, 1<<20, 1<<30, 100) // 2 pages used
	if err != nil {
		t.Fatal(err)
	}
	last := l.GensPagesUsed() - 1
	first := last * GensPerPage
	n := int(l.NBuckets - first)
	enc := func(first uint32, n int, seq uint64) []byte {
		return EncodeGensPage(testGensPage(first, n, seq), testSetMagic)
	}
	p, pk, err := PickGensPage(enc(first, n, 4), enc(first, n, 5), &l, last, testSetMagic)
	if err != nil || p.Seq != 5 || pk.Copy != CopyB || !pk.OtherStale {
		t.Fatalf("PickGensPage = %d %+v %v", p.Seq, pk, err)
	}
	// A slot holding another page, or the wrong count, is bad.
	p, pk, err = PickGensPage(enc(first, n, 4), enc(0, n, 5), &l, last, testSetMagic)
	if err != nil || p.Seq != 4 || pk.Copy != CopyA {
		t.Fatalf("PickGensPage with B misplaced = %d %+v %v", p.Seq, pk, err)
	}
	wantCorrupt(t, pk.OtherErr, "want [")
	_, _, err = PickGensPage(enc(first, n-1, 4), make([]byte, BlockSize), &l, last, testSetMagic)
	wantCorrupt(t, err, "both copies bad")
	wantCorrupt(t, err, "holds buckets")
	wantCorrupt(t, err, "zeroed")
	defer func() {
		if recover() == nil {
			t.Error("PickGensPage of a page past the buckets did not panic")
		}
	}()
	PickGensPage(nil, nil, &l, last+1, testSetMagic)
}
