package device

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// crashModel is the durability model in the plainest form: the synced bytes,
// the bytes a running system sees, and the sector versions written since the
// last Sync in write order.
type crashModel struct {
	synced, current []byte
	log             []sectorWrite
}

type sectorWrite struct {
	s    int64
	data []byte
}

func newCrashModel(size int64) *crashModel {
	return &crashModel{synced: make([]byte, size), current: make([]byte, size)}
}

// apply mirrors a successful op.
func (m *crashModel) apply(o testOp) {
	switch o.kind {
	case OpWrite, OpDiscard:
		if o.kind == OpWrite {
			copy(m.current[o.off:], o.data)
		} else {
			clear(m.current[o.off : o.off+o.n])
		}
		for s := o.off / SectorSize; s*SectorSize < o.off+o.n; s++ {
			m.log = append(m.log, sectorWrite{s, slices.Clone(m.current[s*SectorSize : (s+1)*SectorSize])})
		}
	case OpSync:
		copy(m.synced, m.current)
		m.log = nil
	}
}

// checkCrash checks that image is a state the model allows after a crash in
// mode. exact says whether no sector had more than maxVersions unsynced
// versions, which KeepPrefix needs to be exact.
func (m *crashModel) checkCrash(image []byte, mode CrashMode, exact bool) error {
	switch {
	case mode == DropAll:
		if !bytes.Equal(image, m.synced) {
			return errors.New("DropAll: image differs from the last synced state")
		}
	case mode == KeepRandom || !exact:
		for s := int64(0); s < int64(len(image))/SectorSize; s++ {
			got := image[s*SectorSize : (s+1)*SectorSize]
			ok := bytes.Equal(got, m.synced[s*SectorSize:(s+1)*SectorSize])
			for _, w := range m.log {
				ok = ok || (w.s == s && bytes.Equal(got, w.data))
			}
			if !ok {
				return fmt.Errorf("%v: sector %d is neither its synced content nor one written since", mode, s)
			}
		}
	case mode == KeepPrefix:
		state := slices.Clone(m.synced)
		for cut := 0; ; cut++ {
			if bytes.Equal(image, state) {
				return nil
			}
			if cut == len(m.log) {
				return errors.New("KeepPrefix: image is no prefix of the unsynced writes")
			}
			w := m.log[cut]
			copy(state[w.s*SectorSize:], w.data)
		}
	}
	return nil
}

type testOp struct {
	kind Op
	off  int64
	n    int64
	data []byte // OpWrite
}

func (o testOp) String() string { return fmt.Sprintf("%v[%d,+%d)", o.kind, o.off, o.n) }

// genOps returns a random workload of count ops on a device of size bytes:
// unaligned and aligned writes, discards, reads and syncs. With bounded, it
// syncs before any sector gets more than maxVersions unsynced versions.
func genOps(rng *rand.Rand, size int64, count int, bounded bool) []testOp {
	var ops []testOp
	versions := map[int64]int{}
	for len(ops) < count {
		var o testOp
		switch k := rng.IntN(10); {
		case k < 5 || k == 9:
			o.kind = OpWrite
			if k == 9 {
				o.kind = OpDiscard
			}
			o.n = 1 + rng.Int64N(5*SectorSize)
			o.off = rng.Int64N(size - o.n + 1)
			if rng.IntN(2) == 0 { // sector-aligned
				o.off = o.off / SectorSize * SectorSize
				o.n = max(SectorSize, o.n/SectorSize*SectorSize)
			}
			if o.kind == OpWrite {
				o.data = make([]byte, o.n)
				for i := range o.data {
					o.data[i] = byte(rng.IntN(255) + 1)
				}
			}
		case k < 8:
			o.kind = OpRead
			o.n = rng.Int64N(8 * SectorSize)
			o.off = rng.Int64N(size - o.n + 1)
		default:
			o.kind = OpSync
		}
		if bounded && (o.kind == OpWrite || o.kind == OpDiscard) {
			full := false
			for s := o.off / SectorSize; s*SectorSize < o.off+o.n; s++ {
				full = full || versions[s] == maxVersions
			}
			if full {
				ops = append(ops, testOp{kind: OpSync})
				clear(versions)
			}
			for s := o.off / SectorSize; s*SectorSize < o.off+o.n; s++ {
				versions[s]++
			}
		}
		if o.kind == OpSync {
			clear(versions)
		}
		ops = append(ops, o)
	}
	return ops
}

