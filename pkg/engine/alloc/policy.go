package alloc

import "fmt"

// Policy is a replacement policy: it orders the data buckets and names the ones to
// invalidate when the free lists run low. The Allocator calls it with its mutex
// held, so implementations need no locking of their own and must not call back
// into the Allocator.
//
// Members are exactly the in-use data buckets: Add when a bucket becomes a data
// bucket (allocated for data, or loaded at open time), Remove when it stops being
// one (freed or invalidated). Touch is a read hit on a member.
type Policy interface {
	Add(b uint32)
	Touch(b uint32)
	Remove(b uint32)
	// Victims returns up to n members for which eligible returns true, best
	// victim first. It does not remove them: the Allocator calls Remove for each
	// one it invalidates.
	Victims(n int, eligible func(b uint32) bool) []uint32
}

// Promoter is implemented by policies that also gate cache fills: the data path
// asks, through Allocator.Promote, whether a miss on key is worth caching.
type Promoter interface {
	Promote(key uint64) bool
}

// links is a set of intrusive doubly linked lists over bucket indices: no
// allocation per operation and 8 bytes per bucket. Index nbuckets+i is the
// sentinel of list i; next goes from most to least recently used.
type links struct {
	prev, next []uint32
	n          uint32 // nbuckets: indices >= n are sentinels
	lens       []int
}

func newLinks(nbuckets uint32, nlists int) links {
	l := links{
		prev: make([]uint32, int(nbuckets)+nlists),
		next: make([]uint32, int(nbuckets)+nlists),
		n:    nbuckets,
		lens: make([]int, nlists),
	}
	for i := 0; i < nlists; i++ {
		s := nbuckets + uint32(i)
		l.prev[s], l.next[s] = s, s
	}
	return l
}

// pushFront makes b the most recently used entry of list i.
func (l *links) pushFront(i int, b uint32) {
	s := l.n + uint32(i)
	first := l.next[s]
	l.next[s], l.prev[b] = b, s
	l.next[b], l.prev[first] = first, b
	l.lens[i]++
}

// remove unlinks b from list i.
func (l *links) remove(i int, b uint32) {
	p, nx := l.prev[b], l.next[b]
	l.next[p], l.prev[nx] = nx, p
	l.lens[i]--
}

// back returns the least recently used entry of list i.
func (l *links) back(i int) (uint32, bool) {
	s := l.n + uint32(i)
	if b := l.prev[s]; b != s {
		return b, true
	}
	return 0, false
}

// collect appends to out up to n entries of list i, least recently used first,
// for which eligible returns true.
func (l *links) collect(i int, n int, eligible func(uint32) bool, out []uint32) []uint32 {
	s := l.n + uint32(i)
	for b := l.prev[s]; b != s && n > 0; b = l.prev[b] {
		if eligible(b) {
			out = append(out, b)
			n--
		}
	}
	return out
}

// order returns list i least recently used first.
func (l *links) order(i int) []uint32 {
	return l.collect(i, l.lens[i], func(uint32) bool { return true }, nil)
}

// check verifies list i: the links are symmetric and the length matches.
func (l *links) check(i int, member func(uint32) bool) error {
	s := l.n + uint32(i)
	n := 0
	for b := l.next[s]; b != s; b = l.next[b] {
		if b >= l.n || l.prev[l.next[b]] != b || l.next[l.prev[b]] != b {
			return fmt.Errorf("alloc: policy list %d: broken link at %d", i, b)
		}
		if !member(b) {
			return fmt.Errorf("alloc: policy list %d: bucket %d is on the wrong list", i, b)
		}
		if n++; n > l.lens[i] {
			return fmt.Errorf("alloc: policy list %d: longer than %d", i, l.lens[i])
		}
	}
	if n != l.lens[i] {
		return fmt.Errorf("alloc: policy list %d: %d entries, length says %d", i, n, l.lens[i])
	}
	return nil
}

// LRU is the default Policy: the least recently added or touched bucket goes first.
type LRU struct {
	l  links
	in []bool // in[b]: b is a member
}

// NewLRU returns an LRU policy for nbuckets buckets.
func NewLRU(nbuckets uint32) *LRU {
	return &LRU{l: newLinks(nbuckets, 1), in: make([]bool, nbuckets)}
}

func (p *LRU) Add(b uint32) {
	if !p.in[b] {
		p.in[b] = true
		p.l.pushFront(0, b)
	}
}

func (p *LRU) Touch(b uint32) {
	if p.in[b] {
		p.l.remove(0, b)
		p.l.pushFront(0, b)
	}
}

func (p *LRU) Remove(b uint32) {
	if p.in[b] {
		p.in[b] = false
		p.l.remove(0, b)
	}
}

func (p *LRU) Victims(n int, eligible func(uint32) bool) []uint32 {
	return p.l.collect(0, n, eligible, make([]uint32, 0, n))
}

// Len returns the number of members.
func (p *LRU) Len() int { return p.l.lens[0] }

// order returns the members, least recently used first.
func (p *LRU) order() []uint32 { return p.l.order(0) }

func (p *LRU) check() error {
	if err := p.l.check(0, func(b uint32) bool { return p.in[b] }); err != nil {
		return err
	}
	n := 0
	for _, in := range p.in {
		if in {
			n++
		}
	}
	if n != p.l.lens[0] {
		return fmt.Errorf("alloc: lru: %d members, list has %d", n, p.l.lens[0])
	}
	return nil
}
