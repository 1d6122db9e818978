package nbd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/csi-cache/csi-cache/pkg/nbd/netlink"
)

// kernelClient is what kernel attach needs from *netlink.Client. Tests
// replace dialKernel with a fake kernel.
type kernelClient interface {
	Connect(netlink.Config) (int, error)
	Reconfigure(netlink.Config) error
	Disconnect(index int) error
	Connected(index int) (bool, error)
	Close() error
}

var dialKernel = func() (kernelClient, error) {
	c, err := netlink.Dial()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Reattach retries for sockets the kernel did not take, in case it has not
// yet noticed that the old ones are dead. Variables for tests.
var (
	reattachWait  = time.Second
	reattachRetry = 20 * time.Millisecond
)

// Attach attaches export to a kernel nbd device (see AttachOptions for the
// defaults) and serves it until Detach. The kernel needs the nbd module
// (ErrNoDriver otherwise) and CAP_SYS_ADMIN.
func (s *Server) Attach(export string, opts AttachOptions) (*Attachment, error) {
	a, info, err := s.newAttachment(export, opts)
	if err != nil {
		return nil, fmt.Errorf("nbd: attach export %q: %w", export, err)
	}
	kc, err := dialKernel()
	if err != nil {
		return nil, fmt.Errorf("nbd: attach export %q: %w", export, err)
	}
	defer kc.Close()

	kernel, err := a.serveNewPairs(a.opts.Connections)
	if err != nil {
		a.abort()
		return nil, fmt.Errorf("nbd: attach export %q: %w", export, err)
	}
	idx, err := kc.Connect(netlink.Config{
		Index:             a.opts.Index,
		Sockets:           kernel,
		SizeBytes:         uint64(info.Size),
		BlockSize:         a.blockSize,
		ServerFlags:       uint64(info.Flags),
		Timeout:           a.opts.Timeout,
		DeadConnTimeout:   a.opts.DeadConnTimeout,
		BackendIdentifier: export,
	})
	closeAll(kernel) // the kernel holds its own references now
	if err != nil {
		a.abort()
		return nil, fmt.Errorf("nbd: attach export %q: %w", export, err)
	}
	a.setIndex(idx)
	klog.V(1).InfoS("nbd: attached", "export", export, "device", a.Device(),
		"connections", a.opts.Connections, "size", info.Size, "blockSize", a.blockSize)
	return a, nil
}

// Reattach gives the kernel's device index, still connected but whose
// server went away (a plugin restart), fresh sockets served by s, with a
// RECONFIGURE. It also sets the device size to the export's current size.
// It fails with ErrNotAttached if the device is not connected and with
// ErrNoDeadConnection if the kernel took none of the sockets. The returned
// Attachment may serve fewer than opts.Connections sockets if the device
// has fewer dead connections.
//
// Requests that were in flight on the dead connections are resent when
// their timeout expires, so I/O may stall for up to the Timeout the device
// was attached with.
func (s *Server) Reattach(export string, index int, opts AttachOptions) (*Attachment, error) {
	if index < 0 {
		return nil, fmt.Errorf("nbd: reattach export %q: %w: device index %d", export, ErrInvalidAttach, index)
	}
	opts.UseIndex, opts.Index = true, index
	a, info, err := s.newAttachment(export, opts)
	if err != nil {
		return nil, fmt.Errorf("nbd: reattach export %q to %s: %w", export, DevicePath(index), err)
	}
	a.setIndex(index)
	wrap := func(err error) error {
		return fmt.Errorf("nbd: reattach export %q to %s: %w", export, DevicePath(index), err)
	}
	kc, err := dialKernel()
	if err != nil {
		return nil, wrap(err)
	}
	defer kc.Close()
	ok, err := kc.Connected(index)
	if err != nil {
		return nil, wrap(err)
	}
	if !ok {
		return nil, wrap(ErrNotAttached)
	}

	deadline := time.Now().Add(reattachWait)
	for {
		missing := a.opts.Connections - a.Connections()
		if err := a.reconfigureNewPairs(kc, missing, uint64(info.Size)); err != nil {
			a.abort()
			return nil, wrap(err)
		}
		if a.Connections() == a.opts.Connections || time.Now().After(deadline) {
			break
		}
		time.Sleep(reattachRetry)
	}
	n := a.Connections()
	if n == 0 {
		return nil, wrap(ErrNoDeadConnection)
	}
	if n < a.opts.Connections {
		klog.InfoS("nbd: the kernel took fewer sockets than asked for", "device", a.Device(),
			"export", export, "connections", n, "wanted", a.opts.Connections)
	}
	klog.V(1).InfoS("nbd: reattached", "export", export, "device", a.Device(), "connections", n)
	return a, nil
}

// newAttachment validates the options against the export.
func (s *Server) newAttachment(export string, opts AttachOptions) (*Attachment, ExportInfo, error) {
	if s.isClosed() {
		return nil, ExportInfo{}, ErrServerClosed
	}
	info, err := s.ExportInfo(export)
	if err != nil {
		return nil, info, err
	}
	bs, err := kernelBlockSize(info)
	if err != nil {
		return nil, info, err
	}
	opts, err = opts.withDefaults(info.Flags)
	if err != nil {
		return nil, info, err
	}
	return &Attachment{srv: s, export: export, index: -1, opts: opts, blockSize: bs}, info, nil
}

// serveNewPairs makes n socket pairs, serves their server ends and returns
// their kernel ends.
func (a *Attachment) serveNewPairs(n int) ([]*os.File, error) {
	kernel, server, err := newPairs(n)
	if err != nil {
		return nil, err
	}
	for _, c := range server {
		a.serve(c)
	}
	return kernel, nil
}

// reconfigureNewPairs offers n new sockets to device a.index and serves
// those the kernel took.
func (a *Attachment) reconfigureNewPairs(kc kernelClient, n int, size uint64) error {
	kernel, server, err := newPairs(n)
	if err != nil {
		return err
	}
	err = kc.Reconfigure(netlink.Config{
		Index:             a.Index(),
		Sockets:           kernel,
		SizeBytes:         size,
		Timeout:           a.opts.Timeout,
		DeadConnTimeout:   a.opts.DeadConnTimeout,
		BackendIdentifier: a.export,
	})
	// Closing our copies of the kernel ends drops the last reference to
	// the sockets the kernel did not take: their server ends read EOF.
	closeAll(kernel)
	for _, c := range server {
		if err != nil {
			c.Close()
			continue
		}
		dropped, perr := peerClosed(c)
		switch {
		case perr != nil:
			c.Close()
			err = fmt.Errorf("nbd: checking a reconfigured socket: %w", perr)
		case dropped:
			c.Close()
		default:
			a.serve(c)
		}
	}
	return err
}

// serve serves c for the kernel until the connection ends.
func (a *Attachment) serve(c net.Conn) {
	a.mu.Lock()
	a.conns = append(a.conns, c)
	a.mu.Unlock()
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		err := a.srv.ServeExportConn(c, a.export)
		if a.isDetached() {
			return
		}
		if err == nil {
			// The kernel shut the socket down: a request timed out, or
			// someone else disconnected the device.
			err = errors.New("closed by the kernel")
		}
		klog.InfoS("nbd: kernel connection ended", "device", a.Device(), "export", a.export, "err", err)
	}()
}

