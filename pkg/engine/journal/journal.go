// Package journal is the cache engine's write-ahead log, modelled on bcache's
// journal.c: btree leaf updates are journaled (Add, Commit) before they are
// acknowledged, and replayed (Open) after a crash.
//
// # The ring
//
// The journal area is a ring of BlockSize blocks. Journal entries (jsets, see
// jset.go) are written one after the other at the write head; an entry that would
// not fit before the end of the area is written at block 0, and the blocks it skipped
// count as part of it until it is reclaimed:
//
//	block 0                                                           nblocks
//	+-------+-------+---------------+-------+------------------+------+
//	| s=12  | s=13  |     free      | s=9   | s=10             | s=11 |skip|
//	+-------+-------+---------------+-------+------------------+------+
//	                ^head           ^tail (start of the oldest unreclaimed entry)
//
// used = blocks from tail to head (skipped tails included); one block always stays
// free for an empty jset that only advances last_seq (see pin.go).
//
// # Entries, pins and reclaim
//
// Every entry from the oldest unreclaimed one to the open one has a pin count
// (bcache's journal pin), kept in a FIFO indexed by sequence number: entry seq is
// ents[seq-base]. A reference is taken by Add (for the caller) and by Pin (a dirty
// btree node that has not written the entry's keys yet). Ordering is always by seq,
// never by ring position: ring positions wrap, sequence numbers (uint64) do not.
// bcache's journal_pin_cmp compared FIFO indices and was wrong after a wrap.
//
// An entry is no longer needed when it is written and its pin count is zero. Its
// blocks are reused only once a durable jset says so (its last_seq is past the
// entry): until then, the newest jset on disk may still need it for replay, and a
// torn overwrite would leave a gap. So reclaim is: pins drop to zero → the next
// jset records a larger last_seq → once that jset is durable, the entries before
// its last_seq are popped and their blocks are free.
//
// # Writing
//
// One writer goroutine (Start, Close) closes the open entry and writes it when a
// committer asks for it (Commit, Flush), when a caller waits for it to be written
// (WaitWritten), when it has been open for Config.Delay, or when an Add waits for
// space. Before a flushed jset it syncs the device if anything else was written
// since the last sync (Config.NeedPreflush), so that the data and btree nodes a
// jset refers to are durable before it; then it writes the jset and syncs. Every
// committer waiting for a seq up to the written one is released by that one sync
// (group commit).
//
// An entry wanted only written (WaitWritten: the engine acknowledges writes so,
// because the kernel keeps a mounted NBD device across a restart of the plugin)
// is written unflushed if Config.BootID is set: without the preflush and the sync,
// marked with the boot id. It survives a crash of the process, not a power loss.
// The next flushed jset's preflush makes it durable with everything before it;
// one is written at least every Config.MaxUnflushed, and for every Commit.
//
// # Lock order
//
// Journal.mu is the only lock of a Journal and a leaf: nothing else is locked
// while it is held, no device IO is done and no hook is called under it (the Clock's
// AfterFunc is, and must return without calling back). Callers may hold their own
// locks when calling Pin, Unpin, Seq, OldestPinned, Fill and Check. Add and Commit
// may wait and call the Flush hook, so their callers must not hold anything the
// Flush hook needs (bcache: take journal space before btree locks).
package journal

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
	"github.com/csi-cache/csi-cache/pkg/engine/device"
)

// Errors. Device errors are wrapped in ErrIO and are sticky: after one, every Add
// and Commit returns the same error.
var (
	ErrClosed      = errors.New("journal: closed")
	ErrNotStarted  = errors.New("journal: not started")
	ErrFull        = errors.New("journal: full")
	ErrTooManyKeys = errors.New("journal: too many keys for one entry")
	ErrBadPin      = errors.New("journal: pin without a reference")
	ErrIO          = errors.New("journal: io error")
	ErrInvalid     = errors.New("journal: invalid argument")
)

func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}

// DefaultDelay is how long an entry with keys stays open when nobody commits it.
const DefaultDelay = 2 * time.Millisecond

