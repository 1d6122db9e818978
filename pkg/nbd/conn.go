package nbd

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// errDisconnect ends the reader after NBD_CMD_DISC.
var errDisconnect = errors.New("nbd: client disconnected")

// conn is one client connection. See the package comment for its goroutines.
type conn struct {
	srv  *Server
	nc   net.Conn
	id   uint64
	br   *bufio.Reader
	done chan struct{} // closed when the connection is over

	mu      sync.Mutex // guards the fields below; held around SetDeadline
	closing bool       // interrupt was called: read no more requests
	ex      *export    // set when the transmission phase starts

	// Admission of requests. The reader is the only goroutine that waits;
	// the writer releases.
	slotMu        sync.Mutex // guards the fields below
	slotFree      *sync.Cond // signalled by release
	inFlight      int
	inFlightBytes int64

	replies chan reply     // to the writer; capacity MaxInFlight, so never blocks
	workers sync.WaitGroup // requests started by the reader
}

// reply is a finished request on its way to the writer.
type reply struct {
	cookie uint64
	errno  Errno
	data   *[]byte // READ payload (pooled), nil otherwise
	cost   int64   // bytes admitted for this request
	cmd    Command
	flags  uint16
	length uint32
	start  time.Time
}

func newConn(s *Server, nc net.Conn, id uint64) *conn {
	c := &conn{
		srv:     s,
		nc:      nc,
		id:      id,
		br:      bufio.NewReaderSize(nc, 64<<10),
		done:    make(chan struct{}),
		replies: make(chan reply, s.opts.MaxInFlight),
	}
	c.slotFree = sync.NewCond(&c.slotMu)
	return c
}

func (c *conn) export() *export {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ex
}

func (c *conn) setExport(ex *export) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ex = ex
}

// interrupt makes the reader stop at the next read: the deadline in the past
// fails the read in progress and every later one.
func (c *conn) interrupt() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closing = true
	_ = c.nc.SetReadDeadline(time.Unix(1, 0))
}

// setDeadline sets both deadlines unless the connection was interrupted,
// whose read deadline must stay in the past.
func (c *conn) setDeadline(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closing {
		_ = c.nc.SetDeadline(t)
	}
}

// acquire admits a request of cost payload bytes, waiting for slots. A
// request larger than the byte budget is admitted when nothing else is in
// flight.
func (c *conn) acquire(cost int64) {
	c.slotMu.Lock()
	defer c.slotMu.Unlock()
	for c.inFlight >= c.srv.opts.MaxInFlight ||
		(c.inFlight > 0 && c.inFlightBytes+cost > c.srv.opts.MaxInFlightBytes) {
		c.slotFree.Wait()
	}
	c.inFlight++
	c.inFlightBytes += cost
}

func (c *conn) release(cost int64) {
	c.slotMu.Lock()
	c.inFlight--
	c.inFlightBytes -= cost
	c.slotMu.Unlock()
	c.slotFree.Signal()
}

// transmit runs the transmission phase on ex until the client disconnects,
// the stream breaks or the connection is interrupted, and then drains the
// requests in flight.
func (c *conn) transmit(ex *export) error {
	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop(ex)
	}()
	err := c.readLoop(ex)
	c.workers.Wait()
	close(c.replies)
	<-writerDone
	c.nc.Close()
	c.slotMu.Lock()
	if c.inFlight != 0 || c.inFlightBytes != 0 {
		c.srv.leaks.Add(1) // reported by Server.check
	}
	c.slotMu.Unlock()

	switch {
	case err == nil, errors.Is(err, errDisconnect), errors.Is(err, io.EOF):
		return nil
	case errors.Is(err, os.ErrDeadlineExceeded) && c.isClosing():
		return nil // Shutdown or RemoveExport
	}
	if !errors.Is(err, net.ErrClosed) {
		klog.V(2).InfoS("nbd: closing connection", "conn", c.id, "export", ex.name, "err", err)
	}
	return err
}

func (c *conn) isClosing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing
}