// Resize sets the device size to size bytes (a RECONFIGURE), e.g. after
// the export grew. size must be a positive multiple of the device's block
// size and at most the export's current size. Growing a mounted filesystem
// is then up to resize2fs or xfs_growfs.
func (a *Attachment) Resize(size int64) error {
	if a.isDetached() {
		return fmt.Errorf("nbd: resize %s: %w", a.Device(), ErrDetached)
	}
	info, err := a.srv.ExportInfo(a.export)
	if err != nil {
		return fmt.Errorf("nbd: resize %s: %w", a.Device(), err)
	}
	switch {
	case size <= 0 || uint64(size)%a.blockSize != 0:
		return fmt.Errorf("nbd: resize %s: %w: size %d is not a positive multiple of the block size %d",
			a.Device(), ErrInvalidAttach, size, a.blockSize)
	case size > info.Size:
		return fmt.Errorf("nbd: resize %s: %w: size %d is beyond the end of export %q (%d bytes)",
			a.Device(), ErrInvalidAttach, size, a.export, info.Size)
	}
	kc, err := dialKernel()
	if err != nil {
		return fmt.Errorf("nbd: resize %s: %w", a.Device(), err)
	}
	defer kc.Close()
	if err := kc.Reconfigure(netlink.Config{
		Index:             a.Index(),
		SizeBytes:         uint64(size),
		BackendIdentifier: a.export,
	}); err != nil {
		return fmt.Errorf("nbd: resize %s: %w", a.Device(), err)
	}
	klog.V(1).InfoS("nbd: resized", "device", a.Device(), "size", size)
	return nil
}

