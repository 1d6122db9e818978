package engine

import (
	"hash/maphash"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// A fill copies data a read missed into the cache, in the background: the read
// returns as soon as the backing store answered. Fills are dropped, never
// waited for, when the queue is full, the policy does not promote the region,
// the cache is full, or a write raced with the fill.

// fillReq is one queued fill.
type fillReq struct {
	v     *Volume
	start uint64 // first sector
	buf   *[]byte
	n     int // bytes of *buf used
	seq   uint64
}

// fillQueueLen bounds the fills waiting for a filler.
const fillQueueLen = 64

var promoteSeed = maphash.MakeSeed()

// fill queues a copy of p (sectors from start, read from the backing store after
// the stripes had sequence sum seq) to be inserted into the cache.
func (v *Volume) fill(p []byte, start uint64, seq uint64) {
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
		bp := alignedPool.Get().(*[]byte)
		copy(*bp, p[:n])
		select {
		case c.fills <- fillReq{v: v, start: start, buf: bp, n: n, seq: seq}:
		default:
			alignedPool.Put(bp)
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
	for {
		select {
		case <-c.closed:
			return
		case r := <-c.fills:
			c.doFill(r)
			alignedPool.Put(r.buf)
		}
	}
}

func (c *CacheSet) doFill(r fillReq) {
	v := r.v
	v.io.RLock()
	defer v.io.RUnlock()
	if v.closed {
		return
	}
	sectors := uint64(r.n) / sectorSize
	end := r.start + sectors
	if v.stripes.seqSum(r.start, end) != r.seq {
		c.stats.fillRaces.Add(1)
		return
	}
	exts, err := c.reserve(&c.wpClean, sectors)
	if err != nil {
		return
	}
	defer c.releaseExtents(exts)
	p := (*r.buf)[:r.n]
	pos := r.start
	keys := make([]bkey.Key, 0, len(exts))
	for _, e := range exts {
		buf := p[(pos-r.start)*sectorSize : (pos-r.start+uint64(e.n))*sectorSize]
		if err := c.devWrite(buf, c.dataOffset(e.ptr, 0)); err != nil {
			v.stats.cacheErrors.Add(1)
			c.logf("engine: cache write of a fill failed: %v", err)
			return
		}
		if err := c.alloc.MarkData(e.ptr.Bucket, int(e.n), false); err != nil {
			c.setErr(err)
			return
		}
		keys = append(keys, bkey.Key{Vol: v.id, Start: pos, Len: e.n, Ptr: e.ptr})
		pos += uint64(e.n)
	}
	locked := v.stripes.lockQuiet(r.start, end)
	defer v.stripes.unlockQuiet(locked)
	if v.stripes.seqSum(r.start, end) != r.seq || end*sectorSize > v.size.Load() {
		c.stats.fillRaces.Add(1)
		return
	}
	for _, k := range keys {
		if _, err := c.ReplaceKey(k, nil); err != nil {
			c.logf("engine: insert of a fill failed: %v", err)
			return
		}
	}
	c.stats.fills.Add(1)
}