// runOps runs ops on c and mirrors the successful ones in a model. Reads are
// checked against the model, and after each Sync the image must equal the
// model. At the first ErrCrashed it checks that every later op fails the same
// way, and returns the number of ops that succeeded.
func runOps(t *testing.T, c *Crash, ops []testOp) (*crashModel, int) {
	t.Helper()
	m := newCrashModel(c.Size())
	for i, o := range ops {
		var err error
		switch o.kind {
		case OpWrite:
			_, err = c.WriteAt(o.data, o.off)
		case OpDiscard:
			err = c.Discard(o.off, o.n)
		case OpSync:
			err = c.Sync()
		case OpRead:
			buf := make([]byte, o.n)
			if _, err = c.ReadAt(buf, o.off); err == nil && !bytes.Equal(buf, m.current[o.off:o.off+o.n]) {
				t.Fatalf("op %d %v: read returns other bytes than the model", i, o)
			}
		}
		if errors.Is(err, ErrCrashed) {
			for j, o := range ops[i+1:] {
				if err := runOne(c, o); !errors.Is(err, ErrCrashed) {
					t.Fatalf("op %d %v after the crash: %v, want ErrCrashed", i+1+j, o, err)
				}
			}
			return m, i
		}
		if err != nil {
			t.Fatalf("op %d %v: %v", i, o, err)
		}
		m.apply(o)
		if o.kind == OpSync && !bytes.Equal(imageBytes(t, c), m.synced) {
			t.Fatalf("op %d: after Sync the image is not the synced state", i)
		}
		if err := c.check(); err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
	}
	return m, len(ops)
}

func runOne(c *Crash, o testOp) error {
	switch o.kind {
	case OpWrite:
		_, err := c.WriteAt(o.data, o.off)
		return err
	case OpDiscard:
		return c.Discard(o.off, o.n)
	case OpSync:
		return c.Sync()
	default:
		_, err := c.ReadAt(make([]byte, o.n), o.off)
		return err
	}
}

func imageBytes(t *testing.T, c *Crash) []byte {
	t.Helper()
	img := make([]byte, c.Size())
	if _, err := c.Image().ReadAt(img, 0); err != nil {
		t.Fatal(err)
	}
	return img
}

const crashTestSize = 64 * SectorSize

// TestCrashModes runs random workloads, crashes at their end in every mode, and
// checks the image against the model. It also checks that KeepRandom and
// KeepPrefix do keep some unsynced writes and drop others.
func TestCrashModes(t *testing.T) {
	t.Parallel()
	seeds := 300
	if testing.Short() {
		seeds = 50
	}
	for _, mode := range []CrashMode{DropAll, KeepRandom, KeepPrefix} {
		for _, bounded := range []bool{true, false} {
			t.Run(fmt.Sprintf("%v/bounded=%v", mode, bounded), func(t *testing.T) {
				t.Parallel()
				var kept, dropped bool
				for seed := range uint64(seeds) {
					rng := rand.New(rand.NewPCG(seed, 1))
					c := NewCrash(NewMem(crashTestSize))
					m, _ := runOps(t, c, genOps(rng, crashTestSize, rng.IntN(80), bounded))
					if err := c.Crash(rand.New(rand.NewPCG(seed, 2)), mode); err != nil {
						t.Fatal(err)
					}
					img := imageBytes(t, c)
					if err := m.checkCrash(img, mode, bounded); err != nil {
						t.Fatalf("seed %d: %v", seed, err)
					}
					if len(m.log) > 0 {
						kept = kept || !bytes.Equal(img, m.synced)
						dropped = dropped || !bytes.Equal(img, m.current)
					}
					if _, err := c.ReadAt(make([]byte, 1), 0); !errors.Is(err, ErrCrashed) {
						t.Fatalf("ReadAt after Crash: %v", err)
					}
					if err := c.Crash(nil, mode); !errors.Is(err, ErrCrashed) {
						t.Fatalf("second Crash: %v", err)
					}
				}
				if mode != DropAll && !(kept && dropped) {
					t.Fatalf("%v over %d seeds: kept some unsynced write %v, dropped some %v", mode, seeds, kept, dropped)
				}
			})
		}
	}
}

