package device

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"syscall"
)

// ErrInjected is wrapped by every error a Fault device injects.
var ErrInjected = errors.New("device: injected error")

// An Injector decides whether an operation fails: it returns nil to let op on
// [off, off+n) through (0, 0 for a Sync), or the error to fail it with. It is
// called for every ReadAt, WriteAt, Sync and Discard, possibly concurrently.
type Injector func(op Op, off, n int64) error

// InjectedError is the error a Fault device returns for an injected failure.
// errors.Is matches both ErrInjected and the Injector's error (syscall.EIO for
// the helpers' default).
type InjectedError struct {
	Op  Op
	Off int64
	N   int64
	Err error
}

func (e *InjectedError) Error() string {
	if e.Op == OpSync {
		return fmt.Sprintf("device: injected sync error: %v", e.Err)
	}
	return fmt.Sprintf("device: injected %s error [%d, +%d): %v", e.Op, e.Off, e.N, e.Err)
}

func (e *InjectedError) Unwrap() []error { return []error{ErrInjected, e.Err} }

// Fault is a Device that fails operations chosen by an Injector, in the spirit
// of pebble's vfs/errorfs. A failed operation is not passed to the inner device
// at all: a failed write leaves the device as it was. Close is never failed.
type Fault struct {
	inner    Device
	inj      atomic.Pointer[Injector] // nil: no injection
	injected [OpDiscard + 1]atomic.Uint64
}

var (
	_ Device    = (*Fault)(nil)
	_ Discarder = (*Fault)(nil)
)

// NewFault returns a Fault over inner that injects by inj (nil: nothing).
func NewFault(inner Device, inj Injector) *Fault {
	f := &Fault{inner: inner}
	f.SetInjector(inj)
	return f
}

// SetInjector replaces the injector (nil: nothing), for operations that start
// after the call.
func (f *Fault) SetInjector(inj Injector) {
	if inj == nil {
		f.inj.Store(nil)
		return
	}
	f.inj.Store(&inj)
}

// Injected returns the number of failures injected into operations of kind op
// (OpAny: all kinds).
func (f *Fault) Injected(op Op) uint64 {
	if int(op) < len(f.injected) {
		return f.injected[op].Load()
	}
	if op != OpAny {
		return 0
	}
	var n uint64
	for i := range f.injected {
		n += f.injected[i].Load()
	}
	return n
}

func (f *Fault) inject(op Op, off, n int64) error {
	inj := f.inj.Load()
	if inj == nil {
		return nil
	}
	err := (*inj)(op, off, n)
	if err == nil {
		return nil
	}
	f.injected[op].Add(1)
	return &InjectedError{Op: op, Off: off, N: n, Err: err}
}

// ReadAt reads from the inner device unless the injector fails it.
func (f *Fault) ReadAt(p []byte, off int64) (int, error) {
	if err := f.inject(OpRead, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.inner.ReadAt(p, off)
}

// WriteAt writes to the inner device unless the injector fails it.
func (f *Fault) WriteAt(p []byte, off int64) (int, error) {
	if err := f.inject(OpWrite, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.inner.WriteAt(p, off)
}

// Sync syncs the inner device unless the injector fails it.
func (f *Fault) Sync() error {
	if err := f.inject(OpSync, 0, 0); err != nil {
		return err
	}
	return f.inner.Sync()
}

// Discard discards on the inner device (see Discard) unless the injector fails it.
func (f *Fault) Discard(off, length int64) error {
	if err := f.inject(OpDiscard, off, length); err != nil {
		return err
	}
	return Discard(f.inner, off, length)
}

// Size returns the inner device's size.
func (f *Fault) Size() int64 { return f.inner.Size() }

// Close closes the inner device.
func (f *Fault) Close() error { return f.inner.Close() }

// Injector helpers. Each takes the kind of operation it applies to (OpAny: all)
// and the error to inject, syscall.EIO if nil. Counting helpers count only the
// operations of their kind that reach them, from 0, and are safe for concurrent
// use.

// FailRange fails the operations of kind op that overlap [off, off+length).
// Syncs have no range and never match.
func FailRange(op Op, off, length int64, err error) Injector {
	err = orEIO(err)
	return func(o Op, ioOff, n int64) error {
		if op.matches(o) && ioOff < off+length && off < ioOff+n {
			return err
		}
		return nil
	}
}

// FailAfter lets the first n operations of kind op through and fails all later
// ones: a device that dies.
func FailAfter(op Op, n uint64, err error) Injector {
	err = orEIO(err)
	var seen atomic.Uint64
	return func(o Op, _, _ int64) error {
		if op.matches(o) && seen.Add(1) > n {
			return err
		}
		return nil
	}
}

// OnIndex fails operation number i (from 0) of kind op, and only that one.
func OnIndex(op Op, i uint64, err error) Injector {
	err = orEIO(err)
	var seen atomic.Uint64
	return func(o Op, _, _ int64) error {
		if op.matches(o) && seen.Add(1)-1 == i {
			return err
		}
		return nil
	}
}

// Randomly fails each operation of kind op with probability p, drawing from a
// generator seeded with seed. The sequence of decisions is reproducible; which
// operation gets which decision is only as reproducible as the order in which
// operations reach the injector.
func Randomly(op Op, p float64, seed uint64, err error) Injector {
	err = orEIO(err)
	var mu sync.Mutex // guards rng
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	return func(o Op, _, _ int64) error {
		if !op.matches(o) {
			return nil
		}
		mu.Lock()
		fail := rng.Float64() < p
		mu.Unlock()
		if fail {
			return err
		}
		return nil
	}
}

// AnyOf returns the error of the first of injs that fails the operation. Every
// injector before it sees the operation (and counts it).
func AnyOf(injs ...Injector) Injector {
	return func(op Op, off, n int64) error {
		for _, inj := range injs {
			if err := inj(op, off, n); err != nil {
				return err
			}
		}
		return nil
	}
}

func orEIO(err error) error {
	if err == nil {
		return syscall.EIO
	}
	return err
}
