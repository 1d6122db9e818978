package nbd

import (
	"bufio"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
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

	workers sync.WaitGroup // requests started by the reader

	// The reader role. The goroutine that reads requests may execute one
	// itself (see inline); if that takes longer than inlineTakeover, the
	// takeover timer's goroutine becomes a new reader and the old one,
	// when its request is done, leaves. rstate is gen<<1 | inlining, where
	// gen counts readers: the compare-and-swaps on it decide who reads,
	// and so order the uses of br. The timer is not set per request (that
	// wakes an idle thread each time): it is armed when the reader starts
	// inlining and it is not armed, and when it fires it re-arms itself
	// for as long as the reader keeps inlining. readerDone gets the result
	// of the last reader.
	rstate      atomic.Uint64
	inlineSince atomic.Int64 // when the current inline request started, in ns since epoch
	armed       atomic.Bool  // takeover is set
	epoch       time.Time
	takeover    *time.Timer
	readerDone  chan error
	// svcTime is a moving average of the backend's service time, in
	// nanoseconds, for READ and WRITE requests of at most inlineMaxLength
	// (see inline). Updates may race and lose one another; it is a hint.
	svcTime atomic.Int64

	// Replies. Whoever queues a reply while no one is writing becomes the
	// writer: it writes the queue in batches until the queue is empty (see
	// sendReply). Only the writer touches the fields after wmu's group.
	wmu     sync.Mutex // guards the fields below
	wqueue  []reply    // replies waiting to be written
	wqueued int        // bytes (headers and payloads) in wqueue, roughly: only deferReply counts
	writing bool       // some goroutine is the writer

	wspare []reply     // the writer's batch, swapped with wqueue
	hdrs   []byte      // reply headers of the batch being written
	iov    [][]byte    // the batch as one vectored write
	wv     net.Buffers // iov while it is being written (consumed by WriteTo)
	werr   error       // the first write error; later replies are dropped
}

// reply is a finished request on its way to the client.
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
		srv:  s,
		nc:   nc,
		id:   id,
		br:   bufio.NewReaderSize(nc, 64<<10),
		done: make(chan struct{}),
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
// flight. Before waiting it writes the replies the reader deferred, whose
// slots it would otherwise wait for.
func (c *conn) acquire(ex *export, cost int64) {
	c.slotMu.Lock()
	if c.fullLocked(cost) {
		c.slotMu.Unlock()
		c.flushReplies(ex)
		c.slotMu.Lock()
		for c.fullLocked(cost) {
			c.slotFree.Wait()
		}
	}
	c.inFlight++
	c.inFlightBytes += cost
	c.slotMu.Unlock()
}

func (c *conn) fullLocked(cost int64) bool {
	return c.inFlight >= c.srv.opts.MaxInFlight ||
		(c.inFlight > 0 && c.inFlightBytes+cost > c.srv.opts.MaxInFlightBytes)
}

// release gives back n slots holding cost bytes in all.
func (c *conn) release(n int, cost int64) {
	c.slotMu.Lock()
	c.inFlight -= n
	c.inFlightBytes -= cost
	c.slotMu.Unlock()
	c.slotFree.Signal()
}

