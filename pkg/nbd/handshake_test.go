package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const testSize = 8 << 20

// hookBackend wraps a MemoryBackend with per-call hooks (delays, faults) and
// a concurrency gauge.
type hookBackend struct {
	*MemoryBackend
	onRead, onWrite func(off int64) error
	onFlush         func() error
	cur, peak       atomic.Int64
}

func newHookBackend(size int64) *hookBackend {
	return &hookBackend{MemoryBackend: NewMemoryBackend(size)}
}

func (h *hookBackend) enter() func() {
	n := h.cur.Add(1)
	for {
		p := h.peak.Load()
		if n <= p || h.peak.CompareAndSwap(p, n) {
			break
		}
	}
	return func() { h.cur.Add(-1) }
}

func (h *hookBackend) ReadAt(p []byte, off int64) error {
	defer h.enter()()
	if h.onRead != nil {
		if err := h.onRead(off); err != nil {
			return err
		}
	}
	return h.MemoryBackend.ReadAt(p, off)
}

func (h *hookBackend) WriteAt(p []byte, off int64, fua bool) error {
	defer h.enter()()
	if h.onWrite != nil {
		if err := h.onWrite(off); err != nil {
			return err
		}
	}
	return h.MemoryBackend.WriteAt(p, off, fua)
}

func (h *hookBackend) Flush() error {
	if h.onFlush != nil {
		if err := h.onFlush(); err != nil {
			return err
		}
	}
	return h.MemoryBackend.Flush()
}

// newTestServer returns a server with a read-write export "disk" and a
// read-only export "ro" (with a description), both memory backed.
func newTestServer(t testing.TB, opts Options) (*Server, *MemoryBackend) {
	t.Helper()
	s := NewServer(opts)
	mb := NewMemoryBackend(testSize)
	if err := s.AddExport("disk", mb, false); err != nil {
		t.Fatal(err)
	}
	ro := NewMemoryBackend(1 << 20)
	c := DefaultCapabilities()
	c.Description = "read-only test disk"
	ro.SetCapabilities(c)
	if err := s.AddExport("ro", ro, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	return s, mb
}

// shutdownAndCheck shuts s down and checks its invariants.
func shutdownAndCheck(t testing.TB, s *Server) {
	t.Helper()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if err := s.check(); err != nil {
		t.Error(err)
	}
}

const rwFlags = FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn

func TestHandshakeExportName(t *testing.T) {
	for _, noZeroes := range []bool{false, true} {
		s, mb := newTestServer(t, Options{})
		copy(mb.data[4096:], "hello")
		nc, done := pipeConn(t, s)
		rc := newRawClient(t, nc)
		hflags := rc.greet(map[bool]uint32{false: cflagFixedNewstyle, true: cflagFixedNewstyle | cflagNoZeroes}[noZeroes])
		if hflags != hflagFixedNewstyle|hflagNoZeroes {
			t.Fatalf("handshake flags %#x", hflags)
		}
		rc.sendOpt(optExportName, []byte("disk"))
		b := rc.mustRead(10)
		if size := binary.BigEndian.Uint64(b); size != testSize {
			t.Fatalf("size %d", size)
		}
		if f := binary.BigEndian.Uint16(b[8:]); f != rwFlags {
			t.Fatalf("flags %#x, want %#x", f, rwFlags)
		}
		if !noZeroes {
			if z := rc.mustRead(124); !bytes.Equal(z, make([]byte, 124)) {
				t.Fatal("padding is not zero")
			}
		}
		_ = nc.SetDeadline(time.Time{})
		c := newClient(nc, rc.br)
		if got := c.read(t, 4096, 512); !bytes.HasPrefix(got, []byte("hello")) {
			t.Fatalf("read %q", got[:5])
		}
		c.disconnect(t)
		if err := waitDone(t, done); err != nil {
			t.Fatalf("ServeConn: %v", err)
		}
	}
}

func TestHandshakeExportNameUnknownCloses(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, done := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle | cflagNoZeroes)
	rc.sendOpt(optExportName, []byte("nope"))
	if _, err := rc.read(1); err == nil {
		t.Fatal("server answered an unknown EXPORT_NAME")
	}
	if err := waitDone(t, done); err == nil {
		t.Fatal("ServeConn returned nil for an unknown export")
	}
}

