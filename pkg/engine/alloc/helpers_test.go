package alloc

import (
	"fmt"
	"strings"
	"sync"
	"testing"
)

// recStore is a GenStore test double: it records every call, keeps the durable
// gen of every bucket, and can fail, block or call back into the allocator.
type recStore struct {
	mu      sync.Mutex
	calls   [][]GenChange
	durable map[uint32]uint32
	fail    error

	entered chan struct{} // if non-nil, receives once per call before block
	block   chan struct{} // if non-nil, each call waits for a receive
	hook    func([]GenChange)
}

func newRecStore() *recStore { return &recStore{durable: map[uint32]uint32{}} }

func (s *recStore) PersistGens(changes []GenChange) error {
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	if s.block != nil {
		<-s.block
	}
	if s.hook != nil {
		s.hook(changes)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, append([]GenChange(nil), changes...))
	if s.fail != nil {
		return s.fail
	}
	for _, c := range changes {
		s.durable[c.Bucket] = c.Gen
	}
	return nil
}

// durableGen returns the last gen persisted for b and whether any was.
func (s *recStore) durableGen(b uint32) (uint32, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	g, ok := s.durable[b]
	return g, ok
}

func (s *recStore) ncalls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

// formatCalls prints calls[from:] one per line: "persist b0=1 b1=1".
func (s *recStore) formatCalls(from int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var sb strings.Builder
	for _, c := range s.calls[from:] {
		sb.WriteString("persist")
		for _, ch := range c {
			fmt.Fprintf(&sb, " b%d=%d", ch.Bucket, ch.Gen)
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

// newTest returns an allocator over a recStore and checks it when the test ends.
func newTest(t testing.TB, cfg Config) (*Allocator, *recStore) {
	t.Helper()
	st := newRecStore()
	if cfg.Store == nil {
		cfg.Store = st
	}
	if cfg.BucketSectors == 0 {
		cfg.BucketSectors = 8
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.Close()
		if err := a.Check(); err != nil {
			t.Error(err)
		}
	})
	return a, st
}

// fill runs the allocator's refill synchronously (no goroutine).
func fill(t testing.TB, a *Allocator) {
	t.Helper()
	a.refill()
	if err := a.Err(); err != nil {
		t.Fatal(err)
	}
}