// transmit runs the transmission phase on ex until the client disconnects,
// the stream breaks or the connection is interrupted, and then drains the
// requests in flight.
func (c *conn) transmit(ex *export) error {
	if uc, ok := c.nc.(*net.UnixConn); ok {
		// Let a large reply go out in one write (as far as
		// net.core.wmem_max allows): one that does not fit waits for the
		// client to read, a round trip through the poller per chunk. Not
		// done for TCP, where it would turn off the kernel's autotuning.
		_ = uc.SetWriteBuffer(unixSendBuffer)
	}
	n := c.srv.opts.MaxInFlight // replies in the queue and the batch together
	c.wqueue = make([]reply, 0, n)
	c.wspare = make([]reply, 0, n)
	c.hdrs = make([]byte, 0, n*replyHeaderSize)
	c.iov = make([][]byte, 0, 2*n)
	c.svcTime.Store(int64(inlineMaxLatency)) // no inlining until the backend has been seen to be fast
	c.readerDone = make(chan error, 1)
	c.epoch = time.Now()
	c.takeover = time.AfterFunc(time.Hour, func() { c.takeOver(ex) })
	c.takeover.Stop()
	c.readLoop(ex, 0)
	err := <-c.readerDone
	c.takeover.Stop()
	c.workers.Wait() // every reply is written (or dropped) when they are done
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

// errReplaced ends a reader that another one took over from.
var errReplaced = errors.New("nbd: reader replaced")

// readLoop is the reader of generation gen. It reads and dispatches requests
// until the stream ends or another reader takes over, and in the first case
// sends the reason to readerDone; requests it has dispatched may still be
// running.
func (c *conn) readLoop(ex *export, gen uint64) {
	if err := c.readRequests(ex, gen); !errors.Is(err, errReplaced) {
		c.readerDone <- err
	}
}

// takeOver runs when c.takeover fires: if the reader has been executing a
// request inline for inlineTakeover, this goroutine becomes the next reader;
// if it is executing one for less, the timer is set for the rest.
func (c *conn) takeOver(ex *export) {
	s := c.rstate.Load()
	if s&1 == 0 {
		c.armed.Store(false)
		// The reader may have started inlining just before the store and
		// seen the timer armed.
		c.arm()
		return
	}
	if wait := inlineTakeover - (time.Since(c.epoch) - time.Duration(c.inlineSince.Load())); wait > 0 {
		c.takeover.Reset(wait) // still armed; a newer inline request, or an early fire
		return
	}
	gen := s>>1 + 1
	c.armed.Store(false)
	if c.rstate.CompareAndSwap(s, gen<<1) {
		klog.V(5).InfoS("nbd: slow inline request, new reader", "conn", c.id, "generation", gen)
		c.readLoop(ex, gen)
	} else {
		c.arm() // the request ended just now; the reader may be inlining the next
	}
}

// arm sets the takeover timer if the reader is inlining and the timer is not
// set. A reader calls it after setting rstate; takeOver after clearing armed.
func (c *conn) arm() {
	if c.rstate.Load()&1 == 1 && !c.armed.Load() && c.armed.CompareAndSwap(false, true) {
		c.takeover.Reset(inlineTakeover)
	}
}

// readRequests is readLoop's loop. Replies to requests the reader executed
// itself while more requests were buffered are deferred (queued, not
// written) and written together before the reader next waits: for the
// client, for a slot, or on its way out.
func (c *conn) readRequests(ex *export, gen uint64) error {
	defer c.flushReplies(ex)
	var hdr [requestHeaderSize]byte
	for {
		if c.br.Buffered() < requestHeaderSize {
			c.flushReplies(ex)
		}
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
				c.acquire(ex, 0)
				c.sendReply(ex, reply{cookie: r.cookie, errno: errno, cmd: r.cmd, flags: r.flags, length: r.length, start: start})
				return errors.New("nbd: rejected write payload too large to skip")
			}
			if c.br.Buffered() < int(r.length) {
				c.flushReplies(ex)
			}
			if _, err := io.CopyN(io.Discard, c.br, int64(r.length)); err != nil {
				return err
			}
		}
		var cost int64
		if errno == 0 && (r.cmd == CmdRead || r.cmd == CmdWrite) {
			cost = int64(r.length)
		}
		c.acquire(ex, cost)
		if errno != 0 {
			c.sendReply(ex, reply{cookie: r.cookie, errno: errno, cmd: r.cmd, flags: r.flags, length: r.length, start: start})
			continue
		}
		var payload *[]byte
		if r.cmd == CmdWrite && r.length > 0 {
			if c.br.Buffered() < int(r.length) {
				c.flushReplies(ex)
			}
			payload = getBuf(int(r.length))
			if _, err := io.ReadFull(c.br, *payload); err != nil {
				putBuf(payload)
				c.release(1, cost)
				return err
			}
		}
		c.workers.Add(1)
		if !c.inline(r) {
			go c.work(ex, r, payload, cost, start)
			continue
		}
		c.inlineSince.Store(int64(start.Sub(c.epoch)))
		c.rstate.Store(gen<<1 | 1)
		c.arm()
		rep := c.exec(ex, r, payload, cost, start)
		replaced := !c.rstate.CompareAndSwap(gen<<1|1, gen<<1)
		if replaced || c.br.Buffered() < requestHeaderSize {
			c.sendReply(ex, rep)
		} else {
			c.deferReply(ex, rep)
		}
		c.workers.Done()
		if replaced {
			return errReplaced
		}
	}
}

// unixSendBuffer is the SO_SNDBUF asked for on unix sockets.
const unixSendBuffer = 4 << 20

// Requests the reader may execute itself instead of starting a worker, and
// how long it may take before another goroutine takes over reading.
const (
	inlineMaxLength  = 64 << 10
	inlineMaxLatency = 20 * time.Microsecond
	inlineTakeover   = 500 * time.Microsecond
)

// inline reports whether the reader should execute r itself rather than
// start a worker: r is a small READ or WRITE without FUA, and the backend
// has lately answered such requests within inlineMaxLatency (data in
// memory, in the page cache, a cache hit). Handing a request that fast to
// another goroutine costs more than the request (a wake-up, often of
// another thread), and running a few in a row on the reader costs each
// little waiting; their replies go out together (deferReply). When the
// backend is slower (cache misses, a slow device), every request gets its
// own worker. A request that turns out slow after all (the first miss
// after many hits) holds up the reading of the next requests only until
// the takeover timer starts a new reader.
func (c *conn) inline(r request) bool {
	return (r.cmd == CmdRead || r.cmd == CmdWrite) && r.length <= inlineMaxLength &&
		r.flags&CmdFlagFUA == 0 && time.Duration(c.svcTime.Load()) < inlineMaxLatency
}

// observeService folds one service time into svcTime (weight 1/8).
func (c *conn) observeService(d time.Duration) {
	old := c.svcTime.Load()
	c.svcTime.Store(old + (int64(d)-old)/8)
}

