package device

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
)

func TestMemIO(t *testing.T) {
	t.Parallel()
	testDeviceIO(t, NewMem(1<<20))
}

// TestMemModel checks Mem against a plain byte slice under random unaligned IO
// across chunk boundaries.
func TestMemModel(t *testing.T) {
	t.Parallel()
	const size = 3*memChunk + 1000
	rng := rand.New(rand.NewPCG(1, 2))
	m, model := NewMem(size), make([]byte, size)
	for range 2000 {
		off := rng.Int64N(size)
		n := rng.Int64N(min(size-off, 2*memChunk) + 1)
		switch rng.IntN(3) {
		case 0:
			p := make([]byte, n)
			for i := range p {
				p[i] = byte(rng.Uint32())
			}
			if _, err := m.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			copy(model[off:], p)
		case 1:
			if err := m.Discard(off, n); err != nil {
				t.Fatal(err)
			}
			clear(model[off : off+n])
		case 2:
			p := make([]byte, n)
			if _, err := m.ReadAt(p, off); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(p, model[off:off+n]) {
				t.Fatalf("ReadAt(%d, %d) differs from the model", off, n)
			}
		}
	}
	got := make([]byte, size)
	m.ReadAt(got, 0)
	if !bytes.Equal(got, model) {
		t.Fatal("final contents differ from the model")
	}
}

func TestMemSparse(t *testing.T) {
	t.Parallel()
	m := NewMem(1 << 40)
	if m.Allocated() != 0 {
		t.Fatalf("new Mem allocated %d", m.Allocated())
	}
	m.WriteAt([]byte{1}, 1<<39)
	m.WriteAt(make([]byte, 2*memChunk), 0)
	if m.Allocated() != 3*memChunk {
		t.Fatalf("allocated %d, want %d", m.Allocated(), 3*memChunk)
	}
	if err := m.Discard(0, 2*memChunk-1); err != nil {
		t.Fatal(err)
	}
	if m.Allocated() != 2*memChunk {
		t.Fatalf("after Discard: allocated %d, want %d", m.Allocated(), 2*memChunk)
	}
}

func TestMemReopenClone(t *testing.T) {
	t.Parallel()
	m := NewMem(4096)
	m.WriteAt([]byte("old"), 0)
	c := m.Clone()
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte("x"), 0); !errors.Is(err, ErrClosed) {
		t.Fatalf("WriteAt after Close: %v", err)
	}
	if err := m.Close(); !errors.Is(err, ErrClosed) {
		t.Fatalf("second Close: %v", err)
	}
	r := m.Reopen()
	r.WriteAt([]byte("new"), 0)
	buf := make([]byte, 3)
	c.ReadAt(buf, 0)
	if string(buf) != "old" {
		t.Fatalf("clone sees %q", buf)
	}
	m.Reopen().ReadAt(buf, 0)
	if string(buf) != "new" {
		t.Fatalf("reopened handle sees %q", buf)
	}
}

func TestMemConcurrent(t *testing.T) {
	t.Parallel()
	m := NewMem(1 << 20)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			buf := make([]byte, 8192)
			for i := range 500 {
				off := int64((g*500+i)*4096) % (1<<20 - 8192)
				m.WriteAt(buf, off)
				m.ReadAt(buf, off+100)
				m.Discard(off, 100)
			}
		})
	}
	wg.Wait()
}
