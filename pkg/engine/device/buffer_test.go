package device

import (
	"sync"
	"testing"
)

func TestAlignedBuffer(t *testing.T) {
	t.Parallel()
	for _, n := range []int{0, 1, 511, 512, 4095, 4096, 4097, 12288, 65536, 1<<20 + 1} {
		b := AlignedBuffer(n)
		if len(b) != n || cap(b) != n {
			t.Fatalf("AlignedBuffer(%d): len %d cap %d", n, len(b), cap(b))
		}
		if n > 0 && !aligned(b) {
			t.Fatalf("AlignedBuffer(%d) is not %d-aligned", n, Alignment)
		}
		for _, c := range b {
			if c != 0 {
				t.Fatalf("AlignedBuffer(%d) is not zeroed", n)
			}
		}
	}
}

func TestBufferPool(t *testing.T) {
	t.Parallel()
	p := NewBufferPool(8192)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 1000 {
				b := p.Get()
				if len(b) != 8192 || !aligned(b) {
					t.Errorf("Get: len %d aligned %v", len(b), aligned(b))
					return
				}
				b[0]++
				p.Put(b[:100]) // a resliced buffer is fine
			}
		})
	}
	wg.Wait()

	for name, b := range map[string][]byte{
		"other size":  AlignedBuffer(4096),
		"unaligned":   AlignedBuffer(8193)[1:],
		"plain slice": make([]byte, 10),
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Put of a buffer of %s did not panic", name)
				}
			}()
			p.Put(b)
		}()
	}
}

func TestBufferPoolAllocs(t *testing.T) {
	p := NewBufferPool(4096)
	p.Put(p.Get())
	if n := testing.AllocsPerRun(100, func() { p.Put(p.Get()) }); n > 0 {
		t.Fatalf("Get+Put allocates %v times", n)
	}
}
