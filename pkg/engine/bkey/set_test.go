package bkey

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// The model of a Set is a per-sector array over a small key space: each sector of
// each volume maps to (bucket, offset, gen, dirty) or to nothing.
const (
	modelVols    = 2
	modelSectors = 64
)

type msector struct {
	ok               bool
	bucket, off, gen uint32
	dirty            bool
}

type model [modelVols][modelSectors]msector

// mapping is what k maps sector s to.
func mapping(k Key, s uint64) msector {
	return msector{ok: true, bucket: k.Ptr.Bucket, off: k.Ptr.Offset + uint32(s-k.Start), gen: k.Ptr.Gen, dirty: k.Dirty()}
}

func (m *model) insert(k Key) (overwritten uint64) {
	for s := k.Start; s < k.End(); s++ {
		cur := &m[k.Vol][s]
		if cur.ok {
			overwritten++
		}
		*cur = msector{}
		if !k.Whiteout() {
			*cur = mapping(k, s)
		}
	}
	return overwritten
}

func (m *model) replaceIf(k Key, expect *Key) (inserted uint64) {
	if (expect == nil && k.Whiteout()) || (expect != nil && (expect.Vol != k.Vol || expect.Whiteout())) {
		return 0
	}
	for s := k.Start; s < k.End(); s++ {
		cur := &m[k.Vol][s]
		if expect == nil && cur.ok {
			continue
		}
		if expect != nil && (s < expect.Start || s >= expect.End() || *cur != mapping(*expect, s)) {
			continue
		}
		inserted++
		*cur = msector{}
		if !k.Whiteout() {
			*cur = mapping(k, s)
		}
	}
	return inserted
}

// check compares s with m sector by sector, and checks Lookup and Seek against a
// linear scan of the keys.
func (m *model) check(t testing.TB, s *Set, src source) {
	t.Helper()
	if err := s.Check(); err != nil {
		t.Fatalf("Check: %v\nkeys: %v", err, s.keys)
	}
	var got model
	for _, k := range s.keys {
		if k.Vol >= modelVols || k.End() > modelSectors {
			t.Fatalf("key %v outside the key space", k)
		}
		for sec := k.Start; sec < k.End(); sec++ {
			got[k.Vol][sec] = mapping(k, sec)
		}
	}
	if got != *m {
		for v := range modelVols {
			for sec := range modelSectors {
				if got[v][sec] != m[v][sec] {
					t.Fatalf("vol %d sector %d: set maps %+v, model %+v\nkeys: %v", v, sec, got[v][sec], m[v][sec], s.keys)
				}
			}
		}
	}

	vol := uint64(src.intn(modelVols))
	start := uint64(src.intn(modelSectors))
	end := start + 1 + uint64(src.intn(modelSectors-int(start)))
	var want, visited []Key
	for _, k := range s.keys {
		if k.Vol == vol && k.Start < end && k.End() > start {
			want = append(want, k)
		}
	}
	s.Lookup(vol, start, end, func(k Key) bool { visited = append(visited, k); return true })
	if !slices.Equal(want, visited) {
		t.Fatalf("Lookup(%d, %d, %d) = %v, want %v", vol, start, end, visited, want)
	}
	i := s.Seek(Pos{vol, start})
	if i < 0 || i > s.Len() || (i < s.Len() && !Pos{vol, start}.Less(s.At(i).EndPos())) ||
		(i > 0 && Pos{vol, start}.Less(s.At(i-1).EndPos())) {
		t.Fatalf("Seek(%d:%d) = %d in %v", vol, start, i, s.keys)
	}
}

// source supplies the choices of the op generator: math/rand for the randomized
// test, the fuzzer's bytes for FuzzSetOps.
type source interface{ intn(n int) int }

type randSource struct{ r *rand.Rand }

func (r randSource) intn(n int) int { return r.r.IntN(n) }

type byteSource struct{ b []byte }

func (s *byteSource) intn(n int) int {
	if len(s.b) == 0 {
		return 0
	}
	v := int(s.b[0])
	s.b = s.b[1:]
	return v % n
}

const (
	opInsert = iota
	opWhiteout
	opFill    // ReplaceIf(k, nil)
	opReplace // ReplaceIf(k, expect)
	nOps
)