// MinBlocks is the smallest journal area, in blocks.
const MinBlocks = 8

// Config configures a Journal. Device, Size and SetMagic are required.
type Config struct {
	Device   device.Device
	Offset   int64  // start of the journal area on Device, a multiple of BlockSize
	Size     int64  // size of the area, a multiple of BlockSize, at least MinBlocks blocks
	SetMagic uint64 // the cache set's magic; jsets of other sets are ignored

	// Flush is called when an Add (or Commit) cannot get ring space and writing
	// what is already unpinned would not free enough: it should write the dirty
	// btree nodes that pin entry oldest (the engine's flushWrite), so that their
	// pins drop. It is called without journal locks, by one waiter at a time, and
	// may return before the pins drop (Unpin wakes the waiters). It may call Pin
	// and Unpin, never Add or Commit (they may wait for the space it is to free).
	Flush func(oldest uint64)
	// Root returns the btree root to record in the jset being written. Nil keeps
	// the root found at Open.
	Root func() Root
	// NextVolumeID returns the next volume id to record. Nil keeps the value found
	// at Open; a smaller value than one already recorded is ignored.
	NextVolumeID func() uint64
	// NeedPreflush reports whether anything was written to the device since its
	// last Sync (device.Counting can tell). Nil means always: the writer then syncs
	// before every jset.
	NeedPreflush func() bool
	// Delay is how long an entry with keys stays open before it is written without
	// a Commit; 0 means DefaultDelay, negative never.
	Delay time.Duration
	// Clock is the source of time of the delay; nil is the real clock.
	Clock Clock
	// BootID identifies the running kernel's boot. Non-zero enables unflushed
	// jsets (see the package comment), and Open trusts unflushed jsets of this
	// boot only: after a reboot (a power loss) it drops those newer than the
	// newest flushed one. Zero: every jset is flushed, and Open drops every
	// unflushed jset past the newest flushed one.
	BootID BootID
	// MaxUnflushed bounds how long entries stay written but not durable: the
	// first jset written that long after the last flushed one is flushed. 0 means
	// DefaultMaxUnflushed.
	MaxUnflushed time.Duration
	// ReadOnly opens the journal for inspection: Open does not erase the
	// unflushed jsets it drops, and the journal must not be started.
	ReadOnly bool
}

// DefaultMaxUnflushed is how long written entries may wait for a flushed jset.
const DefaultMaxUnflushed = 10 * time.Millisecond

// Clock lets tests control time.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d. It must not call f before
	// returning. stop cancels the call if it has not started.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }
