package device

// The crash model.
//
// A Crash device sits on a durable image (any Device, usually a Mem) and keeps
// every write that has not been synced in a volatile overlay, per 512-byte sector:
//
//	ReadAt   the newest overlay version of each sector, else the image: what a
//	         running system sees (the page cache, the drive's write cache)
//	WriteAt  appends a version of each sector it touches to the overlay; a
//	         partial sector is merged with what ReadAt would return. Every sector
//	         version gets a sequence number: its place in write order.
//	Discard  the same as writing zeroes (a TRIM can be lost as a write can)
//	Sync     writes the newest version of every sector to the image, syncs the
//	         image and empties the overlay. So every write that completed before
//	         Sync was called is durable when it returns; a write racing with Sync
//	         may or may not be.
//	Crash    power loss: applies to the image the sector versions that survive by
//	         the mode, syncs the image and empties the overlay. Every later call
//	         fails with ErrCrashed; Image is the device to reopen on.
//
// What survives a crash, per CrashMode:
//
//	DropAll     nothing unsynced: the image is the state at the last Sync.
//	KeepRandom  each unsynced sector version survives or not with probability
//	            1/2, independently; a sector ends up as its newest surviving
//	            version, or as it was at the last Sync if none survives. This is
//	            reordering plus tearing of multi-sector writes at sector
//	            granularity: every sector is old or new, never a mix of bytes.
//	KeepPrefix  the unsynced sector versions survive in write order up to a
//	            random point, chosen uniformly among the possible prefixes
//	            (nothing ... everything); the write at that point is torn, its
//	            first sectors surviving and the rest not.
//
// The outcome depends only on the writes and on the *rand.Rand (which Crash
// draws from in sector order), so a seed reproduces it.
//
// Memory is bounded by the dirty sectors: at most maxVersions versions of a sector
// are kept between two Syncs. When a sector is written more often, its oldest
// unsynced version is dropped; KeepPrefix then keeps an older version (or the
// synced one) for a prefix ending among the dropped versions, which is still a
// state the durability model allows. Discarded sectors share one zero sector.
//
// Crash points. To crash from inside the code under test, arm the device with
// CrashAt(k, ...) or CrashWhen(...): IOs (the calls that can change what survives:
// WriteAt, Discard, Sync) are numbered from 0 in the order they take the device's
// lock; the IO that hits the crash point is not performed, the crash happens
// instead, and it and every later call fail with ErrCrashed. A test can run a
// workload once to learn IOs(), then once per k to crash at every point.

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
)

// CrashMode selects what unsynced writes survive a crash; see the model above.
type CrashMode uint8

// Crash modes.
const (
	DropAll CrashMode = iota
	KeepRandom
	KeepPrefix
)

func (m CrashMode) String() string {
	switch m {
	case DropAll:
		return "DropAll"
	case KeepRandom:
		return "KeepRandom"
	case KeepPrefix:
		return "KeepPrefix"
	}
	return fmt.Sprintf("CrashMode(%d)", uint8(m))
}

// maxVersions bounds the unsynced versions kept per sector.
const maxVersions = 4

// zeroSector is the data of discarded sectors; it is never written to.
var zeroSector = make([]byte, SectorSize)

// version is one unsynced write of a sector.
type version struct {
	seq  uint64 // place in write order
	data []byte // SectorSize bytes, never modified
}

// Crash is a Device that simulates power loss; see the model above.
type Crash struct {
	image Device
	size  int64

	// mu guards the fields below. It is held across IO on the image: the image is
	// the simulated medium, and one lock around every call keeps each call atomic
	// with respect to Sync and Crash, which the model's exactness needs. A crash
	// point's function runs with mu held too. This is a test device; it does
	// not need parallel IO.
	mu      sync.Mutex
	overlay map[int64][]version // sector → unsynced versions, oldest first
	seq     uint64              // sequence number of the next sector version
	base    uint64              // sequence number of the first version since the last Sync
	ios     uint64              // IOs so far (WriteAt, Discard, Sync)
	closed  bool
	crashed bool
	point   crashPoint
}

// crashPoint is an armed crash: when says at which IO, rng and mode how.
type crashPoint struct {
	when func(io uint64, op Op, off, n int64) bool
	rng  *rand.Rand
	mode CrashMode
}

var (
	_ Device    = (*Crash)(nil)
	_ Discarder = (*Crash)(nil)
)

// NewCrash returns a Crash device over image, which holds the durable state and
// must not be written to by others while the Crash device is in use. The image's
// size must be a multiple of SectorSize.
func NewCrash(image Device) *Crash {
	size := image.Size()
	if size%SectorSize != 0 {
		panic(fmt.Sprintf("device: NewCrash on a device of %d bytes, not a multiple of %d", size, SectorSize))
	}
	return &Crash{image: image, size: size, overlay: make(map[int64][]version)}
}