func TestHandshakeInfoAndGo(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, done := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle | cflagNoZeroes)

	// INFO with every request type, some twice and an unknown one.
	infos, typ := rc.infoGo(optInfo, "ro", infoName, infoDescription, infoBlockSize, 77, infoName)
	if typ != repAck {
		t.Fatalf("INFO reply %#x", typ)
	}
	ie := infos[infoExport]
	if binary.BigEndian.Uint64(ie) != 1<<20 {
		t.Fatalf("INFO size %d", binary.BigEndian.Uint64(ie))
	}
	if f := binary.BigEndian.Uint16(ie[8:]); f != FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn {
		t.Fatalf("INFO flags %#x", f)
	}
	if string(infos[infoName]) != "ro" || string(infos[infoDescription]) != "read-only test disk" {
		t.Fatalf("name %q description %q", infos[infoName], infos[infoDescription])
	}
	bs := infos[infoBlockSize]
	if len(bs) != 12 || binary.BigEndian.Uint32(bs) != 512 || binary.BigEndian.Uint32(bs[4:]) != 4096 ||
		binary.BigEndian.Uint32(bs[8:]) != 32<<20 {
		t.Fatalf("block size %x", bs)
	}

	// INFO and GO for an unknown export are errors, and haggling goes on.
	for _, opt := range []uint32{optInfo, optGo} {
		if _, typ := rc.infoGo(opt, "nope"); typ != repErrUnknown {
			t.Fatalf("option %d on unknown export: %#x", opt, typ)
		}
	}

	// GO without requests still gets EXPORT and BLOCK_SIZE.
	infos, typ = rc.infoGo(optGo, "disk")
	if typ != repAck || len(infos[infoExport]) != 10 || len(infos[infoBlockSize]) != 12 {
		t.Fatalf("GO: %#x %v", typ, infos)
	}
	_ = nc.SetDeadline(time.Time{})
	c := newClient(nc, rc.br)
	c.write(t, 0, bytes.Repeat([]byte{7}, 512), 0)
	c.disconnect(t)
	if err := waitDone(t, done); err != nil {
		t.Fatal(err)
	}
}

func TestHandshakeDefaultExport(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	if err := s.AddExport("", NewMemoryBackend(4096), false); err != nil {
		t.Fatal(err)
	}
	nc, _ := pipeConn(t, s)
	_, size, _ := goExport(t, nc, "")
	if size != 4096 {
		t.Fatalf("default export size %d", size)
	}
}

func TestHandshakeList(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle)
	rc.sendOpt(optList, nil)
	var names []string
	for {
		r := rc.mustOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer || binary.BigEndian.Uint32(r.data) != uint32(len(r.data)-4) {
			t.Fatalf("LIST reply %#x %x", r.typ, r.data)
		}
		names = append(names, string(r.data[4:]))
	}
	if strings.Join(names, ",") != "disk,ro" {
		t.Fatalf("LIST: %v", names)
	}
	rc.sendOpt(optList, []byte("x"))
	if r := rc.mustOptReply(); r.typ != repErrInvalid {
		t.Fatalf("LIST with data: %#x", r.typ)
	}
}

func TestHandshakeAbort(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, done := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle)
	rc.sendOpt(optAbort, []byte("ignored"))
	if r := rc.mustOptReply(); r.opt != optAbort || r.typ != repAck {
		t.Fatalf("ABORT reply %+v", r)
	}
	if _, err := rc.read(1); err == nil {
		t.Fatal("connection still open after ABORT")
	}
	if err := waitDone(t, done); err != nil {
		t.Fatalf("ServeConn after ABORT: %v", err)
	}
}

