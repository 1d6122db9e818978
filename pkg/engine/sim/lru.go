package sim

// lruList is an intrusive doubly linked list over slot indices: the front is the
// most recently used slot.
type lruList struct {
	prev, next []int32
	head, tail int32 // -1 when empty
}

func newLRUList(n int) lruList {
	l := lruList{prev: make([]int32, n), next: make([]int32, n), head: -1, tail: -1}
	return l
}

func (l *lruList) pushFront(i int32) {
	l.prev[i], l.next[i] = -1, l.head
	if l.head >= 0 {
		l.prev[l.head] = i
	} else {
		l.tail = i
	}
	l.head = i
}

func (l *lruList) remove(i int32) {
	p, n := l.prev[i], l.next[i]
	if p >= 0 {
		l.next[p] = n
	} else {
		l.head = n
	}
	if n >= 0 {
		l.prev[n] = p
	} else {
		l.tail = p
	}
}

func (l *lruList) moveFront(i int32) {
	if l.head != i {
		l.remove(i)
		l.pushFront(i)
	}
}

// LRU replays trace through a block-granular LRU cache of capacity blocks and
// counts the hits of accesses from index from on.
func LRU(trace []uint64, capacity, from int) Result {
	var res Result
	if capacity <= 0 {
		for i := range trace {
			res.count(i, from, false)
		}
		return res
	}
	slotOf := make(map[uint64]int32, capacity)
	blockOf := make([]uint64, 0, capacity)
	l := newLRUList(capacity)
	for i, b := range trace {
		if s, ok := slotOf[b]; ok {
			res.count(i, from, true)
			l.moveFront(s)
			continue
		}
		res.count(i, from, false)
		var s int32
		if len(blockOf) < capacity {
			s = int32(len(blockOf))
			blockOf = append(blockOf, b)
		} else {
			s = l.tail
			l.remove(s)
			delete(slotOf, blockOf[s])
			blockOf[s] = b
		}
		slotOf[b] = s
		l.pushFront(s)
	}
	return res
}

// BucketLRU replays trace through a cache shaped like the engine's: buckets
// of blocksPerBucket blocks, missed blocks appended to the open bucket, and,
// when a new bucket is needed and all are in use, the least recently used one
// (by its last fill or hit) dropped whole. A bucket is closed when it is full,
// and may be dropped from then on (the engine's write point releases a full
// bucket before it opens the next). It counts the hits of accesses from index from on.
func BucketLRU(trace []uint64, buckets, blocksPerBucket, from int) Result {
	var res Result
	if buckets <= 0 || blocksPerBucket <= 0 {
		for i := range trace {
			res.count(i, from, false)
		}
		return res
	}
	bucketOf := make(map[uint64]int32)
	members := make([][]uint64, buckets) // blocks filled into each bucket
	l := newLRUList(buckets)
	used := 0         // buckets ever opened
	open := int32(-1) // the bucket taking fills
	for i, b := range trace {
		if s, ok := bucketOf[b]; ok {
			res.count(i, from, true)
			l.moveFront(s)
			continue
		}
		res.count(i, from, false)
		if open < 0 || len(members[open]) == blocksPerBucket {
			if used < buckets {
				open = int32(used)
				used++
			} else {
				victim := l.tail
				l.remove(victim)
				for _, m := range members[victim] {
					if bucketOf[m] == victim {
						delete(bucketOf, m)
					}
				}
				members[victim] = members[victim][:0]
				open = victim
			}
			l.pushFront(open)
		}
		members[open] = append(members[open], b)
		bucketOf[b] = open
		l.moveFront(open)
	}
	return res
}