// Image returns the durable image: after a crash, what survived; before one,
// the state at the last Sync. It is never closed by the Crash device.
func (c *Crash) Image() Device { return c.image }

// Size returns the image's size.
func (c *Crash) Size() int64 { return c.size }

// Crashed reports whether the device has crashed.
func (c *Crash) Crashed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.crashed
}

// IOs returns the number of IOs (WriteAt, Discard and Sync calls that passed
// their checks) so far, crash points included.
func (c *Crash) IOs() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ios
}

// Pending returns the number of sectors with unsynced writes.
func (c *Crash) Pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.overlay)
}

// CrashAt arms the device to crash with rng and mode at IO number k (from 0).
func (c *Crash) CrashAt(k uint64, rng *rand.Rand, mode CrashMode) {
	c.CrashWhen(func(io uint64, _ Op, _, _ int64) bool { return io == k }, rng, mode)
}

// CrashWhen arms the device to crash with rng and mode at the first IO for which
// when returns true; when gets the IO's number, kind and range (0, 0 for a Sync)
// and runs with the device's lock held, so it must not call the device. A nil
// when disarms.
func (c *Crash) CrashWhen(when func(io uint64, op Op, off, n int64) bool, rng *rand.Rand, mode CrashMode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.point = crashPoint{when: when, rng: rng, mode: mode}
}

// ReadAt reads the image with the overlay on top.
func (c *Crash) ReadAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.checkLocked(off, int64(len(p))); err != nil {
		return 0, err
	}
	if n, err := c.image.ReadAt(p, off); err != nil {
		return n, err
	}
	if len(p) == 0 || len(c.overlay) == 0 {
		return len(p), nil
	}
	end := off + int64(len(p))
	first, last := off/SectorSize, (end-1)/SectorSize
	overlayOne := func(s int64, vs []version) {
		so := s * SectorSize
		lo, hi := max(off, so), min(end, so+SectorSize)
		copy(p[lo-off:hi-off], vs[len(vs)-1].data[lo-so:hi-so])
	}
	if last-first+1 <= int64(len(c.overlay)) {
		for s := first; s <= last; s++ {
			if vs := c.overlay[s]; len(vs) > 0 {
				overlayOne(s, vs)
			}
		}
	} else {
		for s, vs := range c.overlay {
			if s >= first && s <= last {
				overlayOne(s, vs)
			}
		}
	}
	return len(p), nil
}

// WriteAt adds p to the overlay.
func (c *Crash) WriteAt(p []byte, off int64) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ioLocked(OpWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	if err := c.writeLocked(p, off, int64(len(p))); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Discard adds zeroes over [off, off+length) to the overlay.
func (c *Crash) Discard(off, length int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ioLocked(OpDiscard, off, length); err != nil {
		return err
	}
	return c.writeLocked(nil, off, length)
}

// writeLocked adds a version of every sector in [off, off+n) to the overlay, in
// sector order, with the bytes of p (len(p) == n) or, if p is nil, zeroes.
func (c *Crash) writeLocked(p []byte, off, n int64) error {
	if n == 0 {
		return nil
	}
	end := off + n
	for s := off / SectorSize; s*SectorSize < end; s++ {
		so := s * SectorSize
		lo, hi := max(off, so), min(end, so+SectorSize)
		var data []byte
		switch {
		case lo == so && hi == so+SectorSize && p == nil:
			data = zeroSector
		case lo == so && hi == so+SectorSize:
			data = slices.Clone(p[lo-off : hi-off])
		default:
			data = make([]byte, SectorSize)
			if err := c.readSectorLocked(s, data); err != nil {
				return err
			}
			if p == nil {
				clear(data[lo-so : hi-so])
			} else {
				copy(data[lo-so:hi-so], p[lo-off:hi-off])
			}
		}
		vs := append(c.overlay[s], version{seq: c.seq, data: data})
		c.seq++
		if len(vs) > maxVersions {
			vs = append(vs[:0], vs[1:]...)
		}
		c.overlay[s] = vs
	}
	return nil
}

// readSectorLocked reads sector s as ReadAt would.
func (c *Crash) readSectorLocked(s int64, data []byte) error {
	if vs := c.overlay[s]; len(vs) > 0 {
		copy(data, vs[len(vs)-1].data)
		return nil
	}
	_, err := c.image.ReadAt(data, s*SectorSize)
	return err
}

// Sync makes every write so far durable: it applies the overlay to the image
// and syncs the image. If that fails the overlay stays, and a later Sync tries
// again.
func (c *Crash) Sync() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ioLocked(OpSync, 0, 0); err != nil {
		return err
	}
	err := c.applyLocked(func(_ int64, vs []version) []byte { return vs[len(vs)-1].data })
	if err != nil {
		return err
	}
	clear(c.overlay)
	c.base = c.seq
	return nil
}

