package nbd

import (
	"bytes"
	"encoding/binary"
	"net"
	"testing"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

func dialUnix(path string) (net.Conn, error) { return net.Dial("unix", path) }

// TestProtocolAbuse sends invalid requests; each must get its error reply on
// a connection that stays usable.
func TestProtocolAbuse(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	nc, _ := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "disk")
	const end = uint64(testSize)
	const maxU64 = ^uint64(0)

	cases := []struct {
		name    string
		errno   Errno
		cmd     Command
		flags   uint16
		off     uint64
		length  uint32
		payload []byte
	}{
		{"read past end", EINVAL, CmdRead, 0, end - 512, 1024, nil},
		{"read at end", EINVAL, CmdRead, 0, end, 512, nil},
		{"read offset overflow", EINVAL, CmdRead, 0, maxU64 - 511, 1024, nil},
		{"write past end, payload consumed", ENOSPC, CmdWrite, 0, end - 512, 1024, make([]byte, 1024)},
		{"write offset overflow", ENOSPC, CmdWrite, 0, maxU64 - 511, 1024, make([]byte, 1024)},
		{"trim past end", EINVAL, CmdTrim, 0, end, 512, nil},
		{"zeroes past end", ENOSPC, CmdWriteZeroes, 0, end - 512, 4096, nil},
		{"read over max payload", EINVAL, CmdRead, 0, 0, 32<<20 + 512, nil},
		{"misaligned read offset", EINVAL, CmdRead, 0, 1, 512, nil},
		{"misaligned read length", EINVAL, CmdRead, 0, 0, 100, nil},
		{"misaligned write, payload consumed", EINVAL, CmdWrite, 0, 3, 100, make([]byte, 100)},
		{"misaligned trim", EINVAL, CmdTrim, 0, 512, 1, nil},
		{"unknown command", EINVAL, Command(42), 0, 0, 512, nil},
		{"cache (not advertised)", EINVAL, CmdCache, 0, 0, 512, nil},
		{"block status (not negotiated)", EINVAL, CmdBlockStatus, 0, 0, 512, nil},
		{"unknown flag", EINVAL, CmdRead, 1 << 9, 0, 512, nil},
		{"no-hole on write", EINVAL, CmdWrite, CmdFlagNoHole, 0, 512, make([]byte, 512)},
		{"fast-zero not advertised", EINVAL, CmdWriteZeroes, CmdFlagFastZero, 0, 512, nil},
		{"df without structured replies", EINVAL, CmdRead, CmdFlagDF, 0, 512, nil},
		{"flush with offset", EINVAL, CmdFlush, 0, 512, 0, nil},
		{"flush with length", EINVAL, CmdFlush, 0, 0, 512, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c.expect(t, tc.errno, tc.cmd, tc.flags, tc.off, tc.length, tc.payload)
			// The connection is still in sync.
			p := bytes.Repeat([]byte(tc.name[:1]), 512)
			c.write(t, 0, p, 0)
			if !bytes.Equal(c.read(t, 0, 512), p) {
				t.Fatal("connection out of sync")
			}
		})
	}
}

func TestOversizedWrite(t *testing.T) {
	s := NewServer(Options{})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	mb := NewMemoryBackend(8 << 20)
	caps := DefaultCapabilities()
	caps.MaxPayload = 1 << 20
	mb.SetCapabilities(caps)
	if err := s.AddExport("d", mb, false); err != nil {
		t.Fatal(err)
	}
	good, _ := pipeConn(t, s)
	gc, _, _ := goExport(t, good, "d")

	// Over the export's max payload but skippable: EINVAL, still in sync.
	nc, done := pipeConn(t, s)
	c, _, _ := goExport(t, nc, "d")
	c.expect(t, EINVAL, CmdWrite, 0, 0, 2<<20, bytes.Repeat([]byte{1}, 2<<20))
	c.write(t, 0, make([]byte, 512), 0)

	// Over 32 MiB: EINVAL and the connection is closed (no payload sent).
	c.expect(t, EINVAL, CmdWrite, 0, 0, 64<<20, nil)
	c.waitClosed(t)
	if err := waitDone(t, done); err == nil {
		t.Fatal("ServeConn returned nil after an oversized write")
	}
	if mb.Bytes()[0] != 0 {
		t.Fatal("rejected payload was written")
	}
	gc.write(t, 0, make([]byte, 512), 0)
}

