package device

import (
	"runtime"
	"time"
)

// DelayOptions configure a Delay device.
type DelayOptions struct {
	// Read, Write and Sync are added to every ReadAt, WriteAt (and Discard) and
	// Sync respectively.
	Read, Write, Sync time.Duration
	// Sleep waits for a duration; nil means Spin below SpinBelow and time.Sleep
	// above. Tests inject a fake clock here.
	Sleep func(time.Duration)
}

// SpinBelow is the latency under which the default Sleep spins instead of
// sleeping: timer wake-ups are too coarse for shorter waits. Spinning holds a CPU,
// so keep emulated latencies above it when many IOs are in flight.
const SpinBelow = 50 * time.Microsecond

// Delay is a Device that adds a fixed latency to each IO before passing it to
// the Device it wraps, to emulate slow storage (e.g. 1 ms per IO for a backing
// disk) in benchmarks. Concurrent IOs wait concurrently, as on a device with a
// deep queue.
type Delay struct {
	inner Device
	opts  DelayOptions
}

var (
	_ Device    = (*Delay)(nil)
	_ Discarder = (*Delay)(nil)
)

// NewDelay returns a Delay over inner.
func NewDelay(inner Device, opts DelayOptions) *Delay {
	if opts.Sleep == nil {
		opts.Sleep = sleep
	}
	return &Delay{inner: inner, opts: opts}
}

func sleep(d time.Duration) {
	switch {
	case d <= 0:
	case d < SpinBelow:
		Spin(d)
	default:
		time.Sleep(d)
	}
}

// Spin busy-waits for d, yielding the processor between checks of the clock.
func Spin(d time.Duration) {
	for start := time.Now(); time.Since(start) < d; {
		runtime.Gosched()
	}
}

func (d *Delay) wait(t time.Duration) {
	if t > 0 {
		d.opts.Sleep(t)
	}
}

// ReadAt waits the read latency, then reads from the inner device.
func (d *Delay) ReadAt(p []byte, off int64) (int, error) {
	d.wait(d.opts.Read)
	return d.inner.ReadAt(p, off)
}

// WriteAt waits the write latency, then writes to the inner device.
func (d *Delay) WriteAt(p []byte, off int64) (int, error) {
	d.wait(d.opts.Write)
	return d.inner.WriteAt(p, off)
}

// Discard waits the write latency, then discards on the inner device (see
// Discard).
func (d *Delay) Discard(off, length int64) error {
	d.wait(d.opts.Write)
	return Discard(d.inner, off, length)
}

// Sync waits the sync latency, then syncs the inner device.
func (d *Delay) Sync() error {
	d.wait(d.opts.Sync)
	return d.inner.Sync()
}

// Size returns the inner device's size.
func (d *Delay) Size() int64 { return d.inner.Size() }

// Close closes the inner device.
func (d *Delay) Close() error { return d.inner.Close() }
