package engine

import (
	"hash/maphash"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// A fill copies data a read missed into the cache, in the background: the read
// returns as soon as the backing store answered. Fills are dropped, never
// waited for, when the queue is full, the policy does not promote the region,
// the cache is full, or a write raced with the fill.
//
// A filler takes every fill waiting in the queue (up to fillBatchMax) and
// writes those of one volume with one device write per bucket they land in,
// packed back to back at the clean write point (each fill 4 KiB aligned), so
// that a burst of small misses costs a few large writes rather than one
// write each. Each fill is then inserted on its own, by compare-and-swap under
// its stripe check, as if it had been written alone.

// fillReq is one queued fill.
type fillReq struct {
	v     *Volume
	start uint64 // first sector
	buf   []byte // from getAligned; len(buf) bytes to fill
	// seq is the stripes' sequence sum over [seqStart, seqEnd), the range of
	// the read that missed (it includes this fill), taken before its lookup.
	// Sums only grow: an equal sum later means no write touched the range.
	seq              uint64
	seqStart, seqEnd uint64
}

const (
	// fillQueueLen bounds the fills waiting for a filler.
	fillQueueLen = 64
	// fillBatchMax bounds the fills one filler takes from the queue at once.
	fillBatchMax = fillQueueLen
)

// alignedPools hold aligned buffers for device IO by size class, so that a
// 4 KiB fill does not pin a 1 MiB buffer while it waits in the queue.
var alignedPools = [...]*device.BufferPool{
	device.NewBufferPool(4 << 10),
	device.NewBufferPool(64 << 10),
	device.NewBufferPool(fillMax),
}

// getAligned returns an aligned buffer of n <= fillMax bytes.
func getAligned(n int) []byte {
	for _, p := range alignedPools {
		if n <= p.Size() {
			return p.Get()[:n]
		}
	}
	panic("engine: fill larger than fillMax")
}

func putAligned(b []byte) {
	for _, p := range alignedPools {
		if cap(b) == p.Size() {
			p.Put(b)
			return
		}
	}
}

var promoteSeed = maphash.MakeSeed()

// fill queues a copy of p (sectors from start, read from the backing store after
// the stripes of the read's range [readStart, readEnd) had sequence sum seq) to
// be inserted into the cache.
func (v *Volume) fill(p []byte, start, readStart, readEnd, seq uint64) {
	c := v.c
	// The policy decides per 64 KiB region whether a miss is worth caching.
	var h maphash.Hash
	h.SetSeed(promoteSeed)
	var key [16]byte
	putU64(key[:8], v.id)
	putU64(key[8:], start>>7)
	h.Write(key[:])
	if !c.alloc.Promote(h.Sum64()) {
		v.stats.bypassed.Add(uint64(len(p)) / sectorSize)
		return
	}
	for len(p) > 0 {
		n := min(len(p), fillMax)
		buf := getAligned(n)
		copy(buf, p[:n])
		select {
		case c.fills <- fillReq{v: v, start: start, buf: buf, seq: seq, seqStart: readStart, seqEnd: readEnd}:
		default:
			putAligned(buf)
			c.stats.fillsDropped.Add(1)
		}
		p = p[n:]
		start += uint64(n) / sectorSize
	}
}

func putU64(b []byte, x uint64) {
	for i := range 8 {
		b[i] = byte(x >> (8 * i))
	}
}

// filler runs fills until the cache set closes.
func (c *CacheSet) filler() {
	defer c.bgDone.Done()
	f := &fillBatch{c: c, gather: device.AlignedBuffer(fillMax)}
	for {
		select {
		case <-c.closed:
			return
		case r := <-c.fills:
			f.reqs = append(f.reqs[:0], r)
		more:
			for len(f.reqs) < fillBatchMax {
				select {
				case r := <-c.fills:
					f.reqs = append(f.reqs, r)
				default:
					break more
				}
			}
			f.run()
			for i := range f.reqs {
				putAligned(f.reqs[i].buf)
				f.reqs[i] = fillReq{}
			}
		}
	}
}

// fillBatch is a filler's work: the fills it took and its scratch space.
type fillBatch struct {
	c      *CacheSet
	reqs   []fillReq
	gather []byte     // aligned, fillMax bytes: the fills of one device write
	group  []*fillReq // the fills of one volume
	live   []*fillReq // those of a chunk no write raced with
	keys   []bkey.Key
	ends   []int // keys[ends[i-1]:ends[i]] are group[i]'s keys
}

// run writes the batch's fills, one volume at a time.
func (f *fillBatch) run() {
	for i := range f.reqs {
		v := f.reqs[i].v
		if v == nil {
			continue // done with an earlier volume
		}
		f.group = f.group[:0]
		for j := i; j < len(f.reqs); j++ {
			if f.reqs[j].v == v {
				f.group = append(f.group, &f.reqs[j])
				f.reqs[j].v = nil
			}
		}
		f.volume(v)
	}
}

// volume writes the fills in f.group, all of volume v (their v fields are
// cleared: run's mark of what is done), as many at a time as the gather buffer
// takes. It holds the volume's IO lock for one device write at a time, as a
// read would, not for the whole group.
func (f *fillBatch) volume(v *Volume) {
	for todo := f.group; len(todo) > 0; {
		n, ok := f.chunk(v, todo)
		if !ok {
			return
		}
		todo = todo[n:]
	}
}

// chunk writes the first fills of todo that fit in the gather buffer (at least
// one), and returns how many it took and false if the rest should be dropped.
func (f *fillBatch) chunk(v *Volume, todo []*fillReq) (int, bool) {
	c := f.c
	v.io.RLock()
	defer v.io.RUnlock()
	if v.closed {
		return 0, false
	}
	// Pack the fills no write has raced with yet, each 4 KiB aligned.
	taken, size := 0, 0
	live := f.live[:0]
	for _, r := range todo {
		at := (size + reserveAlign*sectorSize - 1) / (reserveAlign * sectorSize) * (reserveAlign * sectorSize)
		if at+len(r.buf) > len(f.gather) {
			break
		}
		taken++
		if v.stripes.seqSum(r.seqStart, r.seqEnd) != r.seq {
			c.stats.fillRaces.Add(1)
			continue
		}
		clear(f.gather[size:at])
		copy(f.gather[at:], r.buf)
		size = at + len(r.buf)
		live = append(live, r)
	}
	f.live = live
	if len(live) == 0 {
		return taken, true
	}
	return taken, f.write(v, live, f.gather[:size])
}

// write writes data, the fills reqs laid out as volume packed them, to the
// clean write point and inserts each fill's keys. It returns false if the
// fills that follow should be dropped too (the cache is full or failed).
func (f *fillBatch) write(v *Volume, reqs []*fillReq, data []byte) bool {
	c := f.c
	exts, err := c.reserve(&c.wpClean, uint64(len(data))/sectorSize)
	if err != nil {
		return false
	}
	defer c.releaseExtents(exts)
	pos := 0 // bytes of data written
	for _, e := range exts {
		n := int(e.n) * sectorSize
		if err := c.devWrite(data[pos:pos+n], c.dataOffset(e.ptr, 0)); err != nil {
			v.stats.cacheErrors.Add(1)
			c.logf("engine: cache write of a fill failed: %v", err)
			return false
		}
		pos += n
	}
	// Each fill's keys: its range of data cut at extent boundaries.
	f.keys, f.ends = f.keys[:0], f.ends[:0]
	at := 0 // byte offset of the current fill in data
	for _, r := range reqs {
		at = (at + reserveAlign*sectorSize - 1) / (reserveAlign * sectorSize) * (reserveAlign * sectorSize)
		lo, hi := at/sectorSize, (at+len(r.buf))/sectorSize // sectors in data
		eStart := 0                                         // first sector of exts[i] in data
		for _, e := range exts {
			eEnd := eStart + int(e.n)
			if s, t := max(lo, eStart), min(hi, eEnd); s < t {
				ptr := e.ptr
				ptr.Offset += uint32(s - eStart)
				f.keys = append(f.keys, bkey.Key{Vol: v.id, Start: r.start + uint64(s-lo), Len: uint32(t - s), Ptr: ptr})
				if err := c.alloc.MarkData(ptr.Bucket, t-s, false); err != nil {
					c.setErr(err)
					return false
				}
			}
			eStart = eEnd
		}
		f.ends = append(f.ends, len(f.keys))
		at += len(r.buf)
	}
	first := 0
	for i, r := range reqs {
		if !f.insert(v, r, f.keys[first:f.ends[i]]) {
			return false
		}
		first = f.ends[i]
	}
	return true
}

// insert inserts the keys of fill r unless a write raced with it.
func (f *fillBatch) insert(v *Volume, r *fillReq, keys []bkey.Key) bool {
	c := f.c
	end := r.start + uint64(len(r.buf))/sectorSize
	locked := v.stripes.lockQuiet(r.start, end)
	defer v.stripes.unlockQuiet(locked)
	if v.stripes.seqSum(r.seqStart, r.seqEnd) != r.seq || end*sectorSize > v.size.Load() {
		c.stats.fillRaces.Add(1)
		return true
	}
	for _, k := range keys {
		if _, err := c.ReplaceKey(k, nil); err != nil {
			c.logf("engine: insert of a fill failed: %v", err)
			return false
		}
	}
	c.stats.fills.Add(1)
	return true
}