// Detach disconnects the device (requests still queued in the kernel fail),
// then closes the sockets and waits for the serving goroutines. Unmount
// first. If the DISCONNECT fails, the device stays attached and Detach may
// be retried. Detaching twice is not an error.
func (a *Attachment) Detach() error {
	a.mu.Lock()
	if a.detached {
		a.mu.Unlock()
		return nil
	}
	a.detached = true
	a.mu.Unlock()
	undo := func() {
		a.mu.Lock()
		a.detached = false
		a.mu.Unlock()
	}
	kc, err := dialKernel()
	if err != nil {
		undo()
		return fmt.Errorf("nbd: detach %s: %w", a.Device(), err)
	}
	defer kc.Close()
	if err := kc.Disconnect(a.Index()); err != nil {
		undo()
		return fmt.Errorf("nbd: detach %s: %w", a.Device(), err)
	}
	a.closeConns()
	klog.V(1).InfoS("nbd: detached", "device", a.Device(), "export", a.export)
	return nil
}

// DeviceConnected reports whether /dev/nbdIndex exists and is connected
// (has a configuration, even if all its connections are dead).
func DeviceConnected(index int) (bool, error) {
	if index < 0 {
		return false, fmt.Errorf("nbd: %w: device index %d", ErrInvalidAttach, index)
	}
	kc, err := dialKernel()
	if err != nil {
		return false, fmt.Errorf("nbd: status of %s: %w", DevicePath(index), err)
	}
	defer kc.Close()
	ok, err := kc.Connected(index)
	if err != nil {
		return false, fmt.Errorf("nbd: status of %s: %w", DevicePath(index), err)
	}
	return ok, nil
}

// newPairs makes n socket pairs.
func newPairs(n int) (kernel []*os.File, server []net.Conn, err error) {
	for range n {
		k, s, err := SocketPair()
		if err != nil {
			closeAll(kernel)
			for _, c := range server {
				c.Close()
			}
			return nil, nil, err
		}
		kernel = append(kernel, k)
		server = append(server, s)
	}
	return kernel, server, nil
}

func closeAll(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// peerClosed reports whether the other end of the stream socket c is closed
// with nothing left to read, without consuming anything.
func peerClosed(c net.Conn) (bool, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, fmt.Errorf("nbd: %T has no file descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false, err
	}
	var n int
	var rerr error
	err = rc.Read(func(fd uintptr) bool {
		var b [1]byte
		for {
			n, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			if !errors.Is(rerr, unix.EINTR) {
				return true // never wait for readiness
			}
		}
	})
	switch {
	case err != nil:
		return false, err
	case errors.Is(rerr, unix.EAGAIN):
		return false, nil // open, nothing sent yet
	case rerr != nil:
		return false, rerr
	}
	return n == 0, nil
}