type setOp struct {
	kind   int
	k      Key
	expect *Key
}

func (o setOp) String() string {
	names := [...]string{"Insert", "Whiteout", "Fill", "Replace"}
	if o.expect != nil {
		return fmt.Sprintf("%s(%v, expect %v)", names[o.kind], o.k, *o.expect)
	}
	return fmt.Sprintf("%s(%v)", names[o.kind], o.k)
}

func genKey(src source) Key {
	start := src.intn(modelSectors)
	k := Key{
		Vol:   uint64(src.intn(modelVols)),
		Start: uint64(start),
		Len:   uint32(1 + src.intn(min(20, modelSectors-start))),
		Ptr:   Ptr{Bucket: uint32(src.intn(4)), Offset: uint32(src.intn(256)), Gen: uint32(src.intn(3))},
	}
	if src.intn(2) == 1 {
		k.Flags |= FlagDirty
	}
	return k
}

func genOp(src source, s *Set) setOp {
	op := setOp{kind: src.intn(nOps), k: genKey(src)}
	switch op.kind {
	case opWhiteout:
		op.k.Flags = FlagWhiteout
	case opReplace:
		if s.Len() == 0 || src.intn(8) == 0 {
			e := genKey(src)
			op.expect = &e
			break
		}
		// Expect part of an existing key, as a reader would have seen it; sometimes
		// a stale version of it.
		e := s.At(src.intn(s.Len()))
		a := e.Start + uint64(src.intn(int(e.Len)))
		b := a + 1 + uint64(src.intn(int(e.End()-a)))
		e = clip(e, a, b)
		switch src.intn(8) {
		case 0:
			e.Ptr.Gen++
		case 1:
			e.Flags ^= FlagDirty
		case 2:
			e.Ptr.Offset++
		case 3:
			e.Ptr.Bucket++
		}
		op.expect = &e
		switch src.intn(3) {
		case 0: // writeback: mark clean
			op.k = e
			op.k.Flags &^= FlagDirty
		case 1: // drop the key if unchanged
			op.k = e
			op.k.Flags = FlagWhiteout
		default: // a new key over an overlapping range
			op.k.Vol = e.Vol
		}
	}
	return op
}

func runOp(t testing.TB, s *Set, m *model, op setOp) {
	t.Helper()
	var got, want uint64
	switch op.kind {
	case opInsert, opWhiteout:
		got, want = s.Insert(op.k), m.insert(op.k)
	default:
		got, want = s.ReplaceIf(op.k, op.expect), m.replaceIf(op.k, op.expect)
	}
	if got != want {
		t.Fatalf("%v returned %d, model %d\nkeys: %v", op, got, want, s.keys)
	}
}

func TestSetModel(t *testing.T) {
	for seed := range uint64(20) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			src := randSource{rand.New(rand.NewPCG(seed, 0x5e7))}
			var s Set
			var m model
			for range 2000 {
				op := genOp(src, &s)
				runOp(t, &s, &m, op)
				m.check(t, &s, src)
			}
		})
	}
}

func FuzzSetOps(f *testing.F) {
	f.Add([]byte{0, 0, 3, 7, 1, 9, 2, 0, 0, 0, 5, 4, 1, 1, 1, 0})
	f.Add([]byte{3, 1, 10, 30, 2, 40, 1, 1, 0, 2, 0, 0, 0, 0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7})
	f.Add([]byte("a fuzzer turns bytes into inserts, whiteouts, fills and replaces"))
	f.Fuzz(func(t *testing.T, data []byte) {
		src := &byteSource{data}
		var s Set
		var m model
		for len(src.b) > 0 {
			op := genOp(src, &s)
			runOp(t, &s, &m, op)
			m.check(t, &s, src)
		}
	})
}

