package nbd

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/pojntfx/go-nbd/pkg/protocol"
)

// This file is a minimal NBD client for the tests: raw handshake helpers and
// a pipelined transmission client that matches replies by cookie.

// pipeConn starts s.ServeConn on one end of a net.Pipe and returns the other
// end and a channel with ServeConn's result.
func pipeConn(t testing.TB, s *Server) (net.Conn, <-chan error) {
	t.Helper()
	cli, srv := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.ServeConn(srv) }()
	t.Cleanup(func() { cli.Close() })
	return cli, done
}

// waitDone waits for a ServeConn result.
func waitDone(t testing.TB, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("server did not end the connection")
		return nil
	}
}

// rawClient speaks the handshake byte by byte.
type rawClient struct {
	t  testing.TB
	nc net.Conn
	br *bufio.Reader
}

func newRawClient(t testing.TB, nc net.Conn) *rawClient {
	_ = nc.SetDeadline(time.Now().Add(20 * time.Second))
	return &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (c *rawClient) read(n int) ([]byte, error) {
	b := make([]byte, n)
	_, err := io.ReadFull(c.br, b)
	return b, err
}

func (c *rawClient) mustRead(n int) []byte {
	c.t.Helper()
	b, err := c.read(n)
	if err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (c *rawClient) write(b []byte) {
	c.t.Helper()
	if _, err := c.nc.Write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// greet reads the server greeting and sends client flags.
func (c *rawClient) greet(cflags uint32) uint16 {
	c.t.Helper()
	b := c.mustRead(18)
	if binary.BigEndian.Uint64(b[0:8]) != magicNBDMAGIC || binary.BigEndian.Uint64(b[8:16]) != magicIHAVEOPT {
		c.t.Fatalf("bad greeting %x", b)
	}
	var f [4]byte
	binary.BigEndian.PutUint32(f[:], cflags)
	c.write(f[:])
	return binary.BigEndian.Uint16(b[16:18])
}

func (c *rawClient) sendOpt(opt uint32, data []byte) {
	c.t.Helper()
	b := make([]byte, 16+len(data))
	binary.BigEndian.PutUint64(b[0:8], magicIHAVEOPT)
	binary.BigEndian.PutUint32(b[8:12], opt)
	binary.BigEndian.PutUint32(b[12:16], uint32(len(data)))
	copy(b[16:], data)
	c.write(b)
}

type optRep struct {
	opt, typ uint32
	data     []byte
}

func (c *rawClient) readOptReply() (optRep, error) {
	h, err := c.read(20)
	if err != nil {
		return optRep{}, err
	}
	if binary.BigEndian.Uint64(h[0:8]) != magicOptReply {
		return optRep{}, fmt.Errorf("bad option reply magic %x", h[0:8])
	}
	r := optRep{opt: binary.BigEndian.Uint32(h[8:12]), typ: binary.BigEndian.Uint32(h[12:16])}
	n := binary.BigEndian.Uint32(h[16:20])
	if n > 1<<20 {
		return optRep{}, fmt.Errorf("option reply of %d bytes", n)
	}
	r.data, err = c.read(int(n))
	return r, err
}

func (c *rawClient) mustOptReply() optRep {
	c.t.Helper()
	r, err := c.readOptReply()
	if err != nil {
		c.t.Fatalf("option reply: %v", err)
	}
	return r
}

func infoRequest(name string, reqs ...uint16) []byte {
	b := make([]byte, 4+len(name)+2+2*len(reqs))
	binary.BigEndian.PutUint32(b, uint32(len(name)))
	copy(b[4:], name)
	binary.BigEndian.PutUint16(b[4+len(name):], uint16(len(reqs)))
	for i, r := range reqs {
		binary.BigEndian.PutUint16(b[6+len(name)+2*i:], r)
	}
	return b
}

// infoGo sends INFO or GO and collects the NBD_REP_INFO payloads by type up
// to the final reply, whose type is returned.
func (c *rawClient) infoGo(opt uint32, name string, reqs ...uint16) (map[uint16][]byte, uint32) {
	c.t.Helper()
	c.sendOpt(opt, infoRequest(name, reqs...))
	infos := map[uint16][]byte{}
	for {
		r := c.mustOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		if r.typ != repInfo {
			return infos, r.typ
		}
		if len(r.data) < 2 {
			c.t.Fatalf("short NBD_REP_INFO %x", r.data)
		}
		infos[binary.BigEndian.Uint16(r.data)] = r.data[2:]
	}
}

// goExport performs a full GO handshake and returns a transmission client.
func goExport(t testing.TB, nc net.Conn, name string) (*client, uint64, uint16) {
	t.Helper()
	rc := newRawClient(t, nc)
	rc.greet(cflagFixedNewstyle | cflagNoZeroes)
	infos, typ := rc.infoGo(optGo, name, infoBlockSize)
	if typ != repAck {
		t.Fatalf("GO %q: reply %#x", name, typ)
	}
	ie := infos[infoExport]
	if len(ie) != 10 {
		t.Fatalf("NBD_INFO_EXPORT %x", ie)
	}
	_ = nc.SetDeadline(time.Time{})
	return newClient(nc, rc.br), binary.BigEndian.Uint64(ie[0:8]), binary.BigEndian.Uint16(ie[8:10])
}

// client is a pipelined transmission-phase client.
type client struct {
	nc net.Conn
	br *bufio.Reader

	wmu sync.Mutex // serializes request writes

	mu      sync.Mutex // guards the fields below
	pending map[uint64]*call
	next    uint64
	err     error // set when the reader stops
	order   []uint64

	readerDone chan struct{}
}

type call struct {
	readLen int
	done    chan struct{}
	errno   Errno
	data    []byte
}

func newClient(nc net.Conn, br *bufio.Reader) *client {
	c := &client{nc: nc, br: br, pending: map[uint64]*call{}, readerDone: make(chan struct{})}
	go c.readLoop()
	return c
}

var errClientClosed = errors.New("connection closed by server")

func (c *client) readLoop() {
	defer close(c.readerDone)
	var h [16]byte
	for {
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			c.fail(err)
			return
		}
		if binary.BigEndian.Uint32(h[0:4]) != protocol.TRANSMISSION_MAGIC_REPLY {
			c.fail(fmt.Errorf("bad reply magic %x", h[0:4]))
			return
		}
		cookie := binary.BigEndian.Uint64(h[8:16])
		c.mu.Lock()
		cl := c.pending[cookie]
		delete(c.pending, cookie)
		c.order = append(c.order, cookie)
		c.mu.Unlock()
		if cl == nil {
			c.fail(fmt.Errorf("reply for unknown cookie %d", cookie))
			return
		}
		cl.errno = Errno(binary.BigEndian.Uint32(h[4:8]))
		if cl.errno == 0 && cl.readLen > 0 {
			cl.data = make([]byte, cl.readLen)
			if _, err := io.ReadFull(c.br, cl.data); err != nil {
				c.fail(err)
				return
			}
		}
		close(cl.done)
	}
}

func (c *client) fail(err error) {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrClosedPipe) || errors.Is(err, net.ErrClosed) {
		err = errClientClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.err = err
	for k, cl := range c.pending {
		delete(c.pending, k)
		cl.errno = 0xffffffff
		close(cl.done)
	}
}

// start sends a request and returns its call; payload is sent for WRITE.
func (c *client) start(cmd Command, flags uint16, off uint64, length uint32, payload []byte) (*call, error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.next++
	cookie := c.next
	cl := &call{done: make(chan struct{})}
	if cmd == CmdRead {
		cl.readLen = int(length)
	}
	if cmd != CmdDisc {
		c.pending[cookie] = cl
	}
	c.mu.Unlock()

	b := make([]byte, 28+len(payload))
	binary.BigEndian.PutUint32(b[0:4], protocol.TRANSMISSION_MAGIC_REQUEST)
	binary.BigEndian.PutUint16(b[4:6], flags)
	binary.BigEndian.PutUint16(b[6:8], uint16(cmd))
	binary.BigEndian.PutUint64(b[8:16], cookie)
	binary.BigEndian.PutUint64(b[16:24], off)
	binary.BigEndian.PutUint32(b[24:28], length)
	copy(b[28:], payload)
	c.wmu.Lock()
	_, err := c.nc.Write(b)
	c.wmu.Unlock()
	if err != nil {
		return nil, err
	}
	return cl, nil
}

// wait waits for a call; a call cut short by a closed connection returns
// errClientClosed.
func (c *client) wait(cl *call) (Errno, []byte, error) {
	select {
	case <-cl.done:
	case <-time.After(20 * time.Second):
		return 0, nil, errors.New("timed out waiting for a reply")
	}
	if cl.errno == 0xffffffff {
		c.mu.Lock()
		defer c.mu.Unlock()
		return 0, nil, c.err
	}
	return cl.errno, cl.data, nil
}

func (c *client) do(cmd Command, flags uint16, off uint64, length uint32, payload []byte) (Errno, []byte, error) {
	cl, err := c.start(cmd, flags, off, length, payload)
	if err != nil {
		return 0, nil, err
	}
	return c.wait(cl)
}

func (c *client) read(t testing.TB, off uint64, n uint32) []byte {
	t.Helper()
	e, d, err := c.do(CmdRead, 0, off, n, nil)
	if err != nil || e != 0 {
		t.Fatalf("read %d@%d: errno %v err %v", n, off, e, err)
	}
	return d
}

func (c *client) write(t testing.TB, off uint64, p []byte, flags uint16) {
	t.Helper()
	e, _, err := c.do(CmdWrite, flags, off, uint32(len(p)), p)
	if err != nil || e != 0 {
		t.Fatalf("write %d@%d: errno %v err %v", len(p), off, e, err)
	}
}

// expect runs a request and checks its errno.
func (c *client) expect(t testing.TB, want Errno, cmd Command, flags uint16, off uint64, length uint32, payload []byte) {
	t.Helper()
	e, _, err := c.do(cmd, flags, off, length, payload)
	if err != nil {
		t.Fatalf("%v flags %#x %d@%d: %v", cmd, flags, length, off, err)
	}
	if e != want {
		t.Fatalf("%v flags %#x %d@%d: errno %v, want %v", cmd, flags, length, off, e, want)
	}
}

// disconnect sends NBD_CMD_DISC and waits for the server to close.
func (c *client) disconnect(t testing.TB) {
	t.Helper()
	if _, err := c.start(CmdDisc, 0, 0, 0, nil); err != nil {
		t.Fatalf("disc: %v", err)
	}
	c.waitClosed(t)
}

func (c *client) waitClosed(t testing.TB) {
	t.Helper()
	select {
	case <-c.readerDone:
	case <-time.After(10 * time.Second):
		t.Fatal("server did not close the connection")
	}
}
