package alloc

import (
	"fmt"
	"math/bits"
)

// SLRU is a segmented LRU, the core of 2Q and of dm-cache's SMQ policy.
//
// A bucket enters the probation segment when it is added (written). A read hit
// (Touch) on a probation bucket promotes it to the protected segment; a hit on a
// protected bucket moves it to the front of protected. The protected segment holds
// at most ProtectedPercent of the buckets: when a promotion overfills it, its least
// recently used bucket is demoted to the front of probation (it gets one more
// chance). Victims come from the back of probation first, then from the back of
// protected.
//
// So buckets that were read again after they were filled survive any number of
// buckets that are written once and never read (a backup, a large sequential
// copy): plain LRU lets such a scan flush the whole hot set.
//
// SLRU also implements Promoter with an n-hit filter: Promote(key) returns true
// only on the PromoteHits-th call for the same key while the key stays in a
// direct-mapped table of FilterSize slots (a colliding key takes the slot over and
// starts again from one). The data path passes a hash of the missed region (volume,
// LBA >> some shift), so a region is cached on its n-th miss, not on the first:
// one-off reads do not even get a bucket.
type SLRU struct {
	l       links   // list 0: probation, list 1: protected
	seg     []uint8 // seg[b]: segNone, segProbation or segProtected
	protMax int     // most buckets the protected segment may hold
	hits    uint32
	filter  []nhitSlot
	shift   uint // 64 - log2(len(filter))
}

const (
	segNone uint8 = iota
	segProbation
	segProtected
)

const (
	listProbation = 0
	listProtected = 1
)

type nhitSlot struct {
	key  uint64
	hits uint32 // 0: empty
}

// SLRUConfig configures an SLRU policy. The zero value is usable.
type SLRUConfig struct {
	// ProtectedPercent bounds the protected segment as a percentage of all
	// buckets, 1..99; 0 means 80.
	ProtectedPercent int
	// PromoteHits is the number of misses on a key before Promote returns true;
	// 0 or 1 means every miss is promoted (the filter is off).
	PromoteHits int
	// FilterSize is the number of slots of the n-hit filter, rounded up to a
	// power of two; 0 means 4096.
	FilterSize int
}

// NewSLRU returns a segmented LRU policy for nbuckets buckets.
func NewSLRU(nbuckets uint32, cfg SLRUConfig) (*SLRU, error) {
	if cfg.ProtectedPercent == 0 {
		cfg.ProtectedPercent = 80
	}
	if cfg.ProtectedPercent < 1 || cfg.ProtectedPercent > 99 {
		return nil, fmt.Errorf("alloc: slru: protected percent %d not in 1..99", cfg.ProtectedPercent)
	}
	if cfg.PromoteHits < 0 || cfg.FilterSize < 0 || cfg.FilterSize > 1<<24 {
		return nil, fmt.Errorf("alloc: slru: bad n-hit filter (hits %d, size %d)", cfg.PromoteHits, cfg.FilterSize)
	}
	if cfg.FilterSize == 0 {
		cfg.FilterSize = 4096
	}
	logSize := bits.Len(uint(cfg.FilterSize - 1))
	p := &SLRU{
		l:       newLinks(nbuckets, 2),
		seg:     make([]uint8, nbuckets),
		protMax: max(1, int(nbuckets)*cfg.ProtectedPercent/100),
		hits:    uint32(cfg.PromoteHits),
	}
	if p.hits > 1 {
		p.filter = make([]nhitSlot, 1<<logSize)
		p.shift = uint(64 - logSize)
	}
	return p, nil
}

func (p *SLRU) Add(b uint32) {
	if p.seg[b] == segNone {
		p.seg[b] = segProbation
		p.l.pushFront(listProbation, b)
	}
}

func (p *SLRU) Touch(b uint32) {
	switch p.seg[b] {
	case segProbation:
		p.l.remove(listProbation, b)
		p.seg[b] = segProtected
		p.l.pushFront(listProtected, b)
		p.demote()
	case segProtected:
		p.l.remove(listProtected, b)
		p.l.pushFront(listProtected, b)
	}
}

// demote moves protected buckets back to probation while protected is over its
// share of the members.
func (p *SLRU) demote() {
	for p.l.lens[listProtected] > p.protMax {
		b, _ := p.l.back(listProtected)
		p.l.remove(listProtected, b)
		p.seg[b] = segProbation
		p.l.pushFront(listProbation, b)
	}
}

func (p *SLRU) Remove(b uint32) {
	switch p.seg[b] {
	case segProbation:
		p.l.remove(listProbation, b)
	case segProtected:
		p.l.remove(listProtected, b)
	}
	p.seg[b] = segNone
}

func (p *SLRU) Victims(n int, eligible func(uint32) bool) []uint32 {
	out := p.l.collect(listProbation, n, eligible, make([]uint32, 0, n))
	return p.l.collect(listProtected, n-len(out), eligible, out)
}

// Promote implements Promoter with the n-hit filter described on SLRU.
func (p *SLRU) Promote(key uint64) bool {
	if p.hits <= 1 {
		return true
	}
	s := &p.filter[(key*0x9e3779b97f4a7c15)>>p.shift]
	if s.hits > 0 && s.key == key {
		s.hits++
	} else {
		*s = nhitSlot{key: key, hits: 1}
	}
	if s.hits >= p.hits {
		s.hits = 0
		return true
	}
	return false
}

// Len returns the number of members.
func (p *SLRU) Len() int { return p.l.lens[listProbation] + p.l.lens[listProtected] }

// order returns probation then protected, each least recently used first.
func (p *SLRU) order() []uint32 {
	return append(p.l.order(listProbation), p.l.order(listProtected)...)
}

func (p *SLRU) check() error {
	if err := p.l.check(listProbation, func(b uint32) bool { return p.seg[b] == segProbation }); err != nil {
		return err
	}
	if err := p.l.check(listProtected, func(b uint32) bool { return p.seg[b] == segProtected }); err != nil {
		return err
	}
	n := 0
	for _, s := range p.seg {
		if s != segNone {
			n++
		}
	}
	if n != p.Len() {
		return fmt.Errorf("alloc: slru: %d members, lists have %d", n, p.Len())
	}
	return nil
}
