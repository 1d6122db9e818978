package nbd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"k8s.io/klog/v2"
)

// Errors returned by the Server.
var (
	ErrServerClosed  = errors.New("nbd: server closed")
	ErrExportExists  = errors.New("nbd: export already exists")
	ErrUnknownExport = errors.New("nbd: unknown export")
	ErrInvalidName   = errors.New("nbd: invalid export name")
)

// Options configure a Server. Zero values mean the defaults.
type Options struct {
	// MaxInFlight bounds the requests being processed per connection.
	// Default 64.
	MaxInFlight int
	// MaxInFlightBytes bounds the READ and WRITE payload bytes held per
	// connection. A single request larger than this is admitted alone.
	// Default 128 MiB.
	MaxInFlightBytes int64
	// HandshakeTimeout bounds option haggling. Default 30 s; negative
	// disables it.
	HandshakeTimeout time.Duration
	// Observer, if set, sees every transmission request.
	Observer Observer
}

// Defaults for Options.
const (
	DefaultMaxInFlight      = 64
	DefaultMaxInFlightBytes = 128 << 20
	DefaultHandshakeTimeout = 30 * time.Second
)

// Server serves exports over NBD. Its methods are safe for concurrent use.
//
// Lock order: Server.mu, then conn.mu, then conn.slotMu.
type Server struct {
	opts  Options
	stats counters
	wg    sync.WaitGroup // one per registered connection
	leaks atomic.Int64   // connections that ended with slots still held

	mu        sync.Mutex // guards the fields below
	exports   map[string]*export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	nextID    uint64
	closed    bool // Shutdown was called
}

// export is an immutable description of one export.
type export struct {
	name     string
	backend  Backend
	caps     Capabilities
	readOnly bool
	limits   limits
}

// ExportInfo is what a client learns about an export during the handshake;
// the kernel needs the same values when a socket is handed to it over
// netlink.
type ExportInfo struct {
	Name               string
	Size               int64
	Flags              uint16 // transmission flags (NBD_ATTR_SERVER_FLAGS)
	ReadOnly           bool
	MinBlockSize       uint32
	PreferredBlockSize uint32
	MaxPayload         uint32
	Description        string
}

// NewServer returns a Server with no exports.
func NewServer(opts Options) *Server {
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxInFlightBytes <= 0 {
		opts.MaxInFlightBytes = DefaultMaxInFlightBytes
	}
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	return &Server{
		opts:      opts,
		exports:   make(map[string]*export),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
}

// AddExport makes b available under name. ro (or Capabilities.ReadOnly)
// makes the export read-only. The empty name is the default export.
func (s *Server) AddExport(name string, b Backend, ro bool) error {
	if len(name) > maxNameLength || !utf8.ValidString(name) {
		return fmt.Errorf("%w: %q", ErrInvalidName, name)
	}
	if b == nil {
		return fmt.Errorf("nbd: export %q: nil backend", name)
	}
	caps := capabilitiesOf(b)
	if err := caps.validate(b.Size()); err != nil {
		return fmt.Errorf("export %q: %w", name, err)
	}
	ro = ro || caps.ReadOnly
	flags := FlagHasFlags | FlagSendFlush
	if ro {
		flags |= FlagReadOnly
	} else {
		flags |= FlagSendFUA
		if caps.CanTrim {
			flags |= FlagSendTrim
		}
		if caps.CanZero {
			flags |= FlagSendWriteZeroes
		}
	}
	if caps.CanMultiConn {
		flags |= FlagCanMultiConn
	}
	ex := &export{
		name:     name,
		backend:  b,
		caps:     caps,
		readOnly: ro,
		limits: limits{
			flags:      flags,
			minBlock:   uint64(caps.MinBlockSize),
			maxPayload: caps.MaxPayload,
		},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if _, ok := s.exports[name]; ok {
		return fmt.Errorf("%w: %q", ErrExportExists, name)
	}
	s.exports[name] = ex
	return nil
}

// RemoveExport stops serving name: new clients cannot open it, its
// connections stop reading requests, drain the ones in flight and close.
// Then the backend is flushed. If ctx ends first, the connections are closed
// without waiting and ctx's error is returned.
func (s *Server) RemoveExport(ctx context.Context, name string) error {
	s.mu.Lock()
	ex, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return fmt.Errorf("%w: %q", ErrUnknownExport, name)
	}
	delete(s.exports, name)
	var conns []*conn
	for c := range s.conns {
		if c.export() == ex {
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	if err := drain(ctx, conns); err != nil {
		return err
	}
	return ex.backend.Flush()
}

// ExportInfo describes an export as a client would see it now.
func (s *Server) ExportInfo(name string) (ExportInfo, error) {
	s.mu.Lock()
	ex, ok := s.exports[name]
	s.mu.Unlock()
	if !ok {
		return ExportInfo{}, fmt.Errorf("%w: %q", ErrUnknownExport, name)
	}
	return ex.info(), nil
}

func (ex *export) info() ExportInfo {
	return ExportInfo{
		Name:               ex.name,
		Size:               ex.backend.Size(),
		Flags:              ex.limits.flags,
		ReadOnly:           ex.readOnly,
		MinBlockSize:       ex.caps.MinBlockSize,
		PreferredBlockSize: ex.caps.PreferredBlockSize,
		MaxPayload:         ex.caps.MaxPayload,
		Description:        ex.caps.Description,
	}
}

// Stats returns a snapshot of the server's counters.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

func (s *Server) lookup(name string) (*export, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ex, ok := s.exports[name]
	return ex, ok
}

func (s *Server) exportNames() []string {
	s.mu.Lock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	s.mu.Unlock()
	sort.Strings(names)
	return names
}

// bind attaches c to the export name for the transmission phase. Doing the
// lookup and the binding under s.mu means RemoveExport cannot miss c.
func (s *Server) bind(c *conn, name string) (*export, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ex, ok := s.exports[name]
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownExport, name)
	}
	c.setExport(ex)
	return ex, nil
}

// Serve accepts connections on l and serves each in its own goroutine until
// Shutdown, after which it returns ErrServerClosed. l is closed on return.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				klog.V(2).InfoS("nbd: accept failed, retrying", "err", err, "backoff", backoff)
				time.Sleep(backoff)
				continue
			}
			return err
		}
		backoff = 0
		go func() {
			if err := s.ServeConn(nc); err != nil && !errors.Is(err, ErrServerClosed) {
				klog.V(2).InfoS("nbd: connection ended", "remote", nc.RemoteAddr(), "err", err)
			}
		}()
	}
}

