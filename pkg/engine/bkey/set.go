package bkey

import (
	"fmt"
	"slices"
)

// Set is the sorted set of extent keys of one btree leaf.
//
// Keys are ordered by (Vol, Start). Invariants, verified by Check: no key is empty,
// no key is a whiteout, no key's End overflows, and no two keys of the same volume
// overlap. Because keys do not overlap, their end positions are sorted too, which
// is what the binary searches below rely on.
//
// The zero Set is empty and ready to use. A Set is not safe for concurrent use: the
// btree node lock that guards the node guards its Set.
type Set struct {
	keys []Key
}

// Len is the number of keys.
func (s *Set) Len() int { return len(s.keys) }

// At returns the i-th key in order.
func (s *Set) At(i int) Key { return s.keys[i] }

// Keys returns a copy of the keys in order.
func (s *Set) Keys() []Key { return slices.Clone(s.keys) }

// Clone returns an independent copy of s.
func (s *Set) Clone() *Set { return &Set{keys: slices.Clone(s.keys)} }

// Reset empties s, keeping its memory.
func (s *Set) Reset() { s.keys = s.keys[:0] }

// Sectors is the number of sectors mapped by the keys of s.
func (s *Set) Sectors() uint64 {
	var n uint64
	for _, k := range s.keys {
		n += uint64(k.Len)
	}
	return n
}

// Seek returns the index of the first key whose end is after pos: the key that
// contains pos if there is one, else the first key after pos. It returns Len() if
// there is none.
func (s *Set) Seek(pos Pos) int { return s.seekEnd(pos.Vol, pos.LBA) }