func TestHandshakeUnsupportedOptions(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle | cflagNoZeroes)
	for _, opt := range []uint32{optStartTLS, optStructuredReply, 4, 9, 10, 99, 0, 0xffffffff} {
		rc.sendOpt(opt, []byte("some data"))
		if r := rc.mustOptReply(); r.opt != opt || r.typ != repErrUnsup {
			t.Fatalf("option %d: %+v", opt, r)
		}
	}
	// Malformed INFO requests are NBD_REP_ERR_INVALID.
	for _, data := range [][]byte{nil, {0, 0, 0, 9, 'a', 0, 0}, append(infoRequest("disk", 1), 0)} {
		rc.sendOpt(optInfo, data)
		if r := rc.mustOptReply(); r.typ != repErrInvalid {
			t.Fatalf("INFO %x: %#x", data, r.typ)
		}
	}
	// Too long to buffer, short enough to skip.
	rc.sendOpt(99, make([]byte, maxOptionLength+1))
	if r := rc.mustOptReply(); r.typ != repErrTooBig {
		t.Fatalf("long option: %#x", r.typ)
	}
	if _, typ := rc.infoGo(optGo, "disk"); typ != repAck {
		t.Fatalf("GO after unsupported options: %#x", typ)
	}
	_ = nc.SetDeadline(time.Time{})
	newClient(nc, rc.br).read(t, 0, 512)
}

// TestHandshakeGarbage checks that broken handshakes end in a clean close
// and that another connection keeps working meanwhile.
func TestHandshakeGarbage(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	good, _ := pipeConn(t, s)
	gc, _, _ := goExport(t, good, "disk")

	cases := map[string]func(rc *rawClient){
		"unknown client flags": func(rc *rawClient) { rc.greet(1 << 5) },
		"bad option magic": func(rc *rawClient) {
			rc.greet(cflagFixedNewstyle)
			rc.write(bytes.Repeat([]byte{0xAB}, 16))
		},
		"option too long to skip": func(rc *rawClient) {
			rc.greet(cflagFixedNewstyle)
			var h [16]byte
			binary.BigEndian.PutUint64(h[:], magicIHAVEOPT)
			binary.BigEndian.PutUint32(h[8:], optInfo)
			binary.BigEndian.PutUint32(h[12:], 1<<30)
			rc.write(h[:])
		},
		"long export name": func(rc *rawClient) {
			rc.greet(cflagFixedNewstyle)
			var h [16]byte
			binary.BigEndian.PutUint64(h[:], magicIHAVEOPT)
			binary.BigEndian.PutUint32(h[8:], optExportName)
			binary.BigEndian.PutUint32(h[12:], maxOptionLength+1)
			rc.write(h[:])
		},
		"eof inside option": func(rc *rawClient) {
			rc.greet(cflagFixedNewstyle)
			var h [16]byte
			binary.BigEndian.PutUint64(h[:], magicIHAVEOPT)
			binary.BigEndian.PutUint32(h[8:], optGo)
			binary.BigEndian.PutUint32(h[12:], 100)
			rc.write(h[:])
			rc.write([]byte{1, 2, 3})
			rc.nc.Close()
		},
		"eof before flags": func(rc *rawClient) {
			rc.mustRead(18)
			rc.nc.Close()
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			nc, done := pipeConn(t, s)
			rc := newRawClient(t, nc)
			fn(rc)
			waitDone(t, done)
			if _, err := rc.read(1); err == nil {
				t.Fatal("connection still open")
			}
			gc.write(t, 0, make([]byte, 512), 0)
		})
	}
}

func TestHandshakeTimeout(t *testing.T) {
	s, _ := newTestServer(t, Options{HandshakeTimeout: 50 * time.Millisecond})
	nc, done := pipeConn(t, s)
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle)
	if err := waitDone(t, done); err == nil {
		t.Fatal("idle handshake was not timed out")
	}
}
