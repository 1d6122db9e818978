package driver

import (
	"github.com/csi-cache/csi-cache/pkg/metrics"
	"github.com/csi-cache/csi-cache/pkg/nbd"
)

// NBDOptions configure NewNBDAttacher.
type NBDOptions struct {
	// Metrics, if set, observes every NBD request of the attacher's server,
	// counts its connections, and forgets an export's series when the export
	// is removed (the volume is unstaged).
	Metrics *metrics.NBDCollector
}

// Attacher turns volumes into block devices of this node: it exports a volume
// over NBD and connects a kernel NBD device to the export. NewNBDAttacher is
// the product implementation; the tests use drivertest.FakeKernel, whose
// devices outlive an Attacher the way the kernel's outlive a plugin process.
type Attacher interface {
	// Attach exports vol under name and connects a new device to it.
	Attach(name string, vol nbd.Backend, readOnly bool) (Device, error)
	// Reattach exports vol under name again and hands device index new
	// connections to it (NBD RECONFIGURE): how a restarted plugin takes back
	// the devices that stayed mounted while it was gone.
	Reattach(name string, vol nbd.Backend, readOnly bool, index int) (Device, error)
	// Connected reports whether device index is still set up (a device whose
	// connections died and that waits for a Reattach counts as connected).
	Connected(index int) (bool, error)
	// Close drops the connections of every export without disconnecting the
	// devices, as a plugin that exits does.
	Close() error
}

// Device is a kernel block device attached to a volume's export.
type Device interface {
	// Path is the device node, e.g. /dev/nbd0.
	Path() string
	// Index is the device number (N of /dev/nbdN).
	Index() int
	// Resize tells the kernel the volume's new size.
	Resize(size int64) error
	// Detach disconnects the device and removes the export, flushing the
	// volume.
	Detach() error
}
