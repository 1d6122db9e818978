package nbd

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestShutdownDrains starts slow writes, shuts the server down while they
// run, and checks that every admitted write was answered and applied before
// the final flush, and that the server is closed afterwards.
func TestShutdownDrains(t *testing.T) {
	s := NewServer(Options{})
	hb := newHookBackend(1 << 20)
	started := make(chan struct{}, 64)
	hb.onWrite = func(int64) error {
		started <- struct{}{}
		time.Sleep(50 * time.Millisecond)
		return nil
	}
	var writesAtFlush atomic.Int64
	var written atomic.Int64
	hb.onFlush = func() error {
		writesAtFlush.Store(written.Load())
		return nil
	}
	wrapped := &countingBackend{hookBackend: hb, written: &written}
	if err := s.AddExport("d", wrapped, false); err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/s"
	l, err := ListenUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	nc, err := dialUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	c, _, _ := goExport(t, nc, "d")
	var calls []*call
	for i := range 8 {
		cl, err := c.start(CmdWrite, 0, uint64(i)*4096, 4096, bytes.Repeat([]byte{9}, 4096))
		if err != nil {
			t.Fatal(err)
		}
		calls = append(calls, cl)
	}
	for range 8 {
		<-started
	}
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	for i, cl := range calls {
		if e, _, err := c.wait(cl); err != nil || e != 0 {
			t.Fatalf("write %d: %v %v", i, e, err)
		}
	}
	if written.Load() != 8 || writesAtFlush.Load() != 8 {
		t.Fatalf("written %d, flushed after %d", written.Load(), writesAtFlush.Load())
	}
	c.waitClosed(t)
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := dialUnix(path); err == nil {
		t.Fatal("socket still accepts after Shutdown")
	}
	if err := s.AddExport("x", NewMemoryBackend(512), false); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("AddExport after Shutdown: %v", err)
	}
}

type countingBackend struct {
	*hookBackend
	written *atomic.Int64
}

func (c *countingBackend) WriteAt(p []byte, off int64, fua bool) error {
	err := c.hookBackend.WriteAt(p, off, fua)
	c.written.Add(1)
	return err
}

func TestShutdownTimeout(t *testing.T) {
	s := NewServer(Options{})
	hb := newHookBackend(1 << 20)
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	hb.onRead = func(int64) error {
		entered <- struct{}{}
		<-release
		return nil
	}
	if err := s.AddExport("d", hb, false); err != nil {
		t.Fatal(err)
	}
	nc, done := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "d")
	if _, err := c.start(CmdRead, 0, 0, 512, nil); err != nil {
		t.Fatal(err)
	}
	<-entered
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a stuck backend: %v", err)
	}
	c.waitClosed(t)
	close(release)
	waitDone(t, done)
}

func TestShutdownDuringHandshake(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, done := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle)
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := waitDone(t, done); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("ServeConn: %v", err)
	}
}

func TestRemoveExport(t *testing.T) {
	s, mb := newTestServer(t, Options{})
	a, doneA := pipeConn(t, s)
	ca, _, _ := goExport(t, a, "disk")
	b, _ := pipeConn(t, s)
	cb, _, _ := goExport(t, b, "ro")
	ca.write(t, 0, make([]byte, 512), 0)
	flushes := mb.Stats().Flushes
	if err := s.RemoveExport(t.Context(), "disk"); err != nil {
		t.Fatal(err)
	}
	ca.waitClosed(t)
	if err := waitDone(t, doneA); err != nil {
		t.Fatalf("ServeConn of a removed export: %v", err)
	}
	if mb.Stats().Flushes != flushes+1 {
		t.Fatal("RemoveExport did not flush")
	}
	cb.read(t, 0, 512)
	if err := s.RemoveExport(t.Context(), "disk"); !errors.Is(err, ErrUnknownExport) {
		t.Fatalf("second RemoveExport: %v", err)
	}
	nc, _ := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle)
	if _, typ := rc.infoGo(optGo, "disk"); typ != repErrUnknown {
		t.Fatalf("GO on removed export: %#x", typ)
	}
}
