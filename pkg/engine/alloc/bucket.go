package alloc

import "fmt"

// Gen returns bucket b's current generation. b must be < NBuckets. It takes no lock.
func (a *Allocator) Gen(b uint32) uint32 { return a.gens[b].Load() }

// IsStale reports whether a pointer (b, gen) no longer names live data: its bucket
// was invalidated (or freed and reused) since the pointer was made, or b is out of
// range. It takes no lock; the read path calls it again after reading the cache
// device, so that a bucket reused under the read counts as a miss.
func (a *Allocator) IsStale(b, gen uint32) bool {
	return b >= a.nbuckets || a.gens[b].Load() != gen
}

// NBuckets returns the number of buckets.
func (a *Allocator) NBuckets() uint32 { return a.nbuckets }

// Load claims bucket b at open time, with the kind and usage the engine found in
// the btree (or its metadata). It is allowed only before the first refill; every
// bucket not loaded is treated as dead and gets a gen bump before its first use.
func (a *Allocator) Load(b uint32, kind Kind, live, dirty int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if b >= a.nbuckets {
		return fmt.Errorf("%w %d: out of range", ErrBadBucket, b)
	}
	if a.sealed {
		return fmt.Errorf("%w %d: Load after allocation started", ErrBadBucket, b)
	}
	if kind == KindFree || kind >= numKinds {
		return fmt.Errorf("%w %d: Load as %s", ErrBadBucket, b, kind)
	}
	if err := a.checkUsage(b, live, dirty); err != nil {
		return err
	}
	bk := &a.buckets[b]
	if bk.state != stateFreed {
		return fmt.Errorf("%w %d: loaded twice", ErrBadBucket, b)
	}
	bk.state = stateInUse
	bk.kind = kind
	a.nKind[kind]++
	if kind == KindData {
		a.policy.Add(b)
	}
	a.setUsageLocked(b, uint32(live), uint32(dirty))
	return nil
}

// MarkData records a write of sectors sectors into data bucket b (dirty in
// writeback mode), which the writer holds open. It does not count as an access for the Policy: every write goes
// to a freshly allocated bucket, which the Policy saw as Add.
func (a *Allocator) MarkData(b uint32, sectors int, dirty bool) error {
	d := 0
	if dirty {
		d = sectors
	}
	return a.addSectors(b, 0, false, sectors, d, true)
}

// AddSectors adjusts bucket b's usage: delta live sectors and dirtyDelta dirty
// sectors (an overwrite makes older extents dead; writeback completion cleans
// them). A clean, closed data bucket becomes an invalidation candidate.
//
// A clean, closed data bucket may be invalidated and reused at any time: use
// AddSectorsGen unless b is known to be open, dirty, or a btree or meta bucket.
func (a *Allocator) AddSectors(b uint32, delta, dirtyDelta int) error {
	return a.addSectors(b, 0, false, delta, dirtyDelta, false)
}

// AddSectorsGen is AddSectors for the data that pointer (b, gen) named: it returns
// ErrStale, and changes nothing, if the bucket was invalidated since.
func (a *Allocator) AddSectorsGen(b, gen uint32, delta, dirtyDelta int) error {
	return a.addSectors(b, gen, true, delta, dirtyDelta, false)
}

func (a *Allocator) addSectors(b, gen uint32, checkGen bool, delta, dirtyDelta int, dataOnly bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	bk, err := a.inUseLocked(b, gen, checkGen)
	if err != nil {
		return err
	}
	if dataOnly && bk.kind != KindData {
		return fmt.Errorf("%w %d: data written into a %s bucket", ErrBadBucket, b, bk.kind)
	}
	live, dirty := int(bk.live)+delta, int(bk.dirty)+dirtyDelta
	if err := a.checkUsage(b, live, dirty); err != nil {
		return err
	}
	a.setUsageLocked(b, uint32(live), uint32(dirty))
	return nil
}

// SetUsage replaces bucket b's usage, as GC recomputed it from the btree. A bucket
// GC found empty stays allocated until GC calls Free. See AddSectors for when to
// use SetUsageGen instead.
func (a *Allocator) SetUsage(b uint32, live, dirty int) error {
	return a.setUsage(b, 0, false, live, dirty)
}

