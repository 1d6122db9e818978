package nbd

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestReadWriteRoundTrip(t *testing.T) {
	s, mb := newTestServer(t, Options{})
	nc, done := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "disk")
	rng := rand.New(rand.NewPCG(1, 2))
	model := make([]byte, testSize)
	for range 200 {
		off := uint64(rng.IntN(testSize/512)) * 512
		n := uint32(min(uint64(rng.IntN(64)+1)*512, testSize-off))
		p := make([]byte, n)
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
		c.write(t, off, p, 0)
		copy(model[off:], p)
		if got := c.read(t, off, n); !bytes.Equal(got, p) {
			t.Fatalf("read back %d@%d differs", n, off)
		}
	}
	c.disconnect(t)
	waitDone(t, done)
	if !bytes.Equal(mb.Bytes(), model) {
		t.Fatal("backend differs from model")
	}
}

// TestConcurrentOutOfOrder sends many requests at once to a backend that
// answers later requests first, and checks that every reply carries the
// right data and that they did come back out of order.
func TestConcurrentOutOfOrder(t *testing.T) {
	s := NewServer(Options{MaxInFlight: 32})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	hb := newHookBackend(1 << 20)
	for i := range 256 {
		copy(hb.data[i*4096:], fmt.Sprintf("block %d", i))
	}
	hb.onRead = func(off int64) error {
		// Blocks with a low index wait longest.
		time.Sleep(time.Duration(256-off/4096) * 50 * time.Microsecond)
		return nil
	}
	if err := s.AddExport("slow", hb, false); err != nil {
		t.Fatal(err)
	}
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "slow")

	calls := make([]*call, 256)
	for i := range calls {
		var err error
		if calls[i], err = c.start(CmdRead, 0, uint64(i)*4096, 4096, nil); err != nil {
			t.Fatal(err)
		}
	}
	for i, cl := range calls {
		e, d, err := c.wait(cl)
		if err != nil || e != 0 {
			t.Fatalf("read %d: %v %v", i, e, err)
		}
		want := fmt.Sprintf("block %d", i)
		if !bytes.HasPrefix(d, []byte(want)) {
			t.Fatalf("read %d returned %q", i, d[:len(want)])
		}
	}
	c.mu.Lock()
	order := append([]uint64(nil), c.order...)
	c.mu.Unlock()
	inOrder := true
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			inOrder = false
		}
	}
	if inOrder {
		t.Fatal("replies came back in request order; requests were not processed concurrently")
	}
	if p := hb.peak.Load(); p < 2 || p > 32 {
		t.Fatalf("peak concurrency %d, want 2..32 (MaxInFlight)", p)
	}
}

func TestInFlightBytesBound(t *testing.T) {
	s := NewServer(Options{MaxInFlight: 64, MaxInFlightBytes: 64 << 10})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	hb := newHookBackend(4 << 20)
	hb.onWrite = func(int64) error { time.Sleep(time.Millisecond); return nil }
	if err := s.AddExport("d", hb, false); err != nil {
		t.Fatal(err)
	}
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "d")
	var wg sync.WaitGroup
	for i := range 64 {
		wg.Go(func() { c.write(t, uint64(i)*32<<10, make([]byte, 32<<10), 0) })
	}
	wg.Wait()
	if p := hb.peak.Load(); p > 2 {
		t.Fatalf("peak concurrency %d with a 64 KiB budget of 32 KiB writes", p)
	}
	// A request bigger than the budget is still served, alone.
	c.write(t, 0, make([]byte, 1<<20), 0)
}

func TestFUAAndFlushReachBackend(t *testing.T) {
	s, mb := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "disk")
	c.write(t, 0, make([]byte, 4096), 0)
	c.write(t, 4096, make([]byte, 4096), CmdFlagFUA)
	c.expect(t, 0, CmdWriteZeroes, CmdFlagFUA|CmdFlagNoHole, 8192, 4096, nil)
	c.expect(t, 0, CmdFlush, 0, 0, 0, nil)
	c.expect(t, 0, CmdTrim, CmdFlagFUA, 0, 4096, nil) // Trim + Flush
	c.expect(t, 0, CmdRead, CmdFlagFUA, 0, 512, nil)  // FUA is accepted on any command
	c.expect(t, 0, CmdFlush, CmdFlagFUA, 0, 0, nil)
	st := mb.Stats()
	if st.FUAWrites != 2 || st.Flushes != 3 || st.Trims != 1 || st.WriteZeroes != 1 {
		t.Fatalf("backend saw %+v", st)
	}
	ss := s.Stats()
	if ss.Commands[CmdWrite].Requests != 2 || ss.Commands[CmdFlush].Requests != 2 || ss.Commands[CmdWrite].Bytes != 8192 {
		t.Fatalf("server stats %+v", ss)
	}
}