// TestMinBlockSizeOne shows that a backend may allow byte-granular requests.
func TestMinBlockSizeOne(t *testing.T) {
	s := NewServer(Options{})
	t.Cleanup(func() { shutdownAndCheck(t, s) })
	mb := NewMemoryBackend(1000)
	caps := DefaultCapabilities()
	caps.MinBlockSize = 1
	mb.SetCapabilities(caps)
	if err := s.AddExport("d", mb, false); err != nil {
		t.Fatal(err)
	}
	nc, _ := pipeConn(t, s)
	c, size, _ := goExport(t, nc, "d")
	if size != 1000 {
		t.Fatal(size)
	}
	c.write(t, 3, []byte("abc"), 0)
	if got := c.read(t, 1, 6); string(got) != "\x00\x00abc\x00" {
		t.Fatalf("got %q", got)
	}
	c.expect(t, EINVAL, CmdRead, 0, 999, 2, nil)
}

func rawRequest(cmd Command, cookie, off uint64, length uint32) []byte {
	b := make([]byte, 28)
	binary.BigEndian.PutUint32(b[0:4], protocol.TRANSMISSION_MAGIC_REQUEST)
	binary.BigEndian.PutUint16(b[6:8], uint16(cmd))
	binary.BigEndian.PutUint64(b[8:16], cookie)
	binary.BigEndian.PutUint64(b[16:24], off)
	binary.BigEndian.PutUint32(b[24:28], length)
	return b
}

// TestBrokenStreams covers the cases where the only answer is to close:
// each closes cleanly and another connection keeps working.
func TestBrokenStreams(t *testing.T) {
	s, mb := newTestServer(t, Options{})
	good, _ := pipeConn(t, s)
	gc, _, _ := goExport(t, good, "disk")

	cases := map[string]func(nc net.Conn){
		"bad magic": func(nc net.Conn) {
			b := rawRequest(CmdRead, 1, 0, 512)
			b[0] ^= 0xff
			nc.Write(b)
		},
		"eof mid header": func(nc net.Conn) {
			nc.Write(rawRequest(CmdRead, 1, 0, 512)[:10])
			nc.Close()
		},
		"eof mid payload": func(nc net.Conn) {
			nc.Write(rawRequest(CmdWrite, 1, 0, 4096))
			nc.Write(bytes.Repeat([]byte{0xee}, 1000))
			nc.Close()
		},
		"garbage": func(nc net.Conn) {
			nc.Write(bytes.Repeat([]byte("garbage!"), 100))
		},
	}
	for name, fn := range cases {
		t.Run(name, func(t *testing.T) {
			nc, done := pipeConn(t, s)
			c, _, _ := goExport(t, nc, "disk")
			c.read(t, 0, 512)
			go fn(nc)
			waitDone(t, done)
			c.waitClosed(t)
			gc.write(t, 8192, make([]byte, 512), CmdFlagFUA)
		})
	}
	if mb.Bytes()[0] == 0xee {
		t.Fatal("a partial write payload reached the backend")
	}
}

// TestAbuseDoesNotStarveOthers keeps a connection busy sending invalid
// requests while another does normal I/O.
func TestAbuseDoesNotStarveOthers(t *testing.T) {
	s, _ := newTestServer(t, Options{})
	bad, _ := pipeConn(t, s)
	bc, _, _ := goExport(t, bad, "disk")
	good, _ := pipeConn(t, s)
	gc, _, _ := goExport(t, good, "disk")
	stop := make(chan struct{})
	abused := make(chan struct{})
	go func() {
		defer close(abused)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, err := bc.do(Command(100+i%50), uint16(i), uint64(i)*7, uint32(i), nil); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 200 {
		p := bytes.Repeat([]byte{byte(i)}, 4096)
		gc.write(t, uint64(i%16)*4096, p, 0)
		if !bytes.Equal(gc.read(t, uint64(i%16)*4096, 4096), p) {
			t.Fatal("mismatch")
		}
	}
	close(stop)
	<-abused
}