// SetUsageGen is SetUsage for bucket b as GC saw it at generation gen: it returns
// ErrStale, and changes nothing, if the bucket was invalidated since.
func (a *Allocator) SetUsageGen(b, gen uint32, live, dirty int) error {
	return a.setUsage(b, gen, true, live, dirty)
}

func (a *Allocator) setUsage(b, gen uint32, checkGen bool, live, dirty int) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, err := a.inUseLocked(b, gen, checkGen); err != nil {
		return err
	}
	if err := a.checkUsage(b, live, dirty); err != nil {
		return err
	}
	a.setUsageLocked(b, uint32(live), uint32(dirty))
	return nil
}

// Open pins in-use bucket b: it is not invalidated until the matching Release.
// Alloc returns buckets already open once.
func (a *Allocator) Open(b uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	bk, err := a.inUseLocked(b, 0, false)
	if err != nil {
		return err
	}
	if bk.pin == 0 {
		a.nOpen++
	}
	bk.pin++
	return nil
}

// Release drops one pin of bucket b (from Alloc or Open).
func (a *Allocator) Release(b uint32) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	bk, err := a.inUseLocked(b, 0, false)
	if err != nil {
		return err
	}
	if bk.pin == 0 {
		return fmt.Errorf("%w %d: release of a bucket that is not open", ErrBadBucket, b)
	}
	bk.pin--
	if bk.pin == 0 {
		a.nOpen--
		a.becameEligibleLocked(b)
	}
	return nil
}

// Touch tells the Policy that data bucket b was accessed (a read hit). Touching
// any other bucket is a no-op.
func (a *Allocator) Touch(b uint32) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if b < a.nbuckets && a.buckets[b].state == stateInUse && a.buckets[b].kind == KindData {
		a.policy.Touch(b)
	}
}

// Promote asks the Policy whether a cache miss on key (the data path's hash of a
// volume region) should be filled into the cache. Policies that do not implement
// Promoter always promote.
func (a *Allocator) Promote(key uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.policy.(Promoter); ok {
		return p.Promote(key)
	}
	return true
}

// inUseLocked returns in-use bucket b, or a misuse error, or ErrStale if checkGen
// and b's gen is no longer gen.
func (a *Allocator) inUseLocked(b, gen uint32, checkGen bool) (*bucket, error) {
	if b >= a.nbuckets {
		return nil, fmt.Errorf("%w %d: out of range", ErrBadBucket, b)
	}
	if checkGen && a.gens[b].Load() != gen {
		return nil, ErrStale
	}
	bk := &a.buckets[b]
	if bk.state != stateInUse {
		return nil, fmt.Errorf("%w %d: not allocated", ErrBadBucket, b)
	}
	return bk, nil
}

// checkUsage validates 0 <= dirty <= live <= BucketSectors.
func (a *Allocator) checkUsage(b uint32, live, dirty int) error {
	if live < 0 || dirty < 0 || dirty > live || int64(live) > int64(a.bucketSectors) {
		return fmt.Errorf("%w %d: usage live %d dirty %d out of range (bucket %d sectors)",
			ErrBadBucket, b, live, dirty, a.bucketSectors)
	}
	return nil
}

// setUsageLocked sets bucket b's usage and keeps the totals.
func (a *Allocator) setUsageLocked(b uint32, live, dirty uint32) {
	bk := &a.buckets[b]
	a.liveSectors += int64(live) - int64(bk.live)
	a.dirtySectors += int64(dirty) - int64(bk.dirty)
	wasDirty := bk.dirty > 0
	if wasDirty != (dirty > 0) {
		if wasDirty {
			a.nDirty--
		} else {
			a.nDirty++
		}
	}
	bk.live, bk.dirty = live, dirty
	if wasDirty && dirty == 0 {
		a.becameEligibleLocked(b)
	}
}

// becameEligibleLocked wakes the allocator goroutine if b just became an
// invalidation candidate and someone needs buckets.
func (a *Allocator) becameEligibleLocked(b uint32) {
	if a.eligibleLocked(b) && (a.waiters > 0 || a.freeCountLocked() < a.low) {
		a.wakeAllocator()
	}
}

// eligibleLocked reports whether b may be invalidated: a clean, closed data bucket.
func (a *Allocator) eligibleLocked(b uint32) bool {
	if b >= a.nbuckets {
		return false
	}
	bk := &a.buckets[b]
	return bk.state == stateInUse && bk.kind == KindData && bk.dirty == 0 && bk.pin == 0
}
