package engine

import (
	"bytes"
	"math/rand/v2"
	"testing"
)

// TestFillBatch runs one batch of fills of two volumes, of odd sizes, across
// buckets and beyond one gather buffer, with a raced fill among them, and
// checks that every other fill reads back from the cache.
func TestFillBatch(t *testing.T) {
	e := newVolEnv(t, 32<<20, volTestConfig())
	const volSize = 4 << 20
	rng := rand.New(rand.NewPCG(5, 6))
	vols := make([]*Volume, 2)
	data := make([][]byte, 2)
	for i, name := range []string{"a", "b"} {
		v, err := e.c.CreateVolume(VolumeSpec{Name: name, Size: volSize, SeqCutoff: NoSeqCutoff})
		if err != nil {
			t.Fatal(err)
		}
		vols[i], data[i] = v, randBytes(rng, volSize)
		if _, err := v.backing.WriteAt(data[i], 0); err != nil {
			t.Fatal(err)
		}
	}
	type fillSpec struct {
		vol          int
		start, bytes int // in sectors and bytes
		raced        bool
	}
	specs := []fillSpec{
		{vol: 0, start: 0, bytes: 512},
		{vol: 1, start: 0, bytes: 4096},
		{vol: 0, start: 8, bytes: 1536},                 // ends mid-block: the next fill is padded
		{vol: 0, start: 5000, bytes: 4096, raced: true}, // a write raced with it (alone in its stripe)
		{vol: 0, start: 40, bytes: 200 << 10},           // spans buckets (64 KiB)
		{vol: 1, start: 16, bytes: fillMax},             // one gather buffer alone
		{vol: 0, start: 2048, bytes: fillMax},           // does not fit after the others
		{vol: 1, start: 4096, bytes: 512},
		{vol: 0, start: 6000, bytes: 3584},
	}
	f := &fillBatch{c: e.c, gather: make([]byte, fillMax)}
	for _, s := range specs {
		v := vols[s.vol]
		end := uint64(s.start) + uint64(s.bytes)/sectorSize
		buf := getAligned(s.bytes)
		copy(buf, data[s.vol][s.start*sectorSize:])
		seq := v.stripes.seqSum(uint64(s.start), end)
		if s.raced {
			v.stripes.unlock(v.stripes.lock(uint64(s.start), end))
		}
		f.reqs = append(f.reqs, fillReq{v: v, start: uint64(s.start), buf: buf, seq: seq, seqStart: uint64(s.start), seqEnd: end})
	}
	racesBefore := e.c.stats.fillRaces.Load()
	f.run()
	for i := range f.reqs {
		putAligned(f.reqs[i].buf)
	}
	if got := e.c.stats.fillRaces.Load() - racesBefore; got != 1 {
		t.Errorf("%d fills raced, want 1", got)
	}
	for _, s := range specs {
		v := vols[s.vol]
		before := v.Stats()
		got := make([]byte, s.bytes)
		if err := v.ReadAt(got, int64(s.start)*sectorSize); err != nil {
			t.Fatal(err)
		}
		if want := data[s.vol][s.start*sectorSize:][:s.bytes]; !bytes.Equal(got, want) {
			t.Fatalf("fill %+v reads back wrong data", s)
		}
		hits := v.Stats().Hits - before.Hits
		switch want := uint64(s.bytes) / sectorSize; {
		case s.raced && hits != 0:
			t.Errorf("raced fill %+v: %d sectors hit the cache", s, hits)
		case !s.raced && hits != want:
			t.Errorf("fill %+v: %d of %d sectors hit the cache", s, hits, want)
		}
	}
}

// TestPartialMissFills: a read that hits part of its range and misses the rest
// fills the missed part (found in review: the fill compared the stripes'
// sequence sum of the whole read with that of the gap alone, so any read with
// a hit in another stripe counted as a race and never filled).
func TestPartialMissFills(t *testing.T) {
	e := newVolEnv(t, 16<<20, volTestConfig())
	v, err := e.c.CreateVolume(VolumeSpec{Name: "v", Size: 1 << 20, Mode: Writethrough, SeqCutoff: NoSeqCutoff})
	if err != nil {
		t.Fatal(err)
	}
	// [64K, 128K) is cached (written through); [0, 64K) only on the backing store.
	if err := v.WriteAt(bytes.Repeat([]byte{'w'}, 64<<10), 64<<10, false); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128<<10)
	var misses []uint64
	for range 5 {
		before := v.Stats().Misses
		if err := v.ReadAt(buf, 0); err != nil {
			t.Fatal(err)
		}
		misses = append(misses, v.Stats().Misses-before)
		waitFills(e.c)
	}
	if misses[len(misses)-1] != 0 {
		t.Fatalf("sectors missed per read of [0, 128K): %v; the missed half is never filled (%d fill races)", misses, e.c.stats.fillRaces.Load())
	}
}
