package device

import (
	"sync"
	"unsafe"
)

// Alignment is the address alignment of the buffers AlignedBuffer and BufferPool
// return: the page size, enough for O_DIRECT on any device with sectors of up to
// 4 KiB.
const Alignment = 4096

// AlignedBuffer returns a zeroed slice of n bytes whose first byte is aligned to
// Alignment; its capacity is n.
func AlignedBuffer(n int) []byte {
	if n < 0 {
		panic("device: AlignedBuffer of negative size")
	}
	// Allocations of a multiple of the page size are page-aligned in practice
	// (size classes divide their spans evenly); over-allocate otherwise.
	b := make([]byte, n)
	if n == 0 || aligned(b) {
		return b
	}
	b = make([]byte, n+Alignment-1)
	off := int(-uintptr(unsafe.Pointer(unsafe.SliceData(b))) & (Alignment - 1))
	return b[off : off+n : off+n]
}

func aligned(b []byte) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))&(Alignment-1) == 0
}

// BufferPool is a pool of aligned buffers of one size, for direct IO without an
// allocation per request. It is safe for concurrent use; the zero value is not
// usable, use NewBufferPool.
type BufferPool struct {
	size  int
	bufs  sync.Pool // *[]byte holding a buffer
	boxes sync.Pool // empty *[]byte, so that Put does not allocate one
}

// NewBufferPool returns a pool of buffers of size bytes.
func NewBufferPool(size int) *BufferPool {
	if size <= 0 {
		panic("device: NewBufferPool of non-positive size")
	}
	return &BufferPool{size: size}
}

// Size returns the length of the pool's buffers.
func (p *BufferPool) Size() int { return p.size }

// Get returns a buffer of Size bytes aligned to Alignment. Its contents are
// whatever the last user left in it.
func (p *BufferPool) Get() []byte {
	box, _ := p.bufs.Get().(*[]byte)
	if box == nil {
		return AlignedBuffer(p.size)
	}
	b := *box
	*box = nil
	p.boxes.Put(box)
	return b
}

// Put returns b, which must have come from p.Get (it may have been resliced), to
// the pool. The caller must not use b afterwards. Put panics on a buffer of
// another capacity or alignment: that is a buffer from somewhere else.
func (p *BufferPool) Put(b []byte) {
	b = b[:cap(b)]
	if len(b) != p.size || !aligned(b) {
		panic("device: BufferPool.Put of a buffer not from this pool")
	}
	box, _ := p.boxes.Get().(*[]byte)
	if box == nil {
		box = new([]byte)
	}
	*box = b
	p.bufs.Put(box)
}
