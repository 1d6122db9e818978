package alloc

import (
	"fmt"

	"github.com/csi-cache/csi-cache/pkg/engine/invariants"
)

// Start starts the allocator goroutine, which fills the free lists up to the high
// watermark now and again whenever it is woken. It is a no-op after Close or a
// second Start.
func (a *Allocator) Start() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.started || a.closed {
		return
	}
	a.started = true
	go a.run()
}

// Close stops the allocator goroutine, waiting for a PersistGens call in flight to
// return, and fails every waiting and later Alloc with ErrClosed. The gens of
// buckets already on the free lists are durable; nothing is lost. Close is
// idempotent.
func (a *Allocator) Close() error {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		<-a.done
		return nil
	}
	a.closed = true
	started := a.started
	a.cond.Broadcast()
	a.mu.Unlock()
	close(a.closing)
	if started {
		<-a.done
	} else {
		close(a.done)
	}
	return nil
}

// run is the allocator goroutine: refill, then sleep until woken or closed. It
// never waits for a bucket (see the package comment).
func (a *Allocator) run() {
	defer close(a.done)
	for {
		a.refill()
		select {
		case <-a.wake:
		case <-a.closing:
			return
		}
	}
}

// refill invalidates buckets in batches until the free lists hold HighWater
// buckets, no candidate is left, or an error.
func (a *Allocator) refill() {
	for {
		n, err := a.invalidate(0)
		if err != nil || n == 0 {
			return
		}
	}
}

// invalidate runs one batch: it takes up to limit buckets (0: as many as it takes
// to reach the high watermark, at most MaxBatch) — explicitly freed buckets first,
// then clean data buckets the Policy names — bumps their gens, persists them with
// one PersistGens call without holding mu, and publishes them on the free lists.
// It returns the number of buckets published.
func (a *Allocator) invalidate(limit int) (int, error) {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return 0, ErrClosed
	}
	if a.err != nil {
		a.mu.Unlock()
		return 0, a.err
	}
	a.sealLocked()
	if limit <= 0 {
		limit = min(a.maxBatch, a.high-a.freeCountLocked())
	}
	batch := a.pickLocked(limit)
	a.mu.Unlock()
	if len(batch) == 0 {
		return 0, nil
	}

	err := a.store.PersistGens(batch) // device I/O: mu not held

	a.mu.Lock()
	defer a.mu.Unlock()
	a.stats.persistCalls++
	if err != nil {
		// The batch stays "invalidating" for good: its gens are bumped in memory
		// but may not be on disk, so those buckets must never be written.
		a.err = fmt.Errorf("alloc: persist gens: %w", err)
		if a.logf != nil {
			a.logf("%v; allocation stopped", a.err)
		}
		a.cond.Broadcast()
		return 0, a.err
	}
	a.stats.persistedGens += uint64(len(batch))
	a.publishLocked(batch)
	if invariants.Enabled {
		if err := a.checkLocked(); err != nil {
			panic(err)
		}
	}
	return len(batch), nil
}

// sealLocked ends the Load phase: every bucket not loaded joins the freed queue.
func (a *Allocator) sealLocked() {
	if a.sealed {
		return
	}
	a.sealed = true
	for b := range a.buckets {
		if a.buckets[b].state == stateFreed {
			a.freed.push(uint32(b))
		}
	}
}

// pickLocked chooses up to limit buckets and bumps their gens in memory; they stay
// "invalidating" until publishLocked.
func (a *Allocator) pickLocked(limit int) []GenChange {
	if limit <= 0 {
		return nil
	}
	batch := make([]GenChange, 0, min(limit, a.freed.len()+a.nKind[KindData]))
	for len(batch) < limit {
		b, ok := a.freed.pop()
		if !ok {
			break
		}
		batch = append(batch, a.bumpLocked(b))
	}
	if len(batch) < limit && a.nKind[KindData] > 0 {
		for _, b := range a.policy.Victims(limit-len(batch), a.eligible) {
			if len(batch) == limit {
				break
			}
			if !a.eligibleLocked(b) { // a Policy bug or a duplicate: never trust it
				continue
			}
			a.retireLocked(b)
			a.stats.evictions++
			batch = append(batch, a.bumpLocked(b))
		}
	}
	return batch
}

// bumpLocked bumps dead bucket b's gen, making every pointer into it stale.
func (a *Allocator) bumpLocked(b uint32) GenChange {
	a.buckets[b].state = stateInvalidating
	a.nInvalidating++
	a.stats.invalidations++
	g := a.gens[b].Add(1)
	return GenChange{Bucket: b, Gen: g}
}

// publishLocked puts buckets with durable gens on the free lists: the reserves
// first (meta, btree, moving GC), then the general list. No list is ever full for
// them: the general list has room for every bucket.
func (a *Allocator) publishLocked(batch []GenChange) {
	for _, c := range batch {
		bk := &a.buckets[c.Bucket]
		bk.state = stateFree
		a.nInvalidating--
		bk.list = ReserveNone
		for _, r := range [...]Reserve{ReserveMeta, ReserveBtree, ReserveMovingGC} {
			if a.free[r].push(c.Bucket) {
				bk.list = r
				break
			}
		}
		if bk.list == ReserveNone {
			a.free[ReserveNone].push(c.Bucket)
		}
	}
	a.cond.Broadcast()
}