func (realClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Entry is a journal entry found by Open.
type Entry struct {
	Seq          uint64
	Keys         []bkey.Key
	Root         Root
	NextVolumeID uint64
}

// Replay is what Open found: the entries from the newest jset's last_seq to its
// seq, in order. Each entry is returned with one pin reference held, as if by Add:
// the engine replays its keys (taking Pin(e.Seq) for each btree node it dirties)
// and then drops that reference with Unpin(e.Seq). Until then the entry's ring
// space is not reclaimed.
type Replay struct {
	Entries []Entry
	// Root and NextVolumeID are those of the newest entry (zero for a new area).
	Root         Root
	NextVolumeID uint64
	// Dropped counts the unflushed jsets of an earlier boot that Open dropped:
	// entries written, never made durable, and lost with the power.
	Dropped int
}

// Stats are counters of a Journal.
type Stats struct {
	Writes     int64 // jsets written
	Unflushed  int64 // of those, written unflushed
	Syncs      int64 // device syncs, preflushes included
	Stalls     int64 // Adds and Commits that waited for ring space
	FlushCalls int64 // calls of the Flush hook
	PinErrors  int64 // Pin and Unpin calls without a reference (each is a bug)
}

type entryState uint8

const (
	stateOpen    entryState = iota // taking keys; no ring space assigned yet
	stateClosed                    // placed in the ring, waiting for the writer
	stateWritten                   // written unflushed: a later flushed jset makes it durable
	stateDurable                   // written and synced (or made durable by a later flushed jset)
)

// entry is one FIFO slot: an entry from the oldest unreclaimed one to the open one.
type entry struct {
	pins   int64
	state  entryState
	start  int64 // block where its ring space starts (a skipped tail, then the jset)
	pos    int64 // block of the jset
	blocks int64 // blocks of the jset
	cost   int64 // ring blocks it holds: blocks plus the skipped tail
}

// openEntry is the entry taking keys.
type openEntry struct {
	keys     []bkey.Key
	cost     int64 // ring blocks reserved for it: 0 while empty and not forced
	force    bool  // write it even if empty (Commit of an empty entry)
	openedAt time.Time
}

// pendingJset is a closed entry waiting for the writer.
type pendingJset struct {
	seq  uint64
	keys []bkey.Key
}

// Journal is the write-ahead log of a cache set. See the package comment.
type Journal struct {
	cfg       Config // immutable after Open
	clock     Clock
	delay     time.Duration
	nblocks   int64 // blocks in the ring
	maxBlocks int64 // blocks of the largest entry
	maxKeys   int   // keys of the largest entry

	wake    chan struct{} // 1-buffered: kicks the writer
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when the writer has exited

	mu sync.Mutex // guards the fields below; a leaf lock (see Lock order)

	started bool
	closed  bool
	err     error         // sticky device error (wraps ErrIO)
	changed chan struct{} // closed and replaced by broadcastLocked on every change
	gen     uint64        // number of broadcasts

	base    uint64        // seq of ents[0]
	ents    []entry       // the pin FIFO; the last one is the open entry
	open    openEntry     // keys of the open entry, seq base+len(ents)-1
	pending []pendingJset // closed entries waiting for the writer, in seq order

	head          int64  // write head (block)
	used          int64  // ring blocks held by closed and durable entries
	durableSeq    uint64 // newest durable entry (0: none)
	writtenSeq    uint64 // newest entry whose jset was written, synced or not
	lastSeqOnDisk uint64 // last_seq of the newest durable jset (0: none)
	root          Root   // recorded in the newest jset
	nextVolID     uint64 // recorded in the newest jset

	commitWanted  uint64    // newest seq a committer waits for
	writtenWanted uint64    // newest seq a WaitWritten caller waits for
	lastFlushed   time.Time // when the newest flushed jset was written
	spaceWaiters  int       // Adds and Commits waiting for ring space
	flushing      bool      // a waiter is in the Flush hook
	flushGen      uint64    // gen when the Flush hook was last called
	timerSeq      uint64    // open entry the delay timer is armed for
	stopTimer     func() bool

	durableTimer     bool // armed by an unflushed write: see armDurableTimerLocked
	stopDurableTimer func() bool

	stats Stats
}

func newJournal(cfg Config) (*Journal, error) {
	if cfg.Device == nil {
		return nil, errorf(ErrInvalid, "no device")
	}
	if cfg.Offset < 0 || cfg.Offset%BlockSize != 0 || cfg.Size%BlockSize != 0 ||
		cfg.Size < MinBlocks*BlockSize || cfg.Offset > cfg.Device.Size()-cfg.Size {
		return nil, errorf(ErrInvalid, "area [%d, +%d) on a device of %d bytes: want %d-byte aligned, at least %d blocks",
			cfg.Offset, cfg.Size, cfg.Device.Size(), BlockSize, MinBlocks)
	}
	j := &Journal{
		cfg:     cfg,
		clock:   cfg.Clock,
		delay:   cfg.Delay,
		nblocks: cfg.Size / BlockSize,
		wake:    make(chan struct{}, 1),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		changed: make(chan struct{}),
		gen:     1,
	}
	if j.clock == nil {
		j.clock = realClock{}
	}
	if j.delay == 0 {
		j.delay = DefaultDelay
	}
	if j.cfg.MaxUnflushed == 0 {
		j.cfg.MaxUnflushed = DefaultMaxUnflushed
	}
	// An entry of maxBlocks always fits once everything else is reclaimed: the
	// newest jset (1 block) + a skipped tail + the entry + the spare block.
	j.maxBlocks = min(MaxJsetBlocks, (j.nblocks-2)/2)
	j.maxKeys = maxKeysIn(j.maxBlocks)
	return j, nil
}

// MaxKeys is the largest number of keys one Add may take on this journal.
func (j *Journal) MaxKeys() int { return j.maxKeys }

// Start starts the writer goroutine. Add, Commit and Flush fail with ErrNotStarted
// before it; replay (Pin, Unpin) does not need it.
func (j *Journal) Start() {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.started || j.closed || j.cfg.ReadOnly {
		return
	}
	j.started = true
	j.lastFlushed = j.clock.Now()
	go j.run()
}

// Close stops the writer after the jset it is writing, if any, and makes every
// waiting and later Add and Commit fail with ErrClosed. It does not write the open
// entry: call Flush first for a clean shutdown. It does not close the device.
func (j *Journal) Close() error {
	j.mu.Lock()
	if !j.closed {
		j.closed = true
		close(j.closing)
		if j.stopTimer != nil {
			j.stopTimer()
		}
		if j.stopDurableTimer != nil {
			j.stopDurableTimer()
		}
		j.broadcastLocked()
	}
	started := j.started
	j.mu.Unlock()
	if started {
		<-j.done
	}
	return nil
}

// Fail makes err the journal's sticky error, as if its own IO had failed: every
// waiting and later Add and Commit returns it (wrapped in ErrIO) and nothing more
// is written. The engine calls it when the cache set fails, so that no writer
// waits for ring space that only btree node writes, which now fail, could free.
// A journal that already failed keeps its first error.
func (j *Journal) Fail(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.err == nil {
		j.err = errorf(ErrIO, "%w", err)
		j.broadcastLocked()
	}
}

// Seq is the sequence number of the open entry: the one the next Add joins.
func (j *Journal) Seq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.openSeqLocked()
}