func TestTrimAndWriteZeroes(t *testing.T) {
	s, mb := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "disk")
	c.write(t, 0, bytes.Repeat([]byte{0xff}, 3*4096), 0)
	c.expect(t, 0, CmdWriteZeroes, 0, 4096, 4096, nil)
	got := c.read(t, 0, 3*4096)
	want := append(append(bytes.Repeat([]byte{0xff}, 4096), make([]byte, 4096)...), bytes.Repeat([]byte{0xff}, 4096)...)
	if !bytes.Equal(got, want) {
		t.Fatal("WRITE_ZEROES did not zero exactly its range")
	}
	c.expect(t, 0, CmdTrim, 0, 0, 4096, nil)
	c.expect(t, 0, CmdTrim, 0, 0, 0, nil)
	if mb.Stats().Trims != 1 {
		t.Fatal("zero-length trim reached the backend")
	}
}

func TestBackendErrorsAreReplies(t *testing.T) {
	var mu sync.Mutex
	var observed []RequestInfo
	s := NewServer(Options{Observer: ObserverFunc(func(i RequestInfo) {
		mu.Lock()
		observed = append(observed, i)
		mu.Unlock()
	})})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	hb := newHookBackend(1 << 20)
	hb.onRead = func(off int64) error {
		switch off {
		case 0:
			return fmt.Errorf("engine: bucket read: %w", syscall.EIO)
		case 4096:
			return fmt.Errorf("weird failure")
		}
		return nil
	}
	hb.onWrite = func(off int64) error {
		switch off {
		case 0:
			return fmt.Errorf("engine: no free buckets: %w", syscall.ENOSPC)
		case 4096:
			return syscall.EROFS
		case 8192:
			return EINVAL
		}
		return nil
	}
	var flushErr atomic.Bool
	hb.onFlush = func() error {
		if flushErr.Load() {
			return syscall.EDQUOT
		}
		return nil
	}
	if err := s.AddExport("d", hb, false); err != nil {
		t.Fatal(err)
	}
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "d")
	c.expect(t, EIO, CmdRead, 0, 0, 4096, nil)
	c.expect(t, EIO, CmdRead, 0, 4096, 4096, nil)
	c.expect(t, ENOSPC, CmdWrite, 0, 0, 512, make([]byte, 512))
	c.expect(t, EPERM, CmdWrite, 0, 4096, 512, make([]byte, 512))
	c.expect(t, EINVAL, CmdWrite, 0, 8192, 512, make([]byte, 512))
	flushErr.Store(true)
	c.expect(t, ENOSPC, CmdFlush, 0, 0, 0, nil)
	flushErr.Store(false)
	// The connection is still fine.
	c.write(t, 16384, []byte(bytes.Repeat([]byte("x"), 512)), 0)
	if got := c.read(t, 16384, 512); got[0] != 'x' {
		t.Fatal("read after errors returned wrong data")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(observed) != 8 || observed[0].Command != CmdRead || observed[0].Errno != EIO || observed[0].Export != "d" {
		t.Fatalf("observer saw %+v", observed)
	}
}

func TestReadOnlyExport(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	c, _, flags := goExport(t, nc, "ro")
	if flags&FlagReadOnly == 0 || flags&(FlagSendFUA|FlagSendTrim|FlagSendWriteZeroes) != 0 {
		t.Fatalf("read-only flags %#x", flags)
	}
	c.expect(t, EPERM, CmdWrite, 0, 0, 512, make([]byte, 512))
	c.expect(t, EPERM, CmdWrite, CmdFlagFUA, 0, 512, make([]byte, 512))
	c.expect(t, EPERM, CmdTrim, 0, 0, 512, nil)
	c.expect(t, EPERM, CmdWriteZeroes, 0, 0, 512, nil)
	c.expect(t, EINVAL, CmdRead, CmdFlagFUA, 0, 512, nil) // FUA not advertised
	c.expect(t, 0, CmdFlush, 0, 0, 0, nil)
	c.read(t, 0, 4096)
}

// TestDisconnectDrains sends slow writes followed by NBD_CMD_DISC: every
// write must be answered and applied before the server closes.
func TestDisconnectDrains(t *testing.T) {
	s := NewServer(Options{})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	hb := newHookBackend(1 << 20)
	hb.onWrite = func(int64) error { time.Sleep(20 * time.Millisecond); return nil }
	if err := s.AddExport("d", hb, false); err != nil {
		t.Fatal(err)
	}
	nc, done := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "d")
	var calls []*call
	for i := range 16 {
		cl, err := c.start(CmdWrite, 0, uint64(i)*4096, 4096, bytes.Repeat([]byte{byte(i + 1)}, 4096))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, cl)
	}
	c.disconnect(t)
	for i, cl := range calls {
		if e, _, err := c.wait(cl); err != nil || e != 0 {
			t.Fatalf("write %d: %v %v", i, e, err)
		}
	}
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
	data := hb.Bytes()
	for i := range 16 {
		if data[i*4096] != byte(i+1) {
			t.Fatalf("write %d not applied", i)
		}
	}
}

