package nbd

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/csi-cache/csi-cache/pkg/nbd/netlink"
)

// Kernel attach: an export becomes /dev/nbdN without any handshake. Attach
// makes Connections socket pairs, serves one end of each with
// ServeExportConn and hands the other ends to the kernel's nbd driver with
// a netlink CONNECT carrying the values a handshake would have told a
// client (size, block size, transmission flags), plus an I/O timeout and a
// dead-connection timeout.
//
// Plugin restart: when the serving process dies, its socket ends close and
// the kernel marks the device's connections dead, but keeps the device (and
// any filesystem mounted on it). New requests wait up to DeadConnTimeout for
// a RECONFIGURE with fresh sockets; requests that were in flight on a dead
// connection are requeued when their Timeout expires. Reattach, run by the
// new process, does that RECONFIGURE. The kernel only puts a new socket in
// the slot of a dead one and silently drops the rest, so Reattach checks
// which sockets the kernel kept (a dropped socket's other end reads EOF
// once our copy of its kernel end is closed) and retries briefly for
// connections the kernel has not yet noticed are dead.
//
// The device carries the export name as its backend identifier
// (/sys/block/nbdN/backend, kernel 5.18 and later), which the kernel checks
// on RECONFIGURE: a Reattach with another export's name is refused.

// ErrNoDriver is returned (wrapped) by Attach, Reattach and DeviceConnected
// when the kernel has no nbd driver; it is netlink.ErrNoDriver.
var ErrNoDriver = netlink.ErrNoDriver

// Errors returned by kernel attach.
var (
	// ErrNotAttached is returned by Reattach for a device that is not
	// connected (use Attach).
	ErrNotAttached = errors.New("nbd: device is not attached")
	// ErrNoDeadConnection is returned by Reattach when the kernel kept none
	// of the new sockets: the device has no dead connection, so its old
	// server is most likely still serving it.
	ErrNoDeadConnection = errors.New("nbd: device has no dead connection to replace")
	// ErrInvalidAttach is returned for options or sizes the kernel would
	// refuse.
	ErrInvalidAttach = errors.New("nbd: invalid attach request")
	// ErrDetached is returned by Resize after Detach.
	ErrDetached = errors.New("nbd: attachment is detached")
)

// Defaults and limits of AttachOptions.
const (
	DefaultConnections = 2
	MaxConnections     = 16
	// DefaultTimeout is the block layer's own default request timeout.
	DefaultTimeout         = 30 * time.Second
	DefaultDeadConnTimeout = 2 * time.Minute
	// maxKernelBlockSize is the largest logical block size the kernel
	// accepts (the page size on x86-64 and arm64 with 4 KiB pages).
	maxKernelBlockSize = 4096
)

// AttachOptions configure Attach and Reattach. The zero value means the
// defaults.
type AttachOptions struct {
	// Connections is the number of sockets (and kernel hardware queues).
	// 0 means DefaultConnections, or 1 when the export does not advertise
	// CAN_MULTI_CONN (more than one is then an error).
	Connections int
	// Index selects /dev/nbdIndex when UseIndex is set; otherwise (and
	// for a negative Index) the kernel picks a free device. Reattach takes
	// its index as an argument and ignores both fields.
	Index int
	// UseIndex makes Attach use Index. It exists so that the zero value of
	// AttachOptions means "any free device" while /dev/nbd0 can still be
	// asked for.
	UseIndex bool
	// Timeout is the kernel's per-request timeout (whole seconds, rounded
	// up). When it expires the connection is declared dead and the request
	// requeued on another one; after a server restart it is also how long
	// requests that were in flight on the old sockets wait before being
	// resent. 0 means DefaultTimeout.
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel holds new requests while all
	// connections are dead, waiting for a Reattach, before failing them
	// with EIO. 0 means DefaultDeadConnTimeout.
	DeadConnTimeout time.Duration
}

// withDefaults validates o and fills in the defaults for an export whose
// transmission flags are flags.
func (o AttachOptions) withDefaults(flags uint16) (AttachOptions, error) {
	multi := flags&FlagCanMultiConn != 0
	switch {
	case o.Connections < 0 || o.Connections > MaxConnections:
		return o, fmt.Errorf("%w: %d connections (1 to %d)", ErrInvalidAttach, o.Connections, MaxConnections)
	case o.Connections > 1 && !multi:
		return o, fmt.Errorf("%w: %d connections to an export without CAN_MULTI_CONN", ErrInvalidAttach, o.Connections)
	case o.Timeout < 0 || o.DeadConnTimeout < 0:
		return o, fmt.Errorf("%w: negative timeout", ErrInvalidAttach)
	}
	if o.Connections == 0 {
		o.Connections = DefaultConnections
		if !multi {
			o.Connections = 1
		}
	}
	if !o.UseIndex || o.Index < 0 {
		o.UseIndex, o.Index = false, netlink.AnyIndex
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.DeadConnTimeout == 0 {
		o.DeadConnTimeout = DefaultDeadConnTimeout
	}
	return o, nil
}

// kernelBlockSize is the logical block size the device gets: the export's
// minimum block size, but at least 512 bytes (the kernel's minimum), so the
// kernel never sends a request the export would refuse.
func kernelBlockSize(info ExportInfo) (uint64, error) {
	bs := max(uint64(info.MinBlockSize), 512)
	if bs > maxKernelBlockSize {
		return 0, fmt.Errorf("%w: export %q has a minimum block size of %d; the kernel accepts at most %d",
			ErrInvalidAttach, info.Name, bs, maxKernelBlockSize)
	}
	if info.Size <= 0 {
		return 0, fmt.Errorf("%w: export %q is empty", ErrInvalidAttach, info.Name)
	}
	return bs, nil
}

// DevicePath returns the device node of nbd device index.
func DevicePath(index int) string { return fmt.Sprintf("/dev/nbd%d", index) }

// Attachment is an export attached to a kernel nbd device by this process.
// Its methods are safe for concurrent use.
type Attachment struct {
	srv       *Server
	export    string
	opts      AttachOptions // defaults applied
	blockSize uint64

	wg sync.WaitGroup // one per serving goroutine

	mu       sync.Mutex // guards the fields below
	index    int        // -1 until CONNECT returns
	conns    []net.Conn // server ends of the sockets the kernel holds
	detached bool
}

// Device returns the device node, "/dev/nbdN".
func (a *Attachment) Device() string { return DevicePath(a.Index()) }

// Index returns the device number N of /dev/nbdN.
func (a *Attachment) Index() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.index
}

func (a *Attachment) setIndex(i int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.index = i
}

// Export returns the name of the attached export.
func (a *Attachment) Export() string { return a.export }

// Connections returns the number of sockets this process serves for the
// device (after a Reattach, the number the kernel took).
func (a *Attachment) Connections() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.conns)
}

func (a *Attachment) isDetached() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.detached
}

// abort ends an attachment that failed to attach.
func (a *Attachment) abort() {
	a.mu.Lock()
	a.detached = true
	a.mu.Unlock()
	a.closeConns()
}

// closeConns closes the server ends and waits for their goroutines.
func (a *Attachment) closeConns() {
	a.mu.Lock()
	conns := a.conns
	a.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
	a.wg.Wait()
}
