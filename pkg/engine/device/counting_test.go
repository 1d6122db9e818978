package device

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func TestCounting(t *testing.T) {
	t.Parallel()
	c := NewCounting(NewMem(1 << 20))
	steps := []struct {
		do     func() error
		writes uint64
		syncs  uint64
		dirty  bool
	}{
		{func() error { return nil }, 0, 0, false},
		{func() error { _, err := c.WriteAt([]byte{1}, 0); return err }, 1, 0, true},
		{c.Sync, 1, 1, false},
		{c.Sync, 1, 2, false},
		{func() error { return c.Discard(0, 4096) }, 2, 2, true},
		{c.Sync, 2, 3, false},
		{func() error { // a failed write may have written: it counts
			if _, err := c.WriteAt([]byte{1}, 1<<20); !errors.Is(err, ErrOutOfRange) {
				return errors.New("no ErrOutOfRange")
			}
			return nil
		}, 3, 3, true},
		{func() error { _, err := c.ReadAt(make([]byte, 10), 0); return err }, 3, 3, true},
	}
	for i, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if c.Writes() != s.writes || c.Syncs() != s.syncs || c.WritesSinceSync() != s.dirty {
			t.Fatalf("step %d: writes %d syncs %d dirty %v; want %d %d %v",
				i, c.Writes(), c.Syncs(), c.WritesSinceSync(), s.writes, s.syncs, s.dirty)
		}
	}
}

func TestCountingFailedSync(t *testing.T) {
	t.Parallel()
	c := NewCounting(NewFault(NewMem(4096), FailAfter(OpSync, 0, nil)))
	c.WriteAt([]byte{1}, 0)
	if err := c.Sync(); err == nil {
		t.Fatal("Sync did not fail")
	}
	if !c.WritesSinceSync() || c.Syncs() != 0 {
		t.Fatalf("after a failed Sync: dirty %v, syncs %d", c.WritesSinceSync(), c.Syncs())
	}
}

// syncGate is a Device whose Sync blocks until released, to interleave a write
// with a running Sync.
type syncGate struct {
	Device
	entered, release chan struct{}
}

func (g *syncGate) Sync() error {
	g.entered <- struct{}{}
	<-g.release
	return g.Device.Sync()
}

// TestCountingWriteDuringSync: a write that completes while a Sync runs is not
// covered by it, so the device stays dirty.
func TestCountingWriteDuringSync(t *testing.T) {
	t.Parallel()
	g := &syncGate{Device: NewMem(4096), entered: make(chan struct{}), release: make(chan struct{})}
	c := NewCounting(g)
	done := make(chan error)
	go func() { done <- c.Sync() }()
	<-g.entered
	c.WriteAt([]byte{1}, 0)
	close(g.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !c.WritesSinceSync() {
		t.Fatal("a write completed during Sync was taken as synced")
	}
}

// TestCountingConcurrent: synced never passes writes, and after writers and
// syncers stop, one more Sync leaves the device clean.
func TestCountingConcurrent(t *testing.T) {
	t.Parallel()
	c := NewCounting(NewMem(1 << 20))
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for i := 0; !stop.Load(); i++ {
				c.WriteAt([]byte{byte(i)}, int64(i%4096))
				if s, w := c.synced.Load(), c.writes.Load(); s > w {
					t.Errorf("synced %d > writes %d", s, w)
				}
			}
		})
	}
	wg.Go(func() {
		for range 200 {
			c.Sync()
		}
		stop.Store(true)
	})
	wg.Wait()
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if c.WritesSinceSync() {
		t.Fatal("dirty after a Sync with no writer left")
	}
}