func TestZeroLengthRequests(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "disk")
	c.expect(t, 0, CmdRead, 0, 4096, 0, nil)
	c.expect(t, 0, CmdWrite, 0, 4096, 0, nil)
	c.expect(t, 0, CmdWriteZeroes, 0, testSize, 0, nil) // at the very end
	c.read(t, 0, 512)
}

func TestExportGrows(t *testing.T) {
	s, mb := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "disk")
	c.expect(t, EINVAL, CmdRead, 0, testSize, 4096, nil)
	mb.Resize(testSize + 4096)
	c.expect(t, 0, CmdRead, 0, testSize, 4096, nil)
}

func TestServeOverUnixSocket(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	path := t.TempDir() + "/nbd.sock"
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			nc, err := dialUnix(path)
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			c, _, _ := goExport(t, nc, "disk")
			p := bytes.Repeat([]byte{byte(i)}, 64<<10)
			c.write(t, uint64(i)<<20, p, 0)
			if !bytes.Equal(c.read(t, uint64(i)<<20, 64<<10), p) {
				t.Error("data mismatch")
			}
			c.disconnect(t)
		})
	}
	wg.Wait()
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != ErrServerClosed {
		t.Fatalf("Serve returned %v", err)
	}
}

// TestInlineTakeover: a request the reader executes itself (the backend has
// been fast) that then blocks must not stop the connection: another
// goroutine takes over reading, and later requests are answered while the
// first is still blocked.
func TestInlineTakeover(t *testing.T) {
	s := NewServer(Options{})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	hb := newHookBackend(1 << 20)
	entered, release := make(chan struct{}), make(chan struct{})
	var blocked atomic.Bool
	hb.onRead = func(off int64) error {
		if off == 0 && blocked.CompareAndSwap(false, true) {
			close(entered)
			<-release
		}
		return nil
	}
	if err := s.AddExport("disk", hb, false); err != nil {
		t.Fatal(err)
	}
	c, done := socketPairClient(t, s, "disk")
	for i := range 20 {
		c.read(t, uint64(1+i)*4096, 4096)
	}
	sc0 := onlyConn(t, s)
	// However slow this machine was for the reads above, the next request
	// is to be executed inline: it arrives alone and the backend looks fast.
	sc0.svcTime.Store(0)
	slow, err := c.start(CmdRead, 0, 0, 4096, nil)
	if err != nil {
		t.Fatal(err)
	}
	<-entered
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	defer unblock() // so that a failure does not leave Shutdown waiting
	for i := range 20 {
		// Answered while the first read is blocked (c.read fails after
		// 20 s without a reply).
		c.read(t, uint64(1+i)*4096, 4096)
	}
	if gen := sc0.rstate.Load() >> 1; gen == 0 {
		t.Fatal("the blocked read was not executed by the reader; the test did not exercise the takeover")
	}
	unblock()
	if e, _, err := c.wait(slow); err != nil || e != 0 {
		t.Fatalf("blocked read: errno %v err %v", e, err)
	}
	c.read(t, 0, 4096)
	c.disconnect(t)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
}

// onlyConn returns the server's only connection.
func onlyConn(t *testing.T, s *Server) *conn {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 1 {
		t.Fatalf("%d connections, want 1", len(s.conns))
	}
	for c := range s.conns {
		return c
	}
	return nil
}

// TestDeferredRepliesFewSlots pipelines many fast reads at a connection
// with few slots: the reader executes them itself and holds their replies
// back, so it must write them before it waits for a slot they hold.
func TestDeferredRepliesFewSlots(t *testing.T) {
	for _, opts := range []Options{{MaxInFlight: 2}, {MaxInFlightBytes: 8 << 10}} {
		t.Run(fmt.Sprintf("%+v", opts), func(t *testing.T) {
			s, mb := newTestServer(t, opts)
			for i := range 64 {
				copy(mb.data[i*4096:], fmt.Sprintf("block %d", i))
			}
			c, done := socketPairClient(t, s, "disk")
			c.read(t, 0, 512) // the connection is registered
			onlyConn(t, s).svcTime.Store(0)
			calls := make([]*call, 256)
			for i := range calls {
				var err error
				if calls[i], err = c.start(CmdRead, 0, uint64(i%64)*4096, 4096, nil); err != nil {
					t.Fatal(err)
				}
			}
			for i, cl := range calls {
				e, d, err := c.wait(cl)
				if err != nil || e != 0 {
					t.Fatalf("read %d: %v %v", i, e, err)
				}
				if want := fmt.Sprintf("block %d", i%64); !bytes.HasPrefix(d, []byte(want)) {
					t.Fatalf("read %d returned %q", i, d[:len(want)])
				}
			}
			c.disconnect(t)
			if err := waitDone(t, done); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// socketPairClient serves export name on a unix socket pair without a
// handshake (the kernel attach path) and returns a client on the other end.
func socketPairClient(t *testing.T, s *Server, name string) (*client, <-chan error) {
	t.Helper()
	kf, sc, err := SocketPair()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeExportConn(sc, name) }()
	cc, err := net.FileConn(kf)
	kf.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return newClient(cc, bufio.NewReader(cc)), done
}