// seekEnd returns the first i with keys[i].EndPos() > (vol, lba).
func (s *Set) seekEnd(vol, lba uint64) int {
	lo, hi := 0, len(s.keys)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		k := &s.keys[m]
		if k.Vol < vol || (k.Vol == vol && k.End() <= lba) {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

// Lookup calls fn, in order, for every key of vol that overlaps [start, end),
// until fn returns false. Keys are passed whole; callers clip them to the range.
func (s *Set) Lookup(vol, start, end uint64, fn func(Key) bool) {
	for i := s.seekEnd(vol, start); i < len(s.keys); i++ {
		k := s.keys[i]
		if k.Vol != vol || k.Start >= end {
			return
		}
		if !fn(k) {
			return
		}
	}
}

// Insert adds k and resolves overlaps the way bcache's extent insert does: keys of
// k.Vol that overlap [k.Start, k.End()) are trimmed at the front or back, split in
// two, or dropped, so that k wins. A whiteout key deletes the range and is not
// stored. A key with Len 0 is ignored.
//
// Insert returns the number of sectors of existing keys that k overwrote (or, for a
// whiteout, deleted).
//
// k.End() must not overflow.
func (s *Set) Insert(k Key) (overwritten uint64) {
	if k.Len == 0 {
		return 0
	}
	keys := s.keys
	kend := k.End()
	i := s.seekEnd(k.Vol, k.Start)
	overlaps := func(j int) bool { return j < len(keys) && keys[j].Vol == k.Vol && keys[j].Start < kend }

	// One key covers both ends of k: split it.
	if overlaps(i) && keys[i].Start < k.Start && keys[i].End() > kend {
		e := keys[i]
		keys[i].Len = uint32(k.Start - e.Start)
		right := trimFront(e, kend-e.Start)
		if k.Whiteout() {
			s.keys = slices.Insert(keys, i+1, right)
		} else {
			s.keys = slices.Insert(keys, i+1, k, right)
		}
		return uint64(k.Len)
	}
	lo := i
	if overlaps(i) && keys[i].Start < k.Start { // trim the back of a key that starts before k
		overwritten += keys[i].End() - k.Start
		keys[i].Len = uint32(k.Start - keys[i].Start)
		lo++
	}
	hi := lo
	for overlaps(hi) && keys[hi].End() <= kend { // keys inside k are dropped
		overwritten += uint64(keys[hi].Len)
		hi++
	}
	if overlaps(hi) { // trim the front of a key that ends after k
		n := kend - keys[hi].Start
		overwritten += n
		keys[hi] = trimFront(keys[hi], n)
	}
	if k.Whiteout() {
		s.keys = slices.Delete(keys, lo, hi)
	} else {
		s.keys = slices.Replace(keys, lo, hi, k)
	}
	return overwritten
}

// trimFront drops the first n sectors of k; the pointer follows the data.
func trimFront(k Key, n uint64) Key {
	k.Start += n
	k.Len -= uint32(n)
	k.Ptr.Offset += uint32(n)
	return k
}

// clip returns the part of k that covers [start, end), which must lie inside k.
func clip(k Key, start, end uint64) Key {
	k = trimFront(k, start-k.Start)
	k.Len = uint32(end - start)
	return k
}

// sameData reports whether e still maps the sectors it shares with x to the same
// data as x: same volume, bucket, generation, dirtiness, and the same offset into
// the bucket for every shared sector. e and x must overlap.
func sameData(e, x Key) bool {
	return e.Vol == x.Vol && e.Ptr.Bucket == x.Ptr.Bucket && e.Ptr.Gen == x.Ptr.Gen &&
		e.Dirty() == x.Dirty() &&
		// Offset-Start is equal for both; written without signed arithmetic.
		// Wrap-around cannot alias: overlapping keys are less than 2^32 apart.
		uint64(e.Ptr.Offset)+x.Start == uint64(x.Ptr.Offset)+e.Start
}

type span struct{ start, end uint64 }

// ReplaceIf inserts the parts of k that are still what the caller expects, and
// drops the rest. It is the compare-and-swap insert of cache-miss fills and
// writeback completions, which must never undo a racing write.
//
//   - expect == nil: k is inserted only into the gaps of [k.Start, k.End()), the
//     sectors no key covers (a cache-miss fill: a write that raced with the read
//     of the backing store wins).
//   - expect != nil: k replaces only the sectors of [k.Start, k.End()) ∩
//     [expect.Start, expect.End()) whose current key still maps them to the same
//     data as expect (same volume, bucket, generation, offset and dirtiness) —
//     e.g. writeback marking an extent clean after writing it back.
//
// A whiteout k deletes the sectors that pass the test (with expect == nil there
// are none). ReplaceIf returns the number of sectors inserted (or deleted).
func (s *Set) ReplaceIf(k Key, expect *Key) (inserted uint64) {
	start, end := k.Start, k.End()
	if expect != nil {
		if expect.Vol != k.Vol || expect.Whiteout() {
			return 0
		}
		start, end = max(start, expect.Start), min(end, expect.End())
	} else if k.Whiteout() {
		return 0
	}
	if start >= end {
		return 0
	}

	var buf [8]span
	spans := buf[:0]
	add := func(a, b uint64) {
		if n := len(spans); n > 0 && spans[n-1].end == a {
			spans[n-1].end = b
			return
		}
		spans = append(spans, span{a, b})
	}
	i := s.seekEnd(k.Vol, start)
	if expect == nil {
		pos := start
		for ; i < len(s.keys) && s.keys[i].Vol == k.Vol && s.keys[i].Start < end; i++ {
			if s.keys[i].Start > pos {
				add(pos, s.keys[i].Start)
			}
			pos = s.keys[i].End()
		}
		if pos < end {
			add(pos, end)
		}
	} else {
		for ; i < len(s.keys) && s.keys[i].Vol == k.Vol && s.keys[i].Start < end; i++ {
			if e := s.keys[i]; sameData(e, *expect) {
				add(max(e.Start, start), min(e.End(), end))
			}
		}
	}
	for _, sp := range spans {
		s.Insert(clip(k, sp.start, sp.end))
		inserted += sp.end - sp.start
	}
	return inserted
}

// Apply replays a log of keys in order, later keys winning: repeated Insert. It
// merges the bsets of a node log into one set, and replays journal entries.
func (s *Set) Apply(keys []Key) {
	for _, k := range keys {
		s.Insert(k)
	}
}

// Append adds k after the last key, for building a set from sorted input. It
// returns an error, and leaves s unchanged, if k does not sort strictly after the
// last key or would break another invariant of Set.
func (s *Set) Append(k Key) error {
	if why := checkKey(k); why != "" {
		return fmt.Errorf("bkey: append %v: %s", k, why)
	}
	if n := len(s.keys); n > 0 {
		if last := s.keys[n-1]; !(last.Vol < k.Vol || (last.Vol == k.Vol && last.End() <= k.Start)) {
			return fmt.Errorf("bkey: append %v after %v: out of order or overlapping", k, last)
		}
	}
	s.keys = append(s.keys, k)
	return nil
}

// SplitAt returns two new sets holding the keys before i and from i on, as a node
// split does. s is not modified.
func (s *Set) SplitAt(i int) (left, right *Set) {
	return &Set{keys: slices.Clone(s.keys[:i])}, &Set{keys: slices.Clone(s.keys[i:])}
}

// checkKey returns what is wrong with k as a key of a Set, or "".
func checkKey(k Key) string {
	switch {
	case k.Len == 0:
		return "empty key"
	case k.Whiteout():
		return "whiteout"
	case k.End() < k.Start:
		return "end overflows"
	}
	return ""
}

// Check verifies the invariants of s: keys sorted, non-overlapping, non-empty and
// not whiteouts. Tests call it after every mutation.
func (s *Set) Check() error {
	for i, k := range s.keys {
		if why := checkKey(k); why != "" {
			return fmt.Errorf("bkey: key %d %v: %s", i, k, why)
		}
		if i > 0 {
			p := s.keys[i-1]
			if p.Vol > k.Vol || (p.Vol == k.Vol && p.End() > k.Start) {
				return fmt.Errorf("bkey: keys %d %v and %d %v out of order or overlapping", i-1, p, i, k)
			}
		}
	}
	return nil
}
