package device

import "sync/atomic"

// Counting is a Device that counts the writes and syncs passed to the Device it
// wraps, so that a caller can skip a Sync when nothing was written since the last
// one (the journal's pre-flush).
//
// Contract: WritesSinceSync returns false only if every WriteAt and Discard that
// completed before the call also completed before a successful Sync started.
// Writes are counted when they return, failed ones too (a failed write may have
// changed the device), and a Sync notes the count before it calls the inner
// Sync, so a write that completes while a Sync runs is never taken as synced.
type Counting struct {
	inner Device

	writes atomic.Uint64 // WriteAt and Discard calls that returned
	syncs  atomic.Uint64 // successful Syncs
	// synced is the value of writes when the latest successful Sync started
	// (the largest such value: Syncs may finish out of order). synced <= writes.
	synced atomic.Uint64
}

var (
	_ Device    = (*Counting)(nil)
	_ Discarder = (*Counting)(nil)
)

// NewCounting returns a Counting over inner.
func NewCounting(inner Device) *Counting { return &Counting{inner: inner} }

// Writes returns the number of WriteAt and Discard calls that have returned.
func (c *Counting) Writes() uint64 { return c.writes.Load() }

// Syncs returns the number of Syncs that succeeded.
func (c *Counting) Syncs() uint64 { return c.syncs.Load() }

// WritesSinceSync reports whether a write may not be durable yet: whether a
// WriteAt or Discard returned after the start of the latest successful Sync.
func (c *Counting) WritesSinceSync() bool { return c.writes.Load() != c.synced.Load() }

// ReadAt reads from the inner device.
func (c *Counting) ReadAt(p []byte, off int64) (int, error) { return c.inner.ReadAt(p, off) }

// WriteAt writes to the inner device and counts the write.
func (c *Counting) WriteAt(p []byte, off int64) (int, error) {
	n, err := c.inner.WriteAt(p, off)
	c.writes.Add(1)
	return n, err
}

// Discard discards on the inner device (see Discard) and counts it as a write.
func (c *Counting) Discard(off, length int64) error {
	err := Discard(c.inner, off, length)
	c.writes.Add(1)
	return err
}

// Sync syncs the inner device and, if that succeeds, marks the writes that had
// returned before the call as synced.
func (c *Counting) Sync() error {
	w := c.writes.Load() // before the inner Sync: later writes may not be covered
	if err := c.inner.Sync(); err != nil {
		return err
	}
	c.syncs.Add(1)
	for {
		s := c.synced.Load()
		if s >= w || c.synced.CompareAndSwap(s, w) {
			return nil
		}
	}
}

// Size returns the inner device's size.
func (c *Counting) Size() int64 { return c.inner.Size() }

// Close closes the inner device.
func (c *Counting) Close() error { return c.inner.Close() }