// TestCrashDeterministic: the same workload and seed give the same image.
func TestCrashDeterministic(t *testing.T) {
	t.Parallel()
	for _, mode := range []CrashMode{KeepRandom, KeepPrefix} {
		ops := genOps(rand.New(rand.NewPCG(7, 7)), crashTestSize, 200, false)
		images := map[string]bool{}
		for seed := range uint64(4) {
			var first []byte
			for range 2 {
				c := NewCrash(NewMem(crashTestSize))
				runOps(t, c, ops)
				if err := c.Crash(rand.New(rand.NewPCG(seed, 0)), mode); err != nil {
					t.Fatal(err)
				}
				img := imageBytes(t, c)
				if first != nil && !bytes.Equal(first, img) {
					t.Fatalf("%v seed %d: two runs give different images", mode, seed)
				}
				first = img
			}
			images[string(first)] = true
		}
		if len(images) < 2 {
			t.Fatalf("%v: four seeds give one image", mode)
		}
	}
}

// TestCrashAt crashes a workload at every IO in turn.
func TestCrashAt(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(3, 4))
	ops := genOps(rng, crashTestSize, 60, true)
	c := NewCrash(NewMem(crashTestSize))
	runOps(t, c, ops)
	n := c.IOs()
	var mutating []int // index in ops of each IO
	for i, o := range ops {
		if o.kind != OpRead {
			mutating = append(mutating, i)
		}
	}
	if int(n) != len(mutating) {
		t.Fatalf("IOs() = %d, want %d", n, len(mutating))
	}
	for _, mode := range []CrashMode{DropAll, KeepRandom, KeepPrefix} {
		for k := range n + 1 {
			c := NewCrash(NewMem(crashTestSize))
			c.CrashAt(k, rand.New(rand.NewPCG(k, 0)), mode)
			m, done := runOps(t, c, ops)
			if k == n {
				if done != len(ops) || c.Crashed() {
					t.Fatalf("crash point past the last IO: %d ops done, crashed %v", done, c.Crashed())
				}
				continue
			}
			if done != mutating[k] || !c.Crashed() {
				t.Fatalf("%v CrashAt(%d): crashed %v at op %d, want op %d", mode, k, c.Crashed(), done, mutating[k])
			}
			if err := m.checkCrash(imageBytes(t, c), mode, true); err != nil {
				t.Fatalf("%v CrashAt(%d): %v", mode, k, err)
			}
		}
	}
}

