package alloc

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by the allocator. Misuse errors (out of range bucket, wrong
// state) wrap ErrBadBucket.
var (
	ErrNoBuckets = errors.New("alloc: no free buckets")
	ErrClosed    = errors.New("alloc: closed")
	ErrBadBucket = errors.New("alloc: bad bucket")
	// ErrStale is returned by the ...Gen methods when the bucket was invalidated
	// (its gen bumped) since the caller's pointer was made.
	ErrStale = errors.New("alloc: stale bucket generation")
)

// Reserve names the free list an allocation may take its last buckets from.
type Reserve uint8

const (
	// ReserveNone is for data: it takes only from the general free list.
	ReserveNone Reserve = iota
	// ReserveBtree is for btree nodes.
	ReserveBtree
	// ReserveMovingGC is for moving GC, which copies live data out of sparse buckets.
	ReserveMovingGC
	// ReserveMeta is for metadata written on behalf of the allocator or the journal
	// if the engine ever places it in buckets (gens pages live in a fixed area
	// today, so Config.ReserveMeta is usually 0).
	ReserveMeta
	// NumReserves is the number of reserves.
	NumReserves = 4
)

var reserveNames = [NumReserves]string{"none", "btree", "movinggc", "meta"}

func (r Reserve) String() string {
	if int(r) < NumReserves {
		return reserveNames[r]
	}
	return fmt.Sprintf("Reserve(%d)", r)
}

// Kind is what a bucket holds.
type Kind uint8

const (
	KindFree  Kind = iota // on a free list, queued for reuse, or being invalidated
	KindData              // cached data; clean data buckets are invalidation candidates
	KindBtree             // btree nodes; leave only through Free
	KindMeta              // other metadata; leave only through Free
	numKinds
)

var kindNames = [numKinds]string{"free", "data", "btree", "meta"}

func (k Kind) String() string {
	if k < numKinds {
		return kindNames[k]
	}
	return fmt.Sprintf("Kind(%d)", k)
}

// GenChange is a bucket's new generation.
type GenChange struct {
	Bucket uint32
	Gen    uint32
}

// GenStore makes generations durable. The engine implements it by writing the
// on-disk gens pages and syncing the cache device.
//
// PersistGens is called by the allocator goroutine without any allocator lock
// held, one call per batch of invalidated buckets; none of them is handed out
// before it returns nil. changes is valid only during the call. PersistGens must
// not wait for a bucket to be allocated (see the package comment); an error is
// sticky: the allocator stops handing out buckets and reports it from Err and
// Alloc.
type GenStore interface {
	PersistGens(changes []GenChange) error
}

// Config configures an Allocator.
type Config struct {
	NBuckets      uint32   // buckets in the data area; > 0
	BucketSectors int      // sectors per bucket; bounds the usage counters
	Gens          []uint32 // gens read from disk, len NBuckets; nil on a fresh device (all 0)
	Store         GenStore // required

	// Buckets held back on their own free lists. A data allocation never takes them.
	ReserveBtree    int
	ReserveMovingGC int
	ReserveMeta     int

	// Free-bucket watermarks (all free lists together). The allocator goroutine is
	// woken when the count drops below LowWater and refills up to HighWater. Zero
	// picks defaults; both are above the sum of the reserves.
	LowWater  int
	HighWater int
	// MaxBatch bounds the gens per PersistGens call; 0 means 64.
	MaxBatch int

	Policy Policy                        // replacement policy; nil means NewLRU(NBuckets)
	Clock  func() time.Time              // nil means time.Now; used for wait times
	Logf   func(format string, a ...any) // optional; logs a sticky GenStore error
}

// bucket is the in-memory state of one bucket, guarded by Allocator.mu.
type bucket struct {
	live  uint32 // sectors of live data (all of the bucket for btree/meta if told so)
	dirty uint32 // sectors not yet written back; dirty <= live
	pin   uint32 // open count: writers currently writing into the bucket
	kind  Kind
	state state
	list  Reserve // free list, when state == stateFree
}

// state is where a bucket is in its life cycle (see the package comment).
type state uint8

const (
	stateFreed        state = iota // dead, waiting for a gen bump (the zero value: New)
	stateInvalidating              // gen bumped in memory, PersistGens in flight
	stateFree                      // on free list bucket.list, gen durable
	stateInUse                     // handed out or loaded: kind data, btree or meta
)

// Allocator allocates the buckets of one cache device.
//
// Lock order: Allocator.mu is a leaf; see the package comment.
type Allocator struct {
	// Immutable after New.
	nbuckets      uint32
	bucketSectors uint32
	reserve       [NumReserves]int
	reserveSum    int
	low, high     int
	maxBatch      int
	store         GenStore
	clock         func() time.Time
	logf          func(format string, a ...any)
	eligible      func(uint32) bool // a.eligibleLocked, bound once

	// gens[b] is bucket b's generation. Written only with mu held, by invalidation,
	// before the bucket reaches a free list; read atomically without mu.
	gens []atomic.Uint32

	wake    chan struct{} // 1-buffered: nudges the allocator goroutine
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when the allocator goroutine has returned

	mu      sync.Mutex // guards the fields below and every call into policy
	cond    sync.Cond  // L is &mu; broadcast when buckets are published, on a sticky error and on Close
	buckets []bucket
	free    [NumReserves]fifo // free lists; free[r] holds at most reserve[r] for r != ReserveNone
	freed   fifo              // dead buckets waiting for a gen bump, oldest first
	sealed  bool              // Load is over; freed holds every stateFreed bucket
	started bool
	closed  bool
	err     error // sticky GenStore error
	policy  Policy
	waiters int // Alloc calls blocked in cond.Wait
	// Accounting, kept incrementally and verified by Check.
	nInvalidating int
	nKind         [numKinds]int // in-use buckets by kind (nKind[KindFree] stays 0)
	nDirty        int           // buckets with dirty > 0
	nOpen         int           // buckets with pin > 0
	liveSectors   int64
	dirtySectors  int64
	stats         counters
}

// counters are the monotonic counters of Stats, guarded by Allocator.mu.
type counters struct {
	allocs, failures, waits     uint64
	invalidations, evictions    uint64
	persistCalls, persistedGens uint64
	waitTime                    time.Duration
}

// New returns an Allocator. Every bucket starts dead; the engine claims the
// buckets that hold data, btree nodes or metadata with Load before the first
// refill (Start), and every other bucket gets a gen bump before its first use.
func New(cfg Config) (*Allocator, error) {
	if cfg.NBuckets == 0 || cfg.NBuckets == ^uint32(0) {
		return nil, fmt.Errorf("alloc: bad bucket count %d", cfg.NBuckets)
	}
	if cfg.BucketSectors <= 0 || int64(cfg.BucketSectors) > int64(^uint32(0)) {
		return nil, fmt.Errorf("alloc: bad bucket size %d sectors", cfg.BucketSectors)
	}
	if cfg.Store == nil {
		return nil, errors.New("alloc: no GenStore")
	}
	if cfg.Gens != nil && len(cfg.Gens) != int(cfg.NBuckets) {
		return nil, fmt.Errorf("alloc: %d gens for %d buckets", len(cfg.Gens), cfg.NBuckets)
	}
	n := int(cfg.NBuckets)
	a := &Allocator{
		nbuckets:      cfg.NBuckets,
		bucketSectors: uint32(cfg.BucketSectors),
		store:         cfg.Store,
		clock:         cfg.Clock,
		logf:          cfg.Logf,
		policy:        cfg.Policy,
		maxBatch:      cfg.MaxBatch,
		gens:          make([]atomic.Uint32, n),
		buckets:       make([]bucket, n),
		freed:         newFIFO(n),
		wake:          make(chan struct{}, 1),
		closing:       make(chan struct{}),
		done:          make(chan struct{}),
	}
	a.reserve[ReserveBtree] = cfg.ReserveBtree
	a.reserve[ReserveMovingGC] = cfg.ReserveMovingGC
	a.reserve[ReserveMeta] = cfg.ReserveMeta
	for r, v := range a.reserve {
		if v < 0 {
			return nil, fmt.Errorf("alloc: negative reserve %s", Reserve(r))
		}
		a.reserveSum += v
	}
	if a.reserveSum >= n {
		return nil, fmt.Errorf("alloc: reserves (%d) leave no bucket for data (%d buckets)", a.reserveSum, n)
	}
	for r := range a.free {
		if Reserve(r) == ReserveNone {
			a.free[r] = newFIFO(n)
		} else {
			a.free[r] = newFIFO(a.reserve[r])
		}
	}
	slack := max(4, n/64)
	a.high = cfg.HighWater
	if a.high == 0 {
		a.high = min(n, a.reserveSum+slack)
	}
	a.low = cfg.LowWater
	if a.low == 0 {
		a.low = min(a.high, a.reserveSum+max(1, slack/2))
	}
	if a.low <= a.reserveSum || a.high < a.low || a.high > n {
		return nil, fmt.Errorf("alloc: watermarks low %d high %d: want reserves (%d) < low <= high <= %d",
			a.low, a.high, a.reserveSum, n)
	}
	if a.maxBatch <= 0 {
		a.maxBatch = 64
	}
	if a.clock == nil {
		a.clock = time.Now
	}
	if a.policy == nil {
		a.policy = NewLRU(cfg.NBuckets)
	}
	for i, g := range cfg.Gens {
		a.gens[i].Store(g)
	}
	a.cond.L = &a.mu
	a.eligible = a.eligibleLocked
	return a, nil
}

// Alloc hands out a free bucket for writing, with its current gen. The bucket comes
// back open (pin count 1) so that it cannot be invalidated while it is being
// written: the caller calls Release when its keys are in the btree.
//
// reserve names the reserve the allocation may dip into (ReserveNone for data).
// When no bucket is free, Alloc wakes the allocator goroutine and returns
// ErrNoBuckets if !wait, or waits until buckets are published, the allocator fails
// (its sticky error) or is closed (ErrClosed).
func (a *Allocator) Alloc(reserve Reserve, kind Kind, wait bool) (bucket uint32, gen uint32, err error) {
	if int(reserve) >= NumReserves || kind == KindFree || kind >= numKinds {
		return 0, 0, fmt.Errorf("alloc: bad allocation request (reserve %s, kind %s)", reserve, kind)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var start time.Time
	for {
		if a.closed {
			return 0, 0, ErrClosed
		}
		if a.err != nil {
			return 0, 0, a.err
		}
		if b, ok := a.popLocked(reserve); ok {
			a.handOutLocked(b, kind)
			if !start.IsZero() {
				a.stats.waitTime += a.clock().Sub(start)
			}
			return b, a.gens[b].Load(), nil
		}
		a.wakeAllocator()
		if !wait {
			a.stats.failures++
			return 0, 0, ErrNoBuckets
		}
		if start.IsZero() {
			start = a.clock()
			a.stats.waits++
		}
		a.waiters++
		a.cond.Wait()
		a.waiters--
	}
}

// popLocked takes a free bucket for reserve: the general list first, then the
// reserve's own list.
func (a *Allocator) popLocked(reserve Reserve) (uint32, bool) {
	if b, ok := a.free[ReserveNone].pop(); ok {
		return b, true
	}
	if reserve != ReserveNone {
		return a.free[reserve].pop()
	}
	return 0, false
}

// handOutLocked turns free bucket b into an open, empty bucket of kind.
func (a *Allocator) handOutLocked(b uint32, kind Kind) {
	bk := &a.buckets[b]
	bk.state = stateInUse
	bk.kind = kind
	bk.pin = 1
	a.nOpen++
	a.nKind[kind]++
	if kind == KindData {
		a.policy.Add(b)
	}
	a.stats.allocs++
	if a.freeCountLocked() < a.low {
		a.wakeAllocator()
	}
}

// Free returns an in-use bucket whose contents are dead (a rewritten btree node, a
// deleted volume's data, a bucket GC found empty). It is reused after a gen bump,
// which makes any pointer still naming it stale. The bucket must not be open.
//
// Free is for buckets that cannot have been reused behind the caller's back: btree
// and meta buckets, and dirty data buckets. A clean, closed data bucket may be
// invalidated and handed to another writer at any time: free it with FreeGen.
func (a *Allocator) Free(b uint32) error { return a.free1(b, 0, false) }

// FreeGen frees bucket b only if its gen is still gen (the gen of the caller's
// pointer), and returns ErrStale otherwise: the bucket was already invalidated and
// may hold someone else's data now.
func (a *Allocator) FreeGen(b, gen uint32) error { return a.free1(b, gen, true) }

func (a *Allocator) free1(b, gen uint32, checkGen bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	bk, err := a.inUseLocked(b, gen, checkGen)
	if err != nil {
		return err
	}
	if bk.pin > 0 {
		return fmt.Errorf("%w %d: free of an open bucket", ErrBadBucket, b)
	}
	a.retireLocked(b)
	bk.state = stateFreed
	if a.sealed {
		a.freed.push(b) // cannot fail: freed has room for every bucket
	}
	a.wakeAllocator()
	return nil
}

// retireLocked drops in-use bucket b's kind and usage (Free, eviction).
func (a *Allocator) retireLocked(b uint32) {
	bk := &a.buckets[b]
	if bk.kind == KindData {
		a.policy.Remove(b)
	}
	a.nKind[bk.kind]--
	bk.kind = KindFree // first, so that setUsageLocked sees no new candidate
	a.setUsageLocked(b, 0, 0)
}

// wakeAllocator nudges the allocator goroutine without blocking.
func (a *Allocator) wakeAllocator() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// freeCountLocked is the number of buckets on all free lists.
func (a *Allocator) freeCountLocked() int {
	n := 0
	for r := range a.free {
		n += a.free[r].len()
	}
	return n
}

// Err returns the sticky GenStore error, if any.
func (a *Allocator) Err() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}
