package alloc

// BucketUsage is one bucket's state as the allocator sees it.
type BucketUsage struct {
	Kind  Kind // KindFree unless InUse
	InUse bool // handed out or loaded
	Open  bool // pinned by a writer (Alloc, Open)
	Live  int  // sectors
	Dirty int  // sectors
}

// Usage returns bucket b's state (the zero value for b out of range). GC uses it
// to find in-use data buckets the btree no longer references.
func (a *Allocator) Usage(b uint32) BucketUsage {
	a.mu.Lock()
	defer a.mu.Unlock()
	if b >= a.nbuckets {
		return BucketUsage{}
	}
	bk := &a.buckets[b]
	if bk.state != stateInUse {
		return BucketUsage{}
	}
	return BucketUsage{Kind: bk.kind, InUse: true, Open: bk.pin > 0, Live: int(bk.live), Dirty: int(bk.dirty)}
}

// Kick wakes the allocator goroutine to refill the free lists now (after GC
// freed buckets).
func (a *Allocator) Kick() { a.wakeAllocator() }