// TestCrashWhen crashes at the first write to a given sector.
func TestCrashWhen(t *testing.T) {
	t.Parallel()
	c := NewCrash(NewMem(crashTestSize))
	c.CrashWhen(func(_ uint64, op Op, off, n int64) bool {
		return op == OpWrite && off <= 10*SectorSize && 10*SectorSize < off+n
	}, nil, DropAll)
	if _, err := c.WriteAt(make([]byte, SectorSize), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WriteAt(make([]byte, 3*SectorSize), 9*SectorSize); !errors.Is(err, ErrCrashed) {
		t.Fatalf("write to sector 10: %v, want ErrCrashed", err)
	}
}

// TestCrashVersionBound: a sector written many times without a Sync keeps at
// most maxVersions versions, and a crash leaves one of its versions.
func TestCrashVersionBound(t *testing.T) {
	t.Parallel()
	for _, mode := range []CrashMode{KeepRandom, KeepPrefix} {
		for seed := range uint64(20) {
			c := NewCrash(NewMem(crashTestSize))
			for i := range 100 {
				c.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, SectorSize), 0)
			}
			if got := len(c.overlay[0]); got != maxVersions {
				t.Fatalf("%d versions kept, want %d", got, maxVersions)
			}
			if err := c.check(); err != nil {
				t.Fatal(err)
			}
			c.Crash(rand.New(rand.NewPCG(seed, 0)), mode)
			got := imageBytes(t, c)[0]
			if got != 0 && got <= 100-maxVersions {
				t.Fatalf("%v: sector holds version %d, not one of the kept ones or the synced one", mode, got)
			}
		}
	}
}

func TestCrashCloseThenCrash(t *testing.T) {
	t.Parallel()
	img := NewMem(crashTestSize)
	c := NewCrash(img)
	c.WriteAt([]byte("synced"), 0)
	c.Sync()
	c.WriteAt([]byte("unsync"), 0)
	if c.Pending() != 1 {
		t.Fatalf("Pending() = %d", c.Pending())
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Sync(); !errors.Is(err, ErrClosed) {
		t.Fatalf("Sync after Close: %v", err)
	}
	if err := c.Crash(nil, DropAll); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 6)
	if _, err := img.ReadAt(buf, 0); err != nil || string(buf) != "synced" {
		t.Fatalf("image after Close and Crash: %q, %v", buf, err)
	}
	if err := c.Close(); !errors.Is(err, ErrCrashed) {
		t.Fatalf("Close after Crash: %v", err)
	}
}

// TestCrashSyncFailure: a Sync that fails to write the image keeps the overlay,
// and a later Sync makes everything durable.
func TestCrashSyncFailure(t *testing.T) {
	t.Parallel()
	mem := NewMem(crashTestSize)
	f := NewFault(mem, FailAfter(OpWrite, 0, nil))
	c := NewCrash(f)
	c.WriteAt([]byte("data"), 100)
	if err := c.Sync(); !errors.Is(err, ErrInjected) {
		t.Fatalf("Sync: %v, want the injected error", err)
	}
	buf := make([]byte, 4)
	if c.ReadAt(buf, 100); string(buf) != "data" {
		t.Fatalf("read after a failed Sync: %q", buf)
	}
	f.SetInjector(nil)
	if err := c.Sync(); err != nil {
		t.Fatal(err)
	}
	if mem.ReadAt(buf, 100); string(buf) != "data" {
		t.Fatalf("image after Sync: %q", buf)
	}
}

// TestCrashConcurrent races IO, Syncs and a Crash; run with -race.
func TestCrashConcurrent(t *testing.T) {
	t.Parallel()
	c := NewCrash(NewMem(crashTestSize))
	var wg sync.WaitGroup
	for g := range 3 {
		wg.Go(func() {
			buf := make([]byte, 3*SectorSize)
			for i := 0; ; i++ {
				off := int64((g*7+i)%60) * SectorSize
				var err error
				switch i % 4 {
				case 0, 1:
					_, err = c.WriteAt(buf, off+int64(i%3))
				case 2:
					_, err = c.ReadAt(buf, off)
				case 3:
					err = c.Sync()
				}
				if errors.Is(err, ErrCrashed) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	for c.IOs() < 300 {
		c.Sync()
	}
	if err := c.Crash(rand.New(rand.NewPCG(1, 1)), KeepRandom); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
}

func TestCrashBounds(t *testing.T) {
	t.Parallel()
	testDeviceIO(t, NewCrash(NewMem(1<<20)))
}
