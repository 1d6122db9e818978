package nbd

import (
	"math/bits"
	"sync"
)

// Payload buffers come from power-of-two size classes from 4 KiB to the
// largest payload, so a busy connection reuses them instead of allocating
// one per request.
const (
	minBufShift = 12
	maxBufShift = 25 // 32 MiB, maxPayloadLimit
)

var bufClasses [maxBufShift - minBufShift + 1]sync.Pool

// getBuf returns a buffer of length n (n <= maxPayloadLimit) with stale
// contents.
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if p, ok := bufClasses[c].Get().(*[]byte); ok {
		*p = (*p)[:n]
		return p
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

// putBuf returns a buffer from getBuf to its pool.
func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	c := cap(*p)
	if c < 1<<minBufShift || c > 1<<maxBufShift || c&(c-1) != 0 {
		return
	}
	bufClasses[bits.TrailingZeros(uint(c))-minBufShift].Put(p)
}

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}
