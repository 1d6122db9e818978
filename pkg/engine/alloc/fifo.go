package alloc

// fifo is a fixed-capacity ring of bucket indices: the free lists and the freed
// queue. First in, first out, so that reuse (and wear) is spread over buckets.
type fifo struct {
	buf  []uint32
	head int // index of the oldest entry
	n    int // number of entries
}

func newFIFO(capacity int) fifo { return fifo{buf: make([]uint32, capacity)} }

func (f *fifo) len() int { return f.n }

// push appends b; it reports false, and does nothing, when the fifo is full.
func (f *fifo) push(b uint32) bool {
	if f.n == len(f.buf) {
		return false
	}
	f.buf[(f.head+f.n)%len(f.buf)] = b
	f.n++
	return true
}

// pop removes the oldest entry.
func (f *fifo) pop() (uint32, bool) {
	if f.n == 0 {
		return 0, false
	}
	b := f.buf[f.head]
	f.head = (f.head + 1) % len(f.buf)
	f.n--
	return b, true
}

// each calls fn for every entry, oldest first.
func (f *fifo) each(fn func(b uint32)) {
	for i := 0; i < f.n; i++ {
		fn(f.buf[(f.head+i)%len(f.buf)])
	}
}
