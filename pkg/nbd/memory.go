package nbd

import (
	"sync"
	"sync/atomic"
)

// MemoryBackend is a Backend held in memory, for tests. Flush and FUA have
// nothing to persist; they are counted so tests can see them arrive.
type MemoryBackend struct {
	caps Capabilities

	flushes  atomic.Int64
	fuaOps   atomic.Int64
	trims    atomic.Int64
	zeroings atomic.Int64

	mu   sync.RWMutex // guards data
	data []byte
}

// NewMemoryBackend returns a zero-filled backend of size bytes with
// DefaultCapabilities.
func NewMemoryBackend(size int64) *MemoryBackend {
	return &MemoryBackend{data: make([]byte, size), caps: DefaultCapabilities()}
}

// SetCapabilities replaces the capabilities reported; call before AddExport.
func (m *MemoryBackend) SetCapabilities(c Capabilities) { m.caps = c }

// Capabilities implements CapabilityReporter.
func (m *MemoryBackend) Capabilities() Capabilities { return m.caps }

// Size implements Backend.
func (m *MemoryBackend) Size() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return int64(len(m.data))
}

// ReadAt implements Backend.
func (m *MemoryBackend) ReadAt(p []byte, off int64) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off > int64(len(m.data)) || int64(len(p)) > int64(len(m.data))-off {
		return EINVAL
	}
	copy(p, m.data[off:])
	return nil
}

// WriteAt implements Backend.
func (m *MemoryBackend) WriteAt(p []byte, off int64, fua bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || off > int64(len(m.data)) || int64(len(p)) > int64(len(m.data))-off {
		return ENOSPC
	}
	copy(m.data[off:], p)
	if fua {
		m.fuaOps.Add(1)
	}
	return nil
}

// Flush implements Backend.
func (m *MemoryBackend) Flush() error {
	m.flushes.Add(1)
	return nil
}

// Trim implements Backend by zeroing the range.
func (m *MemoryBackend) Trim(off, length int64) error {
	m.trims.Add(1)
	return m.zero(off, length)
}

// WriteZeroes implements Backend.
func (m *MemoryBackend) WriteZeroes(off, length int64, fua bool) error {
	m.zeroings.Add(1)
	if fua {
		m.fuaOps.Add(1)
	}
	return m.zero(off, length)
}

func (m *MemoryBackend) zero(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < 0 || length < 0 || off > int64(len(m.data)) || length > int64(len(m.data))-off {
		return EINVAL
	}
	clear(m.data[off : off+length])
	return nil
}

// Resize grows or shrinks the backend, keeping the common prefix.
func (m *MemoryBackend) Resize(size int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d := make([]byte, size)
	copy(d, m.data)
	m.data = d
}

// Bytes returns a copy of the contents.
func (m *MemoryBackend) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}

// MemoryStats counts the calls that have no visible effect on the data.
type MemoryStats struct {
	Flushes, FUAWrites, Trims, WriteZeroes int64
}

// Stats returns the call counters.
func (m *MemoryBackend) Stats() MemoryStats {
	return MemoryStats{
		Flushes:     m.flushes.Load(),
		FUAWrites:   m.fuaOps.Load(),
		Trims:       m.trims.Load(),
		WriteZeroes: m.zeroings.Load(),
	}
}
