package engine

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/csi-cache/csi-cache/pkg/engine/alloc"
	"github.com/csi-cache/csi-cache/pkg/engine/bkey"
)

// Writeback writes a volume's dirty extents to its backing store, in LBA order,
// at a rate set by a PI controller on the volume's dirty data (bcache's
// writeback_rate): the target is WritebackPercent of the cache, shared among the
// volumes with dirty data; above it the rate grows with the excess (proportional
// term) and with how long the excess lasted (integral term); below it the rate
// falls to a trickle. Draining (leaving writeback mode, or the cache nearly
// full of dirty data) writes at full speed.
//
// An extent is written back under its stripe locks (so a newer write to the
// backing store is never overwritten by older dirty data); after a batch the
// backing store is synced, and only then are the extents marked clean by
// compare-and-swap: an extent overwritten meanwhile keeps its newer key.
// A backing write error leaves the extent dirty; it is retried with backoff
// and counted in the volume's stats.
type writeback struct {
	v *Volume

	wake    chan struct{}
	stopped chan struct{}
	done    chan struct{}
	once    sync.Once
	started atomic.Bool

	rateBits atomic.Uint64 // float64 bytes/s
	drainers atomic.Int32  // SetCacheMode calls waiting for dirty == 0
	lastErr  atomic.Pointer[error]

	// PI state, owned by the writeback goroutine.
	integral float64
	lastPI   time.Time
	cursor   uint64 // next sector to scan from
}

const (
	writebackBatch      = 64      // extents per backing sync
	writebackMinRate    = 4 << 10 // bytes/s: the trickle below the target
	writebackMaxRate    = 1 << 40 // "unlimited"
	writebackPTermInv   = 40      // bcache's writeback_rate_p_term_inverse
	writebackITermInv   = 10000   // bcache's writeback_rate_i_term_inverse
	writebackUpdateTick = 250 * time.Millisecond
)

func newWriteback(v *Volume) *writeback {
	wb := &writeback{v: v, wake: make(chan struct{}, 1), stopped: make(chan struct{}), done: make(chan struct{})}
	wb.rateBits.Store(math.Float64bits(writebackMinRate))
	return wb
}

func (wb *writeback) rate() float64 { return math.Float64frombits(wb.rateBits.Load()) }

func (wb *writeback) kick() {
	select {
	case wb.wake <- struct{}{}:
	default:
	}
}

func (wb *writeback) start() {
	if wb.v.info.Backing == BackingNone || wb.v.c.noWriteback() {
		return // nothing to write back to
	}
	wb.started.Store(true)
	go wb.run()
}

func (wb *writeback) stop() {
	wb.once.Do(func() { close(wb.stopped) })
	if wb.started.Load() {
		<-wb.done
	}
}

// drain waits until the volume has no dirty data.
func (wb *writeback) drain() error {
	wb.drainers.Add(1)
	defer wb.drainers.Add(-1)
	for wb.v.dirty.Load() > 0 {
		wb.kick()
		select {
		case <-wb.stopped:
			return ErrVolumeClosed
		case <-time.After(10 * time.Millisecond):
		}
		if p := wb.lastErr.Load(); p != nil && wb.v.dirty.Load() > 0 {
			// Keep trying, but tell the caller why it takes long.
			wb.v.c.logf("engine: volume %q: writeback: %v", wb.v.info.Name, *p)
		}
	}
	return nil
}

func (wb *writeback) run() {
	defer close(wb.done)
	wb.lastPI = time.Now()
	backoff := time.Duration(0)
	for {
		if wb.v.dirty.Load() <= 0 {
			wb.integral = 0
			select {
			case <-wb.stopped:
				return
			case <-wb.wake:
			case <-time.After(time.Second):
			}
			continue
		}
		wb.updateRate()
		written, err := wb.pass()
		if err != nil {
			wb.lastErr.Store(&err)
			backoff = min(max(2*backoff, 100*time.Millisecond), 30*time.Second)
			if !sleepOrStop(wb.stopped, backoff) {
				return
			}
			continue
		}
		backoff = 0
		if written == 0 {
			// Nothing written back although dirty data is counted: wait for new
			// writes (or a drift of the counter GC will correct).
			if !sleepOrStop(wb.stopped, 100*time.Millisecond) {
				return
			}
			continue
		}
		// Rate limit: the batch took its share of the rate.
		d := time.Duration(float64(written) / wb.rate() * float64(time.Second))
		for d > 0 {
			step := min(d, writebackUpdateTick)
			if !sleepOrStop(wb.stopped, step) {
				return
			}
			d -= step
			wb.updateRate()
			if wb.rate() >= writebackMaxRate {
				break
			}
		}
		select {
		case <-wb.stopped:
			return
		default:
		}
	}
}

func sleepOrStop(stop <-chan struct{}, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-stop:
		return false
	case <-t.C:
		return true
	}
}

