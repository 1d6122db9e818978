package sim

import "container/heap"

// never is the next use of a block that is not accessed again.
const never = int(^uint(0) >> 1)

// OPT replays trace through Belady's optimal cache of capacity blocks (MIN):
// on a miss with a full cache it drops, among the cached blocks and the missed
// one, the block whose next access is farthest away. Keeping the missed block
// is optional, as it is for the engine (a fill may be skipped), so this is the
// optimum of a cache that may bypass, which can beat demand-paging MIN (that
// must keep every missed block until the next miss). No cache of that capacity
// has more hits. It counts the hits of accesses from index from on.
func OPT(trace []uint64, capacity, from int) Result {
	var res Result
	if capacity <= 0 {
		for i := range trace {
			res.count(i, from, false)
		}
		return res
	}
	// nextUse[i]: index of the next access to trace[i] after i.
	nextUse := make([]int, len(trace))
	last := make(map[uint64]int)
	for i := len(trace) - 1; i >= 0; i-- {
		if j, ok := last[trace[i]]; ok {
			nextUse[i] = j
		} else {
			nextUse[i] = never
		}
		last[trace[i]] = i
	}
	// cached maps a block to its current next use; the heap holds (next use,
	// block) entries, of which those not matching cached are stale.
	cached := make(map[uint64]int, capacity)
	h := &useHeap{}
	for i, b := range trace {
		nu := nextUse[i]
		if _, ok := cached[b]; ok {
			res.count(i, from, true)
			cached[b] = nu
			heap.Push(h, useEntry{next: nu, block: b})
			continue
		}
		res.count(i, from, false)
		if len(cached) < capacity {
			cached[b] = nu
			heap.Push(h, useEntry{next: nu, block: b})
			continue
		}
		// The farthest cached block (skipping stale entries).
		for {
			top := (*h)[0]
			if cur, ok := cached[top.block]; ok && cur == top.next {
				break
			}
			heap.Pop(h)
		}
		if top := (*h)[0]; top.next > nu {
			heap.Pop(h)
			delete(cached, top.block)
			cached[b] = nu
			heap.Push(h, useEntry{next: nu, block: b})
		}
		// Else the missed block is the one not worth keeping.
		if h.Len() > 4*capacity {
			h.compact(cached)
		}
	}
	return res
}

type useEntry struct {
	next  int
	block uint64
}

// useHeap is a max-heap on next use.
type useHeap []useEntry

func (h useHeap) Len() int           { return len(h) }
func (h useHeap) Less(i, j int) bool { return h[i].next > h[j].next }
func (h useHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *useHeap) Push(x any)        { *h = append(*h, x.(useEntry)) }
func (h *useHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// compact drops the stale entries.
func (h *useHeap) compact(cached map[uint64]int) {
	out := (*h)[:0]
	for _, e := range *h {
		if cur, ok := cached[e.block]; ok && cur == e.next {
			out = append(out, e)
		}
	}
	*h = out
	heap.Init(h)
}