// Crash simulates power loss now: it applies what survives by mode (drawing from
// rng; nil means a fixed seed) to the image and syncs it. Afterwards every
// call fails with ErrCrashed, even when applying failed (which the error reports).
func (c *Crash) Crash(rng *rand.Rand, mode CrashMode) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return ErrCrashed
	}
	return c.crashLocked(rng, mode)
}

func (c *Crash) crashLocked(rng *rand.Rand, mode CrashMode) error {
	c.crashed = true
	defer func() {
		c.overlay = nil
		c.point = crashPoint{}
	}()
	if rng == nil {
		rng = rand.New(rand.NewPCG(0, 0))
	}
	var survivor func(s int64, vs []version) []byte
	switch mode {
	case DropAll:
		return nil
	case KeepRandom:
		survivor = func(_ int64, vs []version) []byte {
			var data []byte
			for _, v := range vs {
				if rng.IntN(2) == 1 {
					data = v.data
				}
			}
			return data
		}
	case KeepPrefix:
		cut := c.base + rng.Uint64N(c.seq-c.base+1) // versions with seq < cut survive
		survivor = func(_ int64, vs []version) []byte {
			var data []byte
			for _, v := range vs {
				if v.seq < cut {
					data = v.data
				}
			}
			return data
		}
	default:
		return fmt.Errorf("device: crash: unknown mode %v", mode)
	}
	return c.applyLocked(survivor)
}

// applyLocked writes to the image, in sector order, the data that pick chooses
// for each overlay sector (nil: leave the sector as it is), coalescing adjacent
// sectors into one write, and syncs the image.
func (c *Crash) applyLocked(pick func(s int64, vs []version) []byte) error {
	if len(c.overlay) == 0 {
		return c.image.Sync()
	}
	sectors := make([]int64, 0, len(c.overlay))
	for s := range c.overlay {
		sectors = append(sectors, s)
	}
	slices.Sort(sectors)
	const maxRun = 256 // sectors per image write
	run := make([]byte, 0, maxRun*SectorSize)
	runStart := int64(-1)
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		_, err := c.image.WriteAt(run, runStart*SectorSize)
		run = run[:0]
		return err
	}
	for _, s := range sectors {
		data := pick(s, c.overlay[s])
		if data == nil {
			if err := flush(); err != nil {
				return err
			}
			continue
		}
		if len(run) == 0 || s != runStart+int64(len(run)/SectorSize) || len(run) == cap(run) {
			if err := flush(); err != nil {
				return err
			}
			runStart = s
		}
		run = append(run, data...)
	}
	if err := flush(); err != nil {
		return err
	}
	return c.image.Sync()
}

// Close closes the device, not the image. Unsynced writes stay in the overlay:
// Crash may still be called (power lost after a shutdown without a Sync).
func (c *Crash) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed {
		return ErrCrashed
	}
	if c.closed {
		return ErrClosed
	}
	c.closed = true
	return nil
}

// checkLocked returns the error for a call on a crashed or closed device or
// out of range.
func (c *Crash) checkLocked(off, n int64) error {
	switch {
	case c.crashed:
		return ErrCrashed
	case c.closed:
		return ErrClosed
	}
	return checkRange(off, n, c.size)
}

// ioLocked checks an IO and counts it, crashing if it hits the crash point.
func (c *Crash) ioLocked(op Op, off, n int64) error {
	if err := c.checkLocked(off, n); err != nil {
		return err
	}
	io := c.ios
	c.ios++
	if p := c.point; p.when != nil && p.when(io, op, off, n) {
		if err := c.crashLocked(p.rng, p.mode); err != nil {
			return fmt.Errorf("%w (at %s IO %d: %v)", ErrCrashed, op, io, err)
		}
		return ErrCrashed
	}
	return nil
}

// check verifies the overlay's invariants; tests call it.
func (c *Crash) check() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.base > c.seq {
		return fmt.Errorf("crash: base %d > seq %d", c.base, c.seq)
	}
	for s, vs := range c.overlay {
		if s < 0 || s >= c.size/SectorSize {
			return fmt.Errorf("crash: sector %d outside the device", s)
		}
		if len(vs) == 0 || len(vs) > maxVersions {
			return fmt.Errorf("crash: sector %d has %d versions", s, len(vs))
		}
		for i, v := range vs {
			if len(v.data) != SectorSize {
				return fmt.Errorf("crash: sector %d version %d has %d bytes", s, i, len(v.data))
			}
			if v.seq < c.base || v.seq >= c.seq || (i > 0 && v.seq <= vs[i-1].seq) {
				return fmt.Errorf("crash: sector %d version %d has seq %d (base %d, next %d, previous %v)",
					s, i, v.seq, c.base, c.seq, vs[max(i-1, 0)].seq)
			}
		}
	}
	return nil
}