// DurableSeq is the newest durable entry (0 if none).
func (j *Journal) DurableSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.durableSeq
}

// LastSeq is the last_seq of the newest durable jset: the oldest entry replay
// would need after a crash now (0 if nothing was written).
func (j *Journal) LastSeq() uint64 {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.lastSeqOnDisk
}

// Fill returns the bytes of the ring held by entries (the open entry's reservation
// included) and the size of the ring.
func (j *Journal) Fill() (used, total int64) {
	j.mu.Lock()
	defer j.mu.Unlock()
	return (j.used + j.open.cost) * BlockSize, j.nblocks * BlockSize
}

// Stats returns the journal's counters.
func (j *Journal) Stats() Stats {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.stats
}

// Err returns the sticky device error, if any.
func (j *Journal) Err() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

func (j *Journal) openSeqLocked() uint64 { return j.base + uint64(len(j.ents)) - 1 }

// entryLocked returns the FIFO slot of seq, or nil if seq is reclaimed or not open yet.
func (j *Journal) entryLocked(seq uint64) *entry {
	if seq < j.base || seq-j.base >= uint64(len(j.ents)) {
		return nil
	}
	return &j.ents[seq-j.base]
}

// usableLocked returns why Add and Commit cannot proceed, if they cannot.
func (j *Journal) usableLocked() error {
	switch {
	case j.err != nil:
		return j.err
	case j.closed:
		return ErrClosed
	case !j.started:
		return ErrNotStarted
	}
	return nil
}

// broadcastLocked wakes every waiter of j.changed.
func (j *Journal) broadcastLocked() {
	close(j.changed)
	j.changed = make(chan struct{})
	j.gen++
}

// waitLocked waits for the next broadcast or Close. Called and returns with j.mu
// held; releases it meanwhile.
func (j *Journal) waitLocked() {
	ch := j.changed
	j.mu.Unlock()
	select {
	case <-ch:
	case <-j.closing:
	}
	j.mu.Lock()
}

// kick wakes the writer.
func (j *Journal) kick() {
	select {
	case j.wake <- struct{}{}:
	default:
	}
}