// updateRate runs the PI controller.
func (wb *writeback) updateRate() {
	v, c := wb.v, wb.v.c
	now := time.Now()
	dt := now.Sub(wb.lastPI).Seconds()
	wb.lastPI = now
	if wb.drainers.Load() > 0 || CacheMode(v.mode.Load()) != Writeback || c.cfg.WritebackPercent < 0 {
		wb.rateBits.Store(math.Float64bits(writebackMaxRate))
		return
	}
	st := c.alloc.Stats()
	cacheBytes := float64(c.layout.NBuckets) * float64(c.sb.BucketSize)
	target := cacheBytes * float64(c.cfg.WritebackPercent) / 100 / float64(max(c.dirtyVolumes(), 1))
	dirty := float64(v.dirty.Load()) * sectorSize
	// Nearly out of space for new dirty data: write back at full speed.
	if st.Free+st.Pending+st.Data-st.Dirty < int(c.layout.NBuckets)/16 {
		wb.rateBits.Store(math.Float64bits(writebackMaxRate))
		return
	}
	errB := dirty - target
	prop := errB / writebackPTermInv
	// Integrate only while the output is not saturated at the minimum, so the
	// integral does not wind up below the target.
	next := wb.integral + errB*dt
	if prop+next/writebackITermInv > writebackMinRate || errB > 0 {
		wb.integral = next
	}
	wb.integral = max(wb.integral, 0)
	rate := max(prop+wb.integral/writebackITermInv, writebackMinRate)
	wb.rateBits.Store(math.Float64bits(min(rate, writebackMaxRate)))
}

// dirtyVolumes counts the volumes with dirty data.
func (c *CacheSet) dirtyVolumes() int {
	m := c.vols.byID.Load()
	if m == nil {
		return 0
	}
	n := 0
	for _, v := range *m {
		if v.dirty.Load() > 0 && v.info.Backing != BackingNone {
			n++
		}
	}
	return n
}

// pass writes back up to writebackBatch dirty extents from the cursor and
// returns the bytes written back.
func (wb *writeback) pass() (uint64, error) {
	v, c := wb.v, wb.v.c
	v.io.RLock()
	defer v.io.RUnlock()
	if v.closed || v.backing == nil {
		return 0, ErrVolumeClosed
	}
	keys, next, err := c.scanDirty(v.id, wb.cursor, writebackBatch)
	if err != nil {
		return 0, err
	}
	if len(keys) == 0 {
		if wb.cursor == 0 {
			return 0, nil
		}
		wb.cursor = 0
		keys, next, err = c.scanDirty(v.id, 0, writebackBatch)
		if err != nil || len(keys) == 0 {
			return 0, err
		}
	}
	wb.cursor = next
	// Below full speed a pass writes about one tick's worth of the rate (at
	// least one extent), so the controller's rate holds from the first pass.
	budget := uint64(math.MaxUint64)
	if r := wb.rate(); r < writebackMaxRate {
		budget = uint64(max(r*writebackUpdateTick.Seconds(), writebackMinRate))
	}
	var done []bkey.Key
	var firstErr error
	var batch uint64
	for i, k := range keys {
		if i > 0 && batch >= budget {
			wb.cursor = k.Start // the rest waits for the next pass
			break
		}
		batch += uint64(k.Len) * sectorSize
		ok, err := wb.writeOne(k)
		if err != nil {
			firstErr = err
			break
		}
		if ok {
			done = append(done, k)
		}
	}
	if len(done) == 0 {
		return 0, firstErr
	}
	// The backing store holds the data durably before any of it is called clean.
	if err := v.syncBacking(); err != nil {
		return 0, err
	}
	var written uint64
	for _, k := range done {
		clean := k
		clean.Flags &^= bkey.FlagDirty
		n, err := c.ReplaceKey(clean, &k)
		if err != nil {
			return written, err
		}
		if n > 0 {
			if err := c.alloc.AddSectorsGen(k.Ptr.Bucket, k.Ptr.Gen, 0, -int(n)); err != nil && !errors.Is(err, alloc.ErrStale) {
				c.logf("engine: writeback accounting: %v", err)
			}
			v.dirty.Add(-int64(n))
			v.stats.writebackBytes.Add(n * sectorSize)
			c.stats.writebackBytes.Add(n * sectorSize)
			written += n * sectorSize
		}
	}
	if firstErr != nil {
		return written, firstErr
	}
	return max(written, 1), nil
}

// writeOne writes dirty key k to the backing store if it is still in the tree.
func (wb *writeback) writeOne(k bkey.Key) (bool, error) {
	v, c := wb.v, wb.v.c
	locked := v.stripes.lockQuiet(k.Start, k.End())
	defer v.stripes.unlockQuiet(locked)
	// Still there, unchanged? (A write since the scan replaced or split it.)
	cur, err := c.lookup(v.id, k.Start, k.End())
	if err != nil {
		return false, err
	}
	if len(cur) != 1 || cur[0] != k {
		return false, nil
	}
	n := int(k.Len) * sectorSize
	err = withAligned(min(n, fillMax), func(b []byte) error {
		for off := 0; off < n; off += len(b) {
			m := min(len(b), n-off)
			if err := c.devRead(b[:m], c.dataOffset(k.Ptr, uint64(off/sectorSize))); err != nil {
				v.stats.cacheErrors.Add(1)
				return fmt.Errorf("%w: writeback: cache read: %v", ErrIO, err)
			}
			if c.alloc.IsStale(k.Ptr.Bucket, k.Ptr.Gen) {
				return errStaleDirty
			}
			if err := v.writeBacking(b[:m], k.Start+uint64(off/sectorSize)); err != nil {
				return err
			}
		}
		return nil
	})
	if errors.Is(err, errStaleDirty) {
		return false, nil
	}
	return err == nil, err
}

var errStaleDirty = errors.New("engine: dirty extent moved under writeback")