// work executes one admitted request on a worker goroutine and sends its
// reply.
func (c *conn) work(ex *export, r request, payload *[]byte, cost int64, start time.Time) {
	c.sendReply(ex, c.exec(ex, r, payload, cost, start))
	c.workers.Done()
}

// exec executes one admitted request and returns its reply.
func (c *conn) exec(ex *export, r request, payload *[]byte, cost int64, start time.Time) reply {
	b := ex.backend
	off, n := int64(r.offset), int64(r.length)
	fua := r.flags&CmdFlagFUA != 0
	rep := reply{cookie: r.cookie, cost: cost, cmd: r.cmd, flags: r.flags, length: r.length, start: start}
	var err error
	var t0 time.Time
	timed := (r.cmd == CmdRead || r.cmd == CmdWrite) && r.length <= inlineMaxLength
	if timed {
		t0 = time.Now()
	}
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
	if timed {
		c.observeService(time.Since(t0))
	}
	if err != nil {
		rep.errno = ErrnoOf(err)
		klog.V(4).InfoS("nbd: request failed", "conn", c.id, "export", ex.name,
			"cmd", r.cmd, "offset", r.offset, "length", r.length, "err", err)
	}
	return rep
}

// sendReply queues rep and, if no other goroutine is writing replies,
// becomes the writer: it takes the whole queue, writes it with one
// vectored write, and repeats until the queue is empty. Replies that other
// workers queue meanwhile ride in the next batch, so a busy connection
// writes many replies per system call, and no goroutine is woken just to
// write a reply.
//
// The writer may block on a full socket; the replies queued behind it
// keep their admission slots until written, which stops the reader from
// admitting more requests than MaxInFlight.
func (c *conn) sendReply(ex *export, rep reply) {
	c.wmu.Lock()
	c.wqueue = append(c.wqueue, rep)
	c.writeLocked(ex)
}

// maxDeferredBytes bounds the replies the reader holds back (see
// readRequests): the first of them waits for the rest.
const maxDeferredBytes = 128 << 10

// deferReply queues rep without writing it, unless the queue holds
// maxDeferredBytes. Only the reader defers, and it calls flushReplies
// before it waits for anything.
func (c *conn) deferReply(ex *export, rep reply) {
	c.wmu.Lock()
	c.wqueue = append(c.wqueue, rep)
	c.wqueued += replyHeaderSize
	if rep.data != nil {
		c.wqueued += len(*rep.data)
	}
	if c.wqueued >= maxDeferredBytes {
		c.writeLocked(ex)
		return
	}
	c.wmu.Unlock()
}

// flushReplies writes the queued replies unless another goroutine is
// writing them already.
func (c *conn) flushReplies(ex *export) {
	c.wmu.Lock()
	c.writeLocked(ex)
}

// writeLocked is called with wmu held and releases it. Unless another
// goroutine is the writer, it becomes the writer until the queue is empty.
func (c *conn) writeLocked(ex *export) {
	if c.writing || len(c.wqueue) == 0 {
		c.wmu.Unlock()
		return
	}
	c.writing = true
	for len(c.wqueue) > 0 {
		batch := c.wqueue
		c.wqueue, c.wqueued = c.wspare[:0], 0
		c.wmu.Unlock()
		c.writeBatch(ex, batch)
		clear(batch) // drop the payload pointers
		c.wmu.Lock()
		c.wspare = batch[:0]
	}
	c.writing = false
	c.wmu.Unlock()
}

// writeBatch writes the replies of batch, returns their buffers to the pool
// and releases their slots. After a write error it closes the socket
// (which stops the reader) and only releases. The caller is the writer.
func (c *conn) writeBatch(ex *export, batch []reply) {
	obs := c.srv.opts.Observer
	hdrs, iov := c.hdrs[:0], c.iov[:0]
	var cost int64
	for i := range batch {
		rep := &batch[i]
		cost += rep.cost
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
		if c.werr != nil {
			continue
		}
		// Headers of consecutive replies without payload go out as one
		// slice of hdrs. (If append moves hdrs, the earlier iov entries
		// keep pointing at the old array, which holds the same bytes.)
		h := len(hdrs)
		hdrs = appendReplyHeader(hdrs, rep.errno, rep.cookie)
		if n := len(iov); n > 0 && i > 0 && rep.data == nil && batch[i-1].data == nil {
			iov[n-1] = hdrs[h-len(iov[n-1]):]
		} else {
			iov = append(iov, hdrs[h:])
		}
		if rep.data != nil {
			iov = append(iov, *rep.data)
		}
	}
	if c.werr == nil {
		c.wv = iov
		if _, err := c.wv.WriteTo(c.nc); err != nil {
			c.werr = err
			klog.V(2).InfoS("nbd: write failed, closing connection", "conn", c.id, "err", err)
			c.nc.Close()
		}
	}
	clear(iov)
	c.wv = nil
	c.hdrs, c.iov = hdrs[:0], iov[:0]
	for i := range batch {
		putBuf(batch[i].data)
	}
	c.release(len(batch), cost)
}
