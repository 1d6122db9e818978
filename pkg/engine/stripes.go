package engine

import (
	"math/bits"
	"sync"
	"sync/atomic"
)

// Stripe locks order the IO of one volume that changes what a range holds.
//
// A volume's LBA space is cut into regions of 64 KiB, mapped round-robin onto
// nStripes stripes. A write takes the stripes of its range (in index order, so
// two ranges never deadlock) from before it touches a device until its btree
// insert returned; so overlapping writes insert in the order they wrote, which
// the btree's overwrite rule needs. Every lock bumps the stripe's sequence
// number.
//
// The lock is held across device IO, so unrelated writes that share a stripe
// wait for each other: regions are small and stripes many (random 4 KiB writes
// by 32 writers over a 64 MiB volume collide about 3% of the time, against
// about half with 1 MiB regions on 256 stripes). A range of n regions
// takes min(n, nStripes) stripes.
//
// Reads take no stripe lock. A cache fill (a read miss copied into the cache)
// reads the sequence numbers before reading the backing store and inserts only
// if they have not moved since, under the stripe locks: a write that raced with
// the fill, whatever it did to the cache and the backing store, makes the fill
// give up instead of caching data older than the write (bcache's check key).
//
// Writeback holds the stripes of an extent while it writes the extent to the
// backing store, so that a newer write that goes to the backing store directly
// (writethrough, bypass, trim) is never overwritten by older dirty data.
type stripes struct {
	s [nStripes]stripe
}

// stripe is 16 bytes, 16 KiB of stripes per volume: neighbouring stripes share
// cache lines, which costs little as they are neighbouring regions, rarely
// written at once by different CPUs.
type stripe struct {
	mu  sync.Mutex
	seq atomic.Uint64
}

const (
	nStripes     = 1024
	stripeShift  = 7 // sectors per region: 2^7 * 512 = 64 KiB
	stripeWords  = nStripes / 64
	maxLockSpans = nStripes // a range covering nStripes regions takes them all
)

// stripeSet is a set of stripe indices.
type stripeSet [stripeWords]uint64

func stripesOf(start, end uint64) stripeSet {
	var set stripeSet
	first, last := start>>stripeShift, (end-1)>>stripeShift
	if last-first+1 >= maxLockSpans {
		for i := range set {
			set[i] = ^uint64(0)
		}
		return set
	}
	for r := first; r <= last; r++ {
		i := r % nStripes
		set[i/64] |= 1 << (i % 64)
	}
	return set
}

func (set *stripeSet) each(fn func(i int)) {
	for w, word := range set {
		for word != 0 {
			b := bits.TrailingZeros64(word)
			word &^= 1 << b
			fn(w*64 + b)
		}
	}
}

// lock takes the stripes of sectors [start, end) and bumps their sequence
// numbers; unlock with unlock.
func (st *stripes) lock(start, end uint64) stripeSet {
	set := stripesOf(start, end)
	set.each(func(i int) {
		st.s[i].mu.Lock()
		st.s[i].seq.Add(1)
	})
	return set
}

// lockQuiet takes the stripes without bumping their sequence numbers (a fill's
// own check must not invalidate another fill); unlock with unlockQuiet.
func (st *stripes) lockQuiet(start, end uint64) stripeSet {
	set := stripesOf(start, end)
	set.each(func(i int) { st.s[i].mu.Lock() })
	return set
}

// unlock bumps the sequence numbers again and unlocks: a fill that read the
// sequence numbers while the write was in progress sees them move either way.
func (st *stripes) unlock(set stripeSet) {
	set.each(func(i int) {
		st.s[i].seq.Add(1)
		st.s[i].mu.Unlock()
	})
}

func (st *stripes) unlockQuiet(set stripeSet) {
	set.each(func(i int) { st.s[i].mu.Unlock() })
}

// seqSum is the sum of the sequence numbers of the stripes of [start, end): it
// changes whenever one of them is locked for a write.
func (st *stripes) seqSum(start, end uint64) uint64 {
	set := stripesOf(start, end)
	var sum uint64
	set.each(func(i int) { sum += st.s[i].seq.Load() })
	return sum
}

// seqDetector is the sequential cutoff: it tracks the most recent IO streams of
// a volume and reports how long the stream an IO continues is (bcache tracks the
// same per task; a block device sees no tasks, so streams are matched by
// position).
type seqDetector struct {
	mu      sync.Mutex
	streams [16]seqStream
	next    int
}

type seqStream struct {
	end   uint64 // sector after the stream's last IO
	bytes uint64
}

// observe records an IO of n sectors at start and returns the length in bytes of
// the stream it belongs to.
func (d *seqDetector) observe(start, n uint64) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	for i := range d.streams {
		s := &d.streams[i]
		if s.bytes != 0 && s.end == start {
			s.end += n
			s.bytes += n * 512
			return s.bytes
		}
	}
	d.streams[d.next] = seqStream{end: start + n, bytes: n * 512}
	d.next = (d.next + 1) % len(d.streams)
	return n * 512
}