// ServeConn runs the handshake and then the transmission phase on nc, and
// returns when the connection is over; nc is closed on return. It returns
// nil when the client ended the session properly (NBD_OPT_ABORT,
// NBD_CMD_DISC or EOF between requests).
func (s *Server) ServeConn(nc net.Conn) error {
	c, err := s.register(nc)
	if err != nil {
		return err
	}
	defer s.unregister(c)
	ex, err := c.handshake()
	if err != nil || ex == nil {
		return err
	}
	return c.transmit(ex)
}

// ServeExportConn serves the transmission phase of export name on nc, with
// no handshake: the client already knows the export. This is the kernel
// attach path, where the kernel gets the other end of a socket pair through
// netlink together with the values from ExportInfo.
func (s *Server) ServeExportConn(nc net.Conn, name string) error {
	c, err := s.register(nc)
	if err != nil {
		return err
	}
	defer s.unregister(c)
	ex, err := s.bind(c, name)
	if err != nil {
		return err
	}
	return c.transmit(ex)
}

func (s *Server) register(nc net.Conn) (*conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		nc.Close()
		return nil, ErrServerClosed
	}
	s.nextID++
	c := newConn(s, nc, s.nextID)
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.stats.activeConns.Add(1)
	s.stats.totalConns.Add(1)
	return c, nil
}

func (s *Server) unregister(c *conn) {
	c.nc.Close()
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.stats.activeConns.Add(^uint64(0))
	close(c.done)
	s.wg.Done()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Shutdown stops accepting connections, stops every connection from reading
// new requests, waits for the requests in flight to be answered, closes the
// connections and flushes every export. If ctx ends before the connections
// have drained, they are closed at once; the exports are still flushed and
// ctx's error is returned with any flush errors. Exports stay registered.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	for l := range s.listeners {
		l.Close()
	}
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	exports := make([]*export, 0, len(s.exports))
	for _, ex := range s.exports {
		exports = append(exports, ex)
	}
	s.mu.Unlock()

	err := drain(ctx, conns)
	if err == nil {
		// Connections register only while !closed, so all are in conns;
		// wait for their goroutines to be fully done too.
		s.wg.Wait()
	}
	for _, ex := range exports {
		if ferr := ex.backend.Flush(); ferr != nil {
			err = errors.Join(err, fmt.Errorf("nbd: flush export %q: %w", ex.name, ferr))
		}
	}
	return err
}

// drain interrupts conns and waits for them to finish, or closes them when
// ctx ends.
func drain(ctx context.Context, conns []*conn) error {
	for _, c := range conns {
		c.interrupt()
	}
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range conns {
				c.nc.Close()
			}
			return ctx.Err()
		}
	}
	return nil
}

// check verifies the server's invariants once it is idle (after Shutdown, or
// with every connection ended): no connection registered, none counted as
// active, and every admission slot given back. Tests call it in cleanup.
func (s *Server) check() error {
	s.mu.Lock()
	n := len(s.conns)
	s.mu.Unlock()
	switch {
	case n != 0:
		return fmt.Errorf("nbd: %d connections still registered", n)
	case s.stats.activeConns.Load() != 0:
		return fmt.Errorf("nbd: %d connections counted active", s.stats.activeConns.Load())
	case s.leaks.Load() != 0:
		return fmt.Errorf("nbd: %d connections ended holding admission slots", s.leaks.Load())
	}
	return nil
}
