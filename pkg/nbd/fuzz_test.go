package nbd

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"testing"
	"time"
)

// scriptConn is a net.Conn whose client side is a fixed byte string: reads
// return it and then EOF, writes are counted and dropped.
type scriptConn struct {
	r *bytes.Reader

	mu      sync.Mutex // guards the fields below
	closed  bool
	written int
}

func newScriptConn(b []byte) *scriptConn { return &scriptConn{r: bytes.NewReader(b)} }

func (c *scriptConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	return c.r.Read(p)
}

func (c *scriptConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return 0, net.ErrClosed
	}
	c.written += len(p)
	return len(p), nil
}

func (c *scriptConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *scriptConn) LocalAddr() net.Addr              { return &net.UnixAddr{Net: "unix", Name: "fuzz"} }
func (c *scriptConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Net: "unix", Name: "fuzz"} }
func (c *scriptConn) SetDeadline(time.Time) error      { return nil }
func (c *scriptConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptConn) SetWriteDeadline(time.Time) error { return nil }

// fuzzServer has a small read-write export "d" (512-byte blocks) and a
// read-only default export.
func fuzzServer(tb testing.TB) *Server {
	s := NewServer(Options{MaxInFlight: 4, MaxInFlightBytes: 1 << 20})
	if err := s.AddExport("d", NewMemoryBackend(64<<10), false); err != nil {
		tb.Fatal(err)
	}
	if err := s.AddExport("", NewMemoryBackend(4096), true); err != nil {
		tb.Fatal(err)
	}
	return s
}

// serveWithin runs fn and fails if it does not return in time.
func serveWithin(t *testing.T, fn func() error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = fn()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("server hung on fuzz input")
	}
}

func req(cmd Command, flags uint16, cookie, off uint64, length uint32, payload []byte) []byte {
	b := rawRequest(cmd, cookie, off, length)
	binary.BigEndian.PutUint16(b[4:6], flags)
	return append(b, payload...)
}

// FuzzRequestParse feeds arbitrary bytes to the transmission phase (no
// handshake) of a read-write export, and checks the header decoder and the
// validator on them directly.
func FuzzRequestParse(f *testing.F) {
	seeds := [][]byte{
		req(CmdRead, 0, 1, 0, 512, nil),
		req(CmdWrite, CmdFlagFUA, 2, 512, 512, make([]byte, 512)),
		append(req(CmdWrite, 0, 3, 0, 1024, make([]byte, 100)), req(CmdDisc, 0, 4, 0, 0, nil)...),
		req(CmdWrite, 0, 5, 1<<40, 512, make([]byte, 512)),
		req(CmdWrite, 0, 5, 0, 1<<31, nil),
		req(CmdFlush, 0, 6, 0, 0, nil),
		req(CmdTrim, CmdFlagFUA, 7, 0, 4096, nil),
		req(CmdWriteZeroes, CmdFlagNoHole|CmdFlagFastZero, 8, 0, 4096, nil),
		req(CmdDisc, 0, 9, 0, 0, nil),
		req(Command(77), 0xffff, 10, ^uint64(0), ^uint32(0), nil),
		append(req(CmdRead, 0, 1, 0, 512, nil), 0xde, 0xad),
		[]byte("garbage that is not a request at all......"),
	}
	for _, s := range seeds {
		f.Add(s)
	}
	s := fuzzServer(f)
	ex, _ := s.lookup("d")
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) >= requestHeaderSize {
			var h [requestHeaderSize]byte
			copy(h[:], data)
			if r, err := parseRequest(&h); err == nil {
				e := checkRequest(r, ex.limits, 64<<10)
				if e == 0 && (r.offset+uint64(r.length) > 64<<10 || r.offset%512 != 0) {
					t.Fatalf("accepted out-of-range or misaligned request %+v", r)
				}
			}
		}
		serveWithin(t, func() error { return s.ServeExportConn(newScriptConn(data), "d") })
	})
}

// FuzzOptionHaggling plays arbitrary bytes as a client from the first byte
// of the handshake on.
func FuzzOptionHaggling(f *testing.F) {
	opt := func(o uint32, data []byte) []byte {
		b := make([]byte, 16, 16+len(data))
		binary.BigEndian.PutUint64(b, magicIHAVEOPT)
		binary.BigEndian.PutUint32(b[8:], o)
		binary.BigEndian.PutUint32(b[12:], uint32(len(data)))
		return append(b, data...)
	}
	flags := func(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(cat(flags(3), opt(optGo, infoRequest("d", infoBlockSize)), req(CmdRead, 0, 1, 0, 512, nil)))
	f.Add(cat(flags(1), opt(optExportName, []byte("d")), req(CmdWrite, 0, 1, 0, 512, make([]byte, 512))))
	f.Add(cat(flags(3), opt(optList, nil), opt(optInfo, infoRequest("", infoName, infoDescription)), opt(optAbort, nil)))
	f.Add(cat(flags(3), opt(optStartTLS, nil), opt(optStructuredReply, nil), opt(99, []byte("x")), opt(optGo, infoRequest("nope"))))
	f.Add(cat(flags(3), opt(optInfo, []byte{0, 0, 0, 200, 1})))
	f.Add(cat(flags(0x80), opt(optGo, infoRequest("d"))))
	f.Add(cat(flags(3), []byte("IHAVEOPX"), []byte{0, 0, 0, 7, 0, 0, 0, 0}))
	f.Add(cat(flags(3), opt(optExportName, []byte("d")), req(CmdDisc, 0, 1, 0, 0, nil), []byte("trailing")))
	f.Add([]byte{})
	s := fuzzServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		serveWithin(t, func() error { return s.ServeConn(newScriptConn(data)) })
	})
}