// readLoop reads and dispatches requests. It returns the reason it stopped;
// requests it has dispatched may still be running.
func (c *conn) readLoop(ex *export) error {
	var hdr [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return errors.New("nbd: connection closed inside a request header")
			}
			return err
		}
		start := time.Now()
		r, err := parseRequest(&hdr)
		if err != nil {
			return err
		}
		if r.cmd == CmdDisc {
			return errDisconnect
		}
		errno := checkRequest(r, ex.limits, uint64(max(ex.backend.Size(), 0)))

		if r.cmd == CmdWrite && errno != 0 {
			// The payload follows the header whatever we think of it.
			if r.length > maxPayloadLimit {
				c.acquire(0)
				c.replies <- reply{cookie: r.cookie, errno: errno, cmd: r.cmd, flags: r.flags, length: r.length, start: start}
				return errors.New("nbd: rejected write payload too large to skip")
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
				return err
			}
		}
		var cost int64
		if errno == 0 && (r.cmd == CmdRead || r.cmd == CmdWrite) {
			cost = int64(r.length)
		}
		c.acquire(cost)
		if errno != 0 {
			c.replies <- reply{cookie: r.cookie, errno: errno, cmd: r.cmd, flags: r.flags, length: r.length, start: start}
			continue
		}
		var payload *[]byte
		if r.cmd == CmdWrite && r.length > 0 {
			payload = getBuf(int(r.length))
			if _, err := io.ReadFull(c.br, *payload); err != nil {
				putBuf(payload)
				c.release(cost)
				return err
			}
		}
		c.workers.Add(1)
		go c.work(ex, r, payload, cost, start)
	}
}

// work executes one admitted request and queues its reply.
func (c *conn) work(ex *export, r request, payload *[]byte, cost int64, start time.Time) {
	defer c.workers.Done()
	b := ex.backend
	off, n := int64(r.offset), int64(r.length)
	fua := r.flags&CmdFlagFUA != 0
	rep := reply{cookie: r.cookie, cost: cost, cmd: r.cmd, flags: r.flags, length: r.length, start: start}
	var err error
	switch r.cmd {
	case CmdRead:
		if n > 0 {
			buf := getBuf(int(n))
			if err = b.ReadAt(*buf, off); err != nil {
				putBuf(buf)
			} else {
				rep.data = buf
			}
		}
	case CmdWrite:
		if n > 0 {
			err = b.WriteAt(*payload, off, fua)
			putBuf(payload)
		}
	case CmdFlush:
		err = b.Flush()
	case CmdTrim:
		if n > 0 {
			err = b.Trim(off, n)
			if err == nil && fua {
				err = b.Flush()
			}
		}
	case CmdWriteZeroes:
		if n > 0 {
			err = b.WriteZeroes(off, n, fua)
		}
	}
	if err != nil {
		rep.errno = ErrnoOf(err)
		klog.V(4).InfoS("nbd: request failed", "conn", c.id, "export", ex.name,
			"cmd", r.cmd, "offset", r.offset, "length", r.length, "err", err)
	}
	c.replies <- rep
}

// writeLoop writes replies until c.replies is closed. After a write error it
// closes the socket (which stops the reader) and keeps draining, so that
// workers never block and slots are released.
func (c *conn) writeLoop(ex *export) {
	bw := bufio.NewWriterSize(c.nc, 64<<10)
	var hdr [replyHeaderSize]byte
	var werr error
	obs := c.srv.opts.Observer
	for rep := range c.replies {
		// Count before writing, so a client that has its reply sees it
		// counted.
		c.srv.stats.count(rep.cmd, rep.errno, rep.length)
		if obs != nil {
			cmd := rep.cmd
			if int(cmd) >= numCommands {
				cmd = CmdUnknown
			}
			obs.ObserveRequest(RequestInfo{
				Export: ex.name, Command: cmd, Flags: rep.flags, Length: rep.length,
				Errno: rep.errno, Latency: time.Since(rep.start),
			})
		}
		if werr == nil {
			putReplyHeader(hdr[:], rep.errno, rep.cookie)
			_, werr = bw.Write(hdr[:])
			if werr == nil && rep.data != nil {
				_, werr = bw.Write(*rep.data)
			}
			if werr == nil && len(c.replies) == 0 {
				werr = bw.Flush()
			}
			if werr != nil {
				klog.V(2).InfoS("nbd: write failed, closing connection", "conn", c.id, "err", werr)
				c.nc.Close()
			}
		}
		putBuf(rep.data)
		c.release(rep.cost)
	}
	if werr == nil {
		_ = bw.Flush()
	}
}
