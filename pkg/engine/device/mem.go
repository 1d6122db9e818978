package device

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// memChunk is the allocation unit of a Mem: chunks never written read as zeroes
// and take no memory, so a test may use a device far larger than its data.
const memChunk = 64 << 10

// Mem is a sparse in-memory Device for tests. Its writes are durable as soon as
// they complete (Sync does nothing), which makes it the natural durable image
// under a Crash device.
//
// Close closes only this handle: Reopen returns a new handle on the same bytes,
// as reopening a file would, and Clone a handle on a copy of them.
type Mem struct {
	s      *memStore
	closed atomic.Bool
}

type memStore struct {
	size int64

	// mu guards chunks. WriteAt and Discard hold it exclusively, so that
	// overlapping writes apply one after the other rather than race.
	mu     sync.RWMutex
	chunks map[int64]*[memChunk]byte // chunk index → bytes; absent chunks are zero
}

var (
	_ Device    = (*Mem)(nil)
	_ Discarder = (*Mem)(nil)
)

// NewMem returns a zeroed in-memory device of size bytes.
func NewMem(size int64) *Mem {
	if size < 0 {
		panic(fmt.Sprintf("device: NewMem(%d)", size))
	}
	return &Mem{s: &memStore{size: size, chunks: make(map[int64]*[memChunk]byte)}}
}

// Reopen returns a new open handle on m's bytes; m may be closed.
func (m *Mem) Reopen() *Mem { return &Mem{s: m.s} }

// Clone returns an open handle on a copy of m's bytes, as they are at the call;
// m may be closed.
func (m *Mem) Clone() *Mem {
	m.s.mu.RLock()
	defer m.s.mu.RUnlock()
	c := &memStore{size: m.s.size, chunks: make(map[int64]*[memChunk]byte, len(m.s.chunks))}
	for i, ch := range m.s.chunks {
		cp := *ch
		c.chunks[i] = &cp
	}
	return &Mem{s: c}
}

// Allocated returns the bytes of memory holding m's data (whole chunks).
func (m *Mem) Allocated() int64 {
	m.s.mu.RLock()
	defer m.s.mu.RUnlock()
	return int64(len(m.s.chunks)) * memChunk
}

// Size returns the size given to NewMem.
func (m *Mem) Size() int64 { return m.s.size }

// ReadAt copies the bytes at off into p.
func (m *Mem) ReadAt(p []byte, off int64) (int, error) {
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	m.s.mu.RLock()
	defer m.s.mu.RUnlock()
	for n := 0; n < len(p); {
		i, co := (off+int64(n))/memChunk, int((off+int64(n))%memChunk)
		k := min(len(p)-n, memChunk-co)
		if ch := m.s.chunks[i]; ch != nil {
			copy(p[n:n+k], ch[co:co+k])
		} else {
			clear(p[n : n+k])
		}
		n += k
	}
	return len(p), nil
}

// WriteAt copies p to off.
func (m *Mem) WriteAt(p []byte, off int64) (int, error) {
	if err := m.check(off, int64(len(p))); err != nil {
		return 0, err
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	for n := 0; n < len(p); {
		i, co := (off+int64(n))/memChunk, int((off+int64(n))%memChunk)
		k := min(len(p)-n, memChunk-co)
		ch := m.s.chunks[i]
		if ch == nil {
			ch = new([memChunk]byte)
			m.s.chunks[i] = ch
		}
		copy(ch[co:co+k], p[n:n+k])
		n += k
	}
	return len(p), nil
}

// Discard zeroes [off, off+length), freeing the chunks it covers entirely.
func (m *Mem) Discard(off, length int64) error {
	if err := m.check(off, length); err != nil {
		return err
	}
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	for end := off + length; off < end; {
		i, co := off/memChunk, off%memChunk
		k := min(end-off, memChunk-co)
		if k == memChunk {
			delete(m.s.chunks, i)
		} else if ch := m.s.chunks[i]; ch != nil {
			clear(ch[co : co+k])
		}
		off += k
	}
	return nil
}

// Sync does nothing but report a closed handle: Mem writes are durable at once.
func (m *Mem) Sync() error {
	if m.closed.Load() {
		return ErrClosed
	}
	return nil
}

// Close closes this handle; the bytes stay reachable through Reopen.
func (m *Mem) Close() error {
	if m.closed.Swap(true) {
		return ErrClosed
	}
	return nil
}

func (m *Mem) check(off, n int64) error {
	if m.closed.Load() {
		return ErrClosed
	}
	return checkRange(off, n, m.s.size)
}