func TestSetInsert(t *testing.T) {
	k := func(start uint64, n uint32, off uint32) Key {
		return Key{Vol: 1, Start: start, Len: n, Ptr: Ptr{Bucket: 7, Offset: off, Gen: 1}}
	}
	tests := []struct {
		name        string
		have        []Key
		insert      Key
		want        []Key
		overwritten uint64
	}{
		{"empty", nil, k(10, 5, 0), []Key{k(10, 5, 0)}, 0},
		{"split", []Key{k(0, 100, 0)}, k(10, 5, 500),
			[]Key{k(0, 10, 0), k(10, 5, 500), k(15, 85, 15)}, 5},
		{"trim front", []Key{k(10, 10, 0)}, k(5, 10, 500),
			[]Key{k(5, 10, 500), k(15, 5, 5)}, 5},
		{"trim back", []Key{k(10, 10, 0)}, k(15, 10, 500),
			[]Key{k(10, 5, 0), k(15, 10, 500)}, 5},
		{"cover several", []Key{k(0, 4, 0), k(4, 4, 100), k(8, 4, 200), k(12, 4, 300)}, k(2, 12, 500),
			[]Key{k(0, 2, 0), k(2, 12, 500), k(14, 2, 302)}, 12},
		{"exact", []Key{k(0, 4, 0), k(4, 4, 100), k(8, 4, 200)}, k(4, 4, 500),
			[]Key{k(0, 4, 0), k(4, 4, 500), k(8, 4, 200)}, 4},
		{"other volume untouched", []Key{{Vol: 2, Start: 0, Len: 100}}, k(10, 5, 0),
			[]Key{k(10, 5, 0), {Vol: 2, Start: 0, Len: 100}}, 0},
		{"whiteout split", []Key{k(0, 100, 0)}, Key{Vol: 1, Start: 10, Len: 5, Flags: FlagWhiteout},
			[]Key{k(0, 10, 0), k(15, 85, 15)}, 5},
		{"whiteout all", []Key{k(0, 4, 0), k(4, 4, 100)}, Key{Vol: 1, Start: 0, Len: 8, Flags: FlagWhiteout},
			[]Key{}, 8},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s Set
			for _, h := range tt.have {
				s.Insert(h)
			}
			if n := s.Insert(tt.insert); n != tt.overwritten {
				t.Errorf("overwritten = %d, want %d", n, tt.overwritten)
			}
			if got := s.Keys(); !slices.Equal(got, tt.want) {
				t.Errorf("keys = %v\nwant   %v", got, tt.want)
			}
			if err := s.Check(); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestSetReplaceIf(t *testing.T) {
	dirty := Key{Vol: 1, Start: 0, Len: 16, Flags: FlagDirty, Ptr: Ptr{Bucket: 3, Offset: 64, Gen: 2}}
	var s Set
	s.Insert(dirty)
	// A write lands in the middle while writeback is writing [0,16) back.
	s.Insert(Key{Vol: 1, Start: 4, Len: 4, Flags: FlagDirty, Ptr: Ptr{Bucket: 5, Gen: 1}})
	clean := dirty
	clean.Flags = 0
	if n := s.ReplaceIf(clean, &dirty); n != 12 {
		t.Fatalf("ReplaceIf marked %d sectors clean, want 12", n)
	}
	want := []Key{
		{Vol: 1, Start: 0, Len: 4, Ptr: Ptr{Bucket: 3, Offset: 64, Gen: 2}},
		{Vol: 1, Start: 4, Len: 4, Flags: FlagDirty, Ptr: Ptr{Bucket: 5, Gen: 1}},
		{Vol: 1, Start: 8, Len: 8, Ptr: Ptr{Bucket: 3, Offset: 72, Gen: 2}},
	}
	if got := s.Keys(); !slices.Equal(got, want) {
		t.Fatalf("keys = %v\nwant   %v", got, want)
	}
	// A fill over [0,32) only lands in [16,32).
	fill := Key{Vol: 1, Start: 0, Len: 32, Ptr: Ptr{Bucket: 9, Gen: 4}}
	if n := s.ReplaceIf(fill, nil); n != 16 {
		t.Fatalf("fill inserted %d sectors, want 16", n)
	}
	if k := s.At(3); k != (Key{Vol: 1, Start: 16, Len: 16, Ptr: Ptr{Bucket: 9, Offset: 16, Gen: 4}}) {
		t.Fatalf("fill key = %v", k)
	}
	// Stale expectation (other gen): nothing happens.
	stale := clean
	stale.Ptr.Gen = 1
	if n := s.ReplaceIf(Key{Vol: 1, Start: 0, Len: 16, Flags: FlagWhiteout}, &stale); n != 0 {
		t.Fatalf("stale ReplaceIf changed %d sectors", n)
	}
	if err := s.Check(); err != nil {
		t.Fatal(err)
	}
}

func TestSetAppendSplit(t *testing.T) {
	var s Set
	for i := range uint64(10) {
		if err := s.Append(Key{Vol: 1, Start: i * 8, Len: 8}); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []Key{
		{Vol: 1, Start: 75, Len: 8},                     // overlaps the last key
		{Vol: 0, Start: 100, Len: 8},                    // before it
		{Vol: 2, Start: 0, Len: 0},                      // empty
		{Vol: 2, Start: 0, Len: 8, Flags: FlagWhiteout}, // whiteout
		{Vol: 2, Start: ^uint64(0) - 2, Len: 8},         // end overflows
	} {
		if err := s.Append(bad); err == nil {
			t.Errorf("Append(%v) succeeded", bad)
		}
	}
	if s.Len() != 10 {
		t.Fatalf("Len = %d after failed appends", s.Len())
	}
	l, r := s.SplitAt(4)
	if l.Len() != 4 || r.Len() != 6 || r.At(0).Start != 32 || s.Len() != 10 {
		t.Fatalf("SplitAt(4) = %v | %v", l.keys, r.keys)
	}
	l.Insert(Key{Vol: 1, Start: 0, Len: 100})
	if s.At(0).Len != 8 || r.At(0).Len != 8 {
		t.Fatal("split halves share memory with each other or the original")
	}
	c := s.Clone()
	c.Apply([]Key{{Vol: 1, Start: 0, Len: 80, Flags: FlagWhiteout}, {Vol: 1, Start: 4, Len: 1}})
	if c.Len() != 1 || s.Len() != 10 || c.Sectors() != 1 || s.Sectors() != 80 {
		t.Fatalf("Apply on clone: clone %v, original %v", c.keys, s.keys)
	}
}

// benchSet returns a set of n contiguous 8-sector keys of volume 1.
func benchSet(n int) *Set {
	var s Set
	for i := range uint64(n) {
		if err := s.Append(Key{Vol: 1, Start: i * 8, Len: 8, Ptr: Ptr{Bucket: uint32(i / 128), Offset: uint32(i%128) * 8}}); err != nil {
			panic(err)
		}
	}
	return &s
}

const benchKeys = 10_000

// BenchmarkSetInsert inserts random 8-sector keys into a 10k-key set. Aligned
// keys replace one key each, so the set stays at 10k keys; unaligned keys trim two
// neighbours, so the set is rebuilt every 4096 inserts.
func BenchmarkSetInsert(b *testing.B) {
	b.Run("aligned", func(b *testing.B) {
		s := benchSet(benchKeys)
		r := rand.New(rand.NewPCG(1, 2))
		for b.Loop() {
			s.Insert(Key{Vol: 1, Start: r.Uint64N(benchKeys) * 8, Len: 8, Ptr: Ptr{Bucket: 1}})
		}
	})
	b.Run("unaligned", func(b *testing.B) {
		s := benchSet(benchKeys)
		r := rand.New(rand.NewPCG(1, 2))
		i := 0
		for b.Loop() {
			if i++; i%4096 == 0 {
				b.StopTimer()
				s = benchSet(benchKeys)
				b.StartTimer()
			}
			s.Insert(Key{Vol: 1, Start: r.Uint64N(benchKeys*8 - 8), Len: 8, Ptr: Ptr{Bucket: 1}})
		}
	})
}

// BenchmarkSetLookup looks up random 64-sector ranges (about 9 keys each) in a
// 10k-key set.
func BenchmarkSetLookup(b *testing.B) {
	s := benchSet(benchKeys)
	r := rand.New(rand.NewPCG(1, 2))
	n := 0
	for b.Loop() {
		start := r.Uint64N(benchKeys*8 - 64)
		s.Lookup(1, start, start+64, func(Key) bool { n++; return true })
	}
	if n == 0 {
		b.Fatal("no keys visited")
	}
}
