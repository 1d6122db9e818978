package alloc

import (
	"errors"
	"fmt"
	"time"
)

// Stats is a snapshot of the allocator's state and counters.
type Stats struct {
	Buckets       int
	Free          int              // buckets on all free lists
	FreeByReserve [NumReserves]int // indexed by Reserve
	Pending       int              // dead buckets waiting for (or in) a gen bump
	Data          int              // in-use buckets by kind
	Btree         int
	Meta          int
	Dirty         int // buckets with dirty sectors
	Open          int // buckets with a pin
	LiveSectors   int64
	DirtySectors  int64

	Allocations   uint64        // successful Allocs
	Failures      uint64        // Allocs that returned ErrNoBuckets
	Waits         uint64        // Allocs that had to wait
	WaitTime      time.Duration // total time Allocs spent waiting
	Invalidations uint64        // gen bumps
	Evictions     uint64        // of which data buckets chosen by the Policy
	PersistCalls  uint64        // PersistGens calls
	PersistedGens uint64        // gens made durable by successful calls
}

// Stats returns a snapshot of the allocator's state and counters.
func (a *Allocator) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Stats{
		Buckets:       int(a.nbuckets),
		Free:          a.freeCountLocked(),
		Data:          a.nKind[KindData],
		Btree:         a.nKind[KindBtree],
		Meta:          a.nKind[KindMeta],
		Dirty:         a.nDirty,
		Open:          a.nOpen,
		LiveSectors:   a.liveSectors,
		DirtySectors:  a.dirtySectors,
		Allocations:   a.stats.allocs,
		Failures:      a.stats.failures,
		Waits:         a.stats.waits,
		WaitTime:      a.stats.waitTime,
		Invalidations: a.stats.invalidations,
		Evictions:     a.stats.evictions,
		PersistCalls:  a.stats.persistCalls,
		PersistedGens: a.stats.persistedGens,
	}
	for r := range a.free {
		s.FreeByReserve[r] = a.free[r].len()
	}
	s.Pending = int(a.nbuckets) - s.Free - s.Data - s.Btree - s.Meta
	return s
}

// policyChecker is implemented by the policies of this package.
type policyChecker interface {
	Len() int
	check() error
}

// Kinds returns what every bucket holds, indexed by bucket: its kind while it is
// in use, KindFree otherwise (free, dead, or being invalidated). It is one
// snapshot, for consistency checks that compare the allocator with the btree.
func (a *Allocator) Kinds() []Kind {
	a.mu.Lock()
	defer a.mu.Unlock()
	kinds := make([]Kind, a.nbuckets)
	for b := range a.buckets {
		if a.buckets[b].state == stateInUse {
			kinds[b] = a.buckets[b].kind
		}
	}
	return kinds
}

// Check verifies the allocator's invariants: every bucket is in exactly one place
// (one free list, the freed queue, a batch being invalidated, or in use), free and
// dead buckets have no sectors and no pins, usage is within bounds, the totals match
// the buckets, and the Policy holds exactly the data buckets. Tests call it after
// every step; it is O(NBuckets).
func (a *Allocator) Check() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.checkLocked()
}

func (a *Allocator) checkLocked() error {
	var errs []error
	fail := func(format string, args ...any) {
		if len(errs) < 10 {
			errs = append(errs, fmt.Errorf("alloc: check: "+format, args...))
		}
	}
	n := int(a.nbuckets)
	seen := make([]uint8, n) // times b was found on a list or queue
	for r := range a.free {
		if Reserve(r) != ReserveNone && a.free[r].len() > a.reserve[r] {
			fail("free list %s holds %d > reserve %d", Reserve(r), a.free[r].len(), a.reserve[r])
		}
		a.free[r].each(func(b uint32) {
			seen[b]++
			if bk := &a.buckets[b]; bk.state != stateFree || bk.list != Reserve(r) {
				fail("bucket %d on free list %s has state %d list %s", b, Reserve(r), bk.state, bk.list)
			}
		})
	}
	a.freed.each(func(b uint32) {
		seen[b]++
		if a.buckets[b].state != stateFreed {
			fail("bucket %d on the freed queue has state %d", b, a.buckets[b].state)
		}
	})
	var (
		byState      [4]int
		byKind       [numKinds]int
		dirty, open  int
		live, dsects int64
	)
	for i := range a.buckets {
		b, bk := uint32(i), &a.buckets[i]
		if seen[b] > 1 {
			fail("bucket %d is on %d lists", b, seen[b])
		}
		byState[bk.state]++
		onList := bk.state == stateFree || (bk.state == stateFreed && a.sealed)
		if onList != (seen[b] == 1) {
			fail("bucket %d in state %d: on a list %v", b, bk.state, seen[b] == 1)
		}
		if bk.state != stateInUse {
			if bk.kind != KindFree || bk.live != 0 || bk.dirty != 0 || bk.pin != 0 {
				fail("dead bucket %d: kind %s live %d dirty %d pin %d", b, bk.kind, bk.live, bk.dirty, bk.pin)
			}
			continue
		}
		if bk.kind == KindFree || bk.kind >= numKinds {
			fail("in-use bucket %d has kind %s", b, bk.kind)
			continue
		}
		if bk.dirty > bk.live || bk.live > a.bucketSectors {
			fail("bucket %d: live %d dirty %d (bucket %d sectors)", b, bk.live, bk.dirty, a.bucketSectors)
		}
		byKind[bk.kind]++
		live += int64(bk.live)
		dsects += int64(bk.dirty)
		if bk.dirty > 0 {
			dirty++
		}
		if bk.pin > 0 {
			open++
		}
	}
	if byKind != a.nKind {
		fail("kind counts %v, kept %v", byKind, a.nKind)
	}
	if byState[stateInvalidating] != a.nInvalidating {
		fail("%d buckets invalidating, kept %d", byState[stateInvalidating], a.nInvalidating)
	}
	if byState[stateFree] != a.freeCountLocked() {
		fail("%d buckets free, lists hold %d", byState[stateFree], a.freeCountLocked())
	}
	if dirty != a.nDirty || open != a.nOpen || live != a.liveSectors || dsects != a.dirtySectors {
		fail("totals dirty %d open %d live %d dirty sectors %d, kept %d %d %d %d",
			dirty, open, live, dsects, a.nDirty, a.nOpen, a.liveSectors, a.dirtySectors)
	}
	if pc, ok := a.policy.(policyChecker); ok {
		if err := pc.check(); err != nil {
			errs = append(errs, err)
		}
		if pc.Len() != a.nKind[KindData] {
			fail("policy has %d members, %d data buckets", pc.Len(), a.nKind[KindData])
		}
	}
	return errors.Join(errs...)
}
